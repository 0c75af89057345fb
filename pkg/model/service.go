package model

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pkg/workloadapi"
)

// serviceInfo is a translated Service plus what workloads need to join it.
type serviceInfo struct {
	svc      *workloadapi.Service
	source   *corev1.Service
	selector map[string]string
	// targetPortNames maps service port to a named targetPort, resolved per pod.
	targetPortNames map[uint32]string
	// portNames maps service port to its name (EndpointSlice ports carry it).
	portNames map[uint32]string
	// waypoint serves the Service, if it uses one.
	waypoint *waypoint
}

func serviceHostname(name, namespace, suffix string) string {
	return name + "." + namespace + ".svc." + suffix
}

func translateServices(s Snapshot, idx *index) ([]*serviceInfo, []Diagnostic) {
	var out []*serviceInfo
	diags := slices.Clone(idx.diags)
	for _, svc := range s.Services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue // not implemented by ambient; DNS handles it
		}
		info := &serviceInfo{
			source:          svc,
			selector:        svc.Spec.Selector,
			targetPortNames: map[uint32]string{},
			portNames:       map[uint32]string{},
		}
		w := &workloadapi.Service{
			Name:      svc.Name,
			Namespace: svc.Namespace,
			Hostname:  serviceHostname(svc.Name, svc.Namespace, s.Mesh.DomainSuffix),
			Canonical: true,
		}
		for _, p := range svc.Spec.Ports {
			if p.Port <= 0 || p.Port > 65535 {
				diags = append(diags, Diagnostic{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name,
					Field: "spec.ports[" + p.Name + "].port", Reason: "InvalidPort", Message: "port out of range: " + itoa(int(p.Port))})
				continue
			}
			port := &workloadapi.Port{
				ServicePort: uint32(p.Port),
				TargetPort:  uint32(max(p.TargetPort.IntVal, 0)),
				AppProtocol: appProtocol(p),
			}
			if p.TargetPort.StrVal != "" {
				info.targetPortNames[port.ServicePort] = p.TargetPort.StrVal
			}
			info.portNames[port.ServicePort] = p.Name
			w.Ports = append(w.Ports, port)
		}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for i, ip := range ips {
			if ip == "" || ip == corev1.ClusterIPNone {
				continue
			}
			a, err := netip.ParseAddr(ip)
			if err != nil {
				diags = append(diags, Diagnostic{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name,
					Field: "spec.clusterIPs[" + itoa(i) + "]", Reason: "InvalidAddress", Message: err.Error()})
				continue
			}
			w.Addresses = append(w.Addresses, &workloadapi.NetworkAddress{Network: s.Mesh.Network, Address: a.AsSlice()})
		}
		switch len(svc.Spec.IPFamilies) {
		case 2:
			w.IpFamilies = workloadapi.IPFamilies_DUAL
		case 1:
			w.IpFamilies = workloadapi.IPFamilies_IPV6_ONLY
			if svc.Spec.IPFamilies[0] == corev1.IPv4Protocol {
				w.IpFamilies = workloadapi.IPFamilies_IPV4_ONLY
			}
		}
		var nsMeta metav1.ObjectMeta
		if ns := idx.namespaces[svc.Namespace]; ns != nil {
			nsMeta = ns.ObjectMeta
		}
		if itp := svc.Spec.InternalTrafficPolicy; itp != nil && *itp == corev1.ServiceInternalTrafficPolicyLocal {
			w.LoadBalancing = &workloadapi.LoadBalancing{
				RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE},
				Mode:              workloadapi.LoadBalancing_STRICT,
			}
		} else {
			w.LoadBalancing = trafficDistribution(svc, nsMeta.Annotations)
		}
		if svc.Spec.PublishNotReadyAddresses {
			if w.LoadBalancing == nil {
				w.LoadBalancing = &workloadapi.LoadBalancing{}
			}
			w.LoadBalancing.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
		}
		// A waypoint's own Service, or an east-west gateway's, has no waypoint.
		managed := svc.Labels[LabelGatewayManaged]
		if managed != ManagedMeshControllerValue && managed != ManagedEastWestValue {
			wp, d := idx.waypointOf("Service", svc.ObjectMeta, true)
			if d != nil {
				diags = append(diags, *d)
			}
			if wp != nil {
				w.Waypoint = wp.address
				info.waypoint = wp
				v, ok := svc.Labels[LabelIngressUseWaypoint]
				if !ok {
					v, ok = nsMeta.Labels[LabelIngressUseWaypoint]
				}
				if ok {
					b, err := strconv.ParseBool(v)
					if err != nil {
						diags = append(diags, Diagnostic{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name,
							Field: "metadata.labels[" + LabelIngressUseWaypoint + "]", Reason: "InvalidValue", Message: err.Error()})
					}
					w.IngressUseWaypoint = b
				}
			}
		}
		info.svc = w
		out = append(out, info)
	}
	return out, diags
}

// appProtocol follows istio's protocol sniffing from appProtocol or the port
// name prefix ("http-web", "grpc", ...).
func appProtocol(p corev1.ServicePort) workloadapi.AppProtocol {
	if p.Protocol == corev1.ProtocolUDP {
		return workloadapi.AppProtocol_UNKNOWN
	}
	name := p.Name
	if p.AppProtocol != nil {
		switch *p.AppProtocol {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
		name = *p.AppProtocol
	}
	if strings.HasPrefix(strings.ToLower(name), "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN
	}
	prefix, _, _ := strings.Cut(strings.ToLower(name), "-")
	switch prefix {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "tcp":
		return workloadapi.AppProtocol_TCP
	case "tls", "https":
		return workloadapi.AppProtocol_TLS
	}
	return workloadapi.AppProtocol_UNKNOWN
}

func itoa(i int) string { return strconv.Itoa(i) }

func ipString(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return ""
	}
	return a.String()
}

// trafficDistribution maps spec.trafficDistribution (or istio's annotation,
// on the Service then its namespace) to locality-aware load balancing.
func trafficDistribution(svc *corev1.Service, nsAnnotations map[string]string) *workloadapi.LoadBalancing {
	v := ""
	switch {
	case svc.Spec.TrafficDistribution != nil:
		v = *svc.Spec.TrafficDistribution
	case svc.Annotations[AnnotationTrafficDist] != "":
		v = svc.Annotations[AnnotationTrafficDist]
	default:
		v = nsAnnotations[AnnotationTrafficDist]
	}
	scopes := []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE}
	switch strings.ToLower(v) {
	case strings.ToLower(corev1.ServiceTrafficDistributionPreferClose), strings.ToLower(corev1.ServiceTrafficDistributionPreferSameZone):
	case strings.ToLower(corev1.ServiceTrafficDistributionPreferSameNode):
		scopes = append(scopes, workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE)
	default:
		return nil
	}
	return &workloadapi.LoadBalancing{RoutingPreference: scopes, Mode: workloadapi.LoadBalancing_FAILOVER}
}
