package model

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"istio.io/istio/pkg/workloadapi"
)

// waypoint is an istio-waypoint Gateway that is ready to receive traffic.
type waypoint struct {
	namespace, name string
	address         *workloadapi.GatewayAddress
	// trafficType is istio.io/waypoint-for: service (default), workload, all or none.
	trafficType string
	// from and selector restrict which namespaces may use the waypoint, from
	// the HBONE listener's allowedRoutes (Gateway API default: Same).
	from     gatewayv1.FromNamespaces
	selector labels.Selector
	// listener is the name of the HBONE listener ("" if there is none).
	listener string
}

// index holds lookups over a snapshot, built once per translation.
type index struct {
	namespaces map[string]*corev1.Namespace
	localities map[string]*workloadapi.Locality // by node name
	waypoints  map[string]*waypoint             // "ns/name"; usable (with an address) only
	// waypointGateways holds every istio-waypoint Gateway, usable or not
	// ("ns/name"), for routes that name one as their parent.
	waypointGateways map[string]*waypoint
	diags            []Diagnostic
}

func newIndex(s Snapshot) *index {
	idx := &index{
		namespaces:       map[string]*corev1.Namespace{},
		localities:       map[string]*workloadapi.Locality{},
		waypoints:        map[string]*waypoint{},
		waypointGateways: map[string]*waypoint{},
	}
	for _, ns := range s.Namespaces {
		idx.namespaces[ns.Name] = ns
	}
	for _, n := range s.Nodes {
		region, zone, subzone := n.Labels[corev1.LabelTopologyRegion], n.Labels[corev1.LabelTopologyZone], n.Labels[LabelTopologySubzone]
		if region != "" || zone != "" || subzone != "" {
			idx.localities[n.Name] = &workloadapi.Locality{Region: region, Zone: zone, Subzone: subzone}
		}
	}
	for _, gw := range s.Gateways {
		if string(gw.Spec.GatewayClassName) != WaypointGatewayClassName {
			continue
		}
		wp := idx.makeWaypoint(gw, s.Mesh)
		idx.waypointGateways[gw.Namespace+"/"+gw.Name] = wp
		if wp.address != nil {
			idx.waypoints[gw.Namespace+"/"+gw.Name] = wp
		}
	}
	return idx
}

// makeWaypoint reads a waypoint Gateway. Its address is nil while the
// Gateway has no status address: istiod treats a waypoint as usable only once
// its deployment is ready and the controller has published the address.
func (idx *index) makeWaypoint(gw *gatewayv1.Gateway, mesh MeshConfig) *waypoint {
	addr := gatewayAddress(gw, mesh.Network)
	wp := &waypoint{
		namespace:   gw.Namespace,
		name:        gw.Name,
		address:     addr,
		trafficType: WaypointForService,
		from:        gatewayv1.NamespacesFromSame,
	}
	if tt, ok := gw.Labels[LabelWaypointFor]; ok {
		switch tt {
		case WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForNone:
			wp.trafficType = tt
		default:
			idx.diags = append(idx.diags, Diagnostic{Kind: "Gateway", Namespace: gw.Namespace, Name: gw.Name,
				Field: "metadata.labels[" + LabelWaypointFor + "]", Reason: "InvalidValue",
				Message: "must be one of service, workload, all, none; got " + tt})
			wp.trafficType = WaypointForNone
		}
	}
	for i, l := range gw.Spec.Listeners {
		if l.Protocol != "HBONE" || l.Port != HBONEPort {
			continue
		}
		wp.listener = string(l.Name)
		if l.AllowedRoutes == nil || l.AllowedRoutes.Namespaces == nil || l.AllowedRoutes.Namespaces.From == nil {
			break
		}
		wp.from = *l.AllowedRoutes.Namespaces.From
		if wp.from == gatewayv1.NamespacesFromSelector {
			sel, err := metav1.LabelSelectorAsSelector(l.AllowedRoutes.Namespaces.Selector)
			if err != nil || l.AllowedRoutes.Namespaces.Selector == nil {
				msg := "selector is required with from: Selector"
				if err != nil {
					msg = err.Error()
				}
				idx.diags = append(idx.diags, Diagnostic{Kind: "Gateway", Namespace: gw.Namespace, Name: gw.Name,
					Field: "spec.listeners[" + itoa(i) + "].allowedRoutes.namespaces.selector", Reason: "InvalidSelector",
					Message: msg})
				sel = labels.Nothing()
			}
			wp.selector = sel
		}
		break
	}
	return wp
}

func gatewayAddress(gw *gatewayv1.Gateway, network string) *workloadapi.GatewayAddress {
	for _, a := range gw.Status.Addresses {
		if a.Type != nil && *a.Type == gatewayv1.HostnameAddressType && a.Value != "" {
			return &workloadapi.GatewayAddress{
				Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
					Namespace: gw.Namespace, Hostname: a.Value,
				}},
				HboneMtlsPort: HBONEPort,
			}
		}
	}
	for _, a := range gw.Status.Addresses {
		if a.Type == nil || *a.Type == gatewayv1.IPAddressType {
			ip, err := netip.ParseAddr(a.Value)
			if err != nil {
				continue
			}
			return &workloadapi.GatewayAddress{
				Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{
					Network: network, Address: ip.AsSlice(),
				}},
				HboneMtlsPort: HBONEPort,
			}
		}
	}
	return nil
}

func (w *waypoint) allows(idx *index, namespace string) bool {
	switch w.from {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSelector:
		var l map[string]string
		if ns := idx.namespaces[namespace]; ns != nil {
			l = ns.Labels
		}
		return w.selector != nil && w.selector.Matches(labels.Set(l))
	default:
		return w.namespace == namespace
	}
}

// useWaypoint parses istio.io/use-waypoint (and -namespace) on meta. none is
// true for the explicit opt-out value "none".
func useWaypoint(meta metav1.ObjectMeta, defaultNamespace string) (key string, none, found bool) {
	v, ok := meta.Labels[LabelUseWaypoint]
	if !ok {
		return "", false, false
	}
	if v == "none" || v == "#none" {
		return "", true, true
	}
	ns := defaultNamespace
	if o, ok := meta.Labels[LabelUseWaypointNamespace]; ok {
		ns = o
	}
	return ns + "/" + v, false, true
}

// waypointFor resolves the waypoint for a Service (forService) or a pod,
// object label first, then its namespace's label. It returns a diagnostic
// message when a label names a waypoint that cannot be used.
func (idx *index) waypointFor(kind string, meta metav1.ObjectMeta, forService bool) (*workloadapi.GatewayAddress, *Diagnostic) {
	wp, d := idx.waypointOf(kind, meta, forService)
	if wp == nil {
		return nil, d
	}
	return wp.address, d
}

// waypointOf is waypointFor returning the waypoint itself.
func (idx *index) waypointOf(kind string, meta metav1.ObjectMeta, forService bool) (*waypoint, *Diagnostic) {
	key, none, found := useWaypoint(meta, meta.Namespace)
	onObject := found
	if none {
		return nil, nil
	}
	if !found {
		ns := idx.namespaces[meta.Namespace]
		if ns == nil {
			return nil, nil
		}
		key, none, found = useWaypoint(ns.ObjectMeta, meta.Namespace)
		if none || !found {
			return nil, nil
		}
	}
	diag := func(reason, msg string) *Diagnostic {
		field := "metadata.labels[" + LabelUseWaypoint + "]"
		d := &Diagnostic{Kind: kind, Namespace: meta.Namespace, Name: meta.Name, Field: field, Reason: reason, Message: msg}
		if !onObject {
			d.Message += " (label inherited from namespace)"
		}
		return d
	}
	wp := idx.waypoints[key]
	if wp == nil {
		return nil, diag("WaypointNotReady", "waypoint "+key+" does not exist or has no address yet")
	}
	if !wp.allows(idx, meta.Namespace) {
		return nil, diag("WaypointAttachmentDenied", "waypoint "+key+" does not allow use from namespace "+meta.Namespace)
	}
	want := WaypointForWorkload
	if forService {
		want = WaypointForService
	}
	if wp.trafficType != want && wp.trafficType != WaypointForAll {
		if !forService && !onObject {
			// A namespace-wide service waypoint is not an error for its pods.
			return nil, nil
		}
		return nil, diag("UnsupportedTrafficType", "waypoint "+key+" is for "+wp.trafficType+" traffic, not "+want)
	}
	return wp, nil
}
