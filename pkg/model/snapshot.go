package model

import (
	"cmp"
	"slices"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/ambient-mesh/mesh/api/policy/v1alpha1"
	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// Type URLs of the resources this package produces, as ztunnel requests them.
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// Labels, annotations and class names read by the translation (values from
// istio's pkg/config/constants and istio.io/api/label).
const (
	LabelDataplaneMode         = "istio.io/dataplane-mode"
	LabelUseWaypoint           = "istio.io/use-waypoint"
	LabelUseWaypointNamespace  = "istio.io/use-waypoint-namespace"
	LabelWaypointFor           = "istio.io/waypoint-for"
	LabelGatewayName           = "gateway.networking.k8s.io/gateway-name"
	LabelGatewayManaged        = "gateway.istio.io/managed"
	LabelServiceWorkloadName   = "service.istio.io/workload-name"
	LabelIngressUseWaypoint    = "istio.io/ingress-use-waypoint"
	LabelTopologySubzone       = "topology.istio.io/subzone"
	AnnotationTrafficDist      = "networking.istio.io/traffic-distribution"
	AnnotationRedirection      = "ambient.istio.io/redirection"
	AnnotationDryRun           = "istio.io/dry-run"
	WaypointGatewayClassName   = "istio-waypoint"
	DataplaneModeAmbient       = "ambient"
	DataplaneModeNone          = "none"
	RedirectionEnabled         = "enabled"
	ManagedMeshControllerValue = "istio.io-mesh-controller" // label values cannot hold "/"
	ManagedEastWestValue       = "istio.io-eastwest-controller"

	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"

	// HBONEPort is the port a waypoint (and every captured pod) accepts HBONE on.
	HBONEPort = 15008

	// StaticStrictPolicyName is the Authorization, in the root namespace, that
	// expresses PeerAuthentication STRICT: deny any peer without an identity.
	StaticStrictPolicyName = "istio_converted_static_strict"
	// ConvertedPeerAuthenticationPrefix prefixes the name of an Authorization
	// converted from a workload PeerAuthentication with port-level mTLS.
	ConvertedPeerAuthenticationPrefix = "converted_peer_authentication_"
)

// MeshConfig holds the mesh-wide settings the translation depends on. Zero
// fields take Istio's defaults (see [MeshConfig.withDefaults]).
type MeshConfig struct {
	// ClusterID prefixes workload uids; default "Kubernetes".
	ClusterID string
	// TrustDomain of SPIFFE identities; default "cluster.local". It is elided
	// from Workload.trust_domain when it is the default, as istiod does.
	TrustDomain string
	// DomainSuffix of Service hostnames; default "cluster.local".
	DomainSuffix string
	// RootNamespace holds mesh-wide policy; default "istio-system".
	RootNamespace string
	// Network of every address; default "" (the single local network).
	Network string
	// Istio is Istio's mesh config (pkg/meshconfig parses it):
	// extensionProviders, defaultProviders.tracing and
	// defaultConfig.tracing.sampling shape the waypoints' Telemetry
	// (telemetry.go). nil: no providers, Istio's defaults.
	Istio *meshv1alpha1.MeshConfig
}

func (m MeshConfig) withDefaults() MeshConfig {
	m.ClusterID = cmp.Or(m.ClusterID, "Kubernetes")
	m.TrustDomain = cmp.Or(m.TrustDomain, "cluster.local")
	m.DomainSuffix = cmp.Or(m.DomainSuffix, "cluster.local")
	m.RootNamespace = cmp.Or(m.RootNamespace, "istio-system")
	return m
}

// Snapshot is the full set of watched objects a translation reads. Objects are
// only read, never modified; slices may be in any order.
type Snapshot struct {
	Mesh                  MeshConfig
	Namespaces            []*corev1.Namespace
	Nodes                 []*corev1.Node
	Pods                  []*corev1.Pod
	Services              []*corev1.Service
	EndpointSlices        []*discoveryv1.EndpointSlice
	Gateways              []*gatewayv1.Gateway
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	PeerAuthentications   []*securityv1.PeerAuthentication
	// Gateway API mesh routes and the grants for their cross-namespace
	// backends (see routes.go).
	HTTPRoutes      []*gatewayv1.HTTPRoute
	GRPCRoutes      []*gatewayv1.GRPCRoute
	TCPRoutes       []*gatewayv1.TCPRoute
	ReferenceGrants []*gatewayv1.ReferenceGrant
	// Istio traffic APIs and the mesh's own policies, compiled into
	// waypoint ServiceConfigs (destinationrule.go, virtualservice.go,
	// ratelimit.go, waypointauthz.go).
	DestinationRules       []*networkingv1.DestinationRule
	VirtualServices        []*networkingv1.VirtualService
	LocalRateLimitPolicies []*policyv1alpha1.LocalRateLimitPolicy
	// Telemetries are telemetry.istio.io Telemetry resources (any served
	// version, as v1 objects), compiled into the waypoints' Telemetry
	// (telemetry.go).
	Telemetries []*telemetryv1.Telemetry
}

// Resources is the result of a translation: xDS resources keyed by resource
// name, plus what was wrong with the input.
type Resources struct {
	// Addresses are keyed by Workload uid or "<namespace>/<hostname>" for a
	// Service (istio's workloadResourceName / serviceResourceName).
	Addresses map[string]*workloadapi.Address
	// Authorizations are keyed by "<namespace>/<name>".
	Authorizations map[string]*security.Authorization
	// WaypointConfigs hold the L7 configuration of every Service bound to a
	// waypoint, keyed like its Service Address: "<namespace>/<hostname>".
	WaypointConfigs map[string]*waypointv1alpha1.ServiceConfig
	// Telemetry holds the tracing configuration of every istio-waypoint
	// Gateway, keyed "<namespace>/<name>" (telemetry.go).
	Telemetry map[string]*waypointv1alpha1.Telemetry
	// RouteStatuses are the route statuses istiod-lite owns, keyed by
	// RouteStatusKey; written under RouteStatusControllerName.
	RouteStatuses map[string]*RouteStatus
	// PolicyStatuses are the statuses of VirtualServices and
	// LocalRateLimitPolicies, keyed by RouteStatusKey(kind, ns, name).
	PolicyStatuses map[string]*PolicyStatus
	// Diagnostics lists input problems, sorted; the objects concerned were
	// translated as far as possible (or skipped), never fatally.
	Diagnostics []Diagnostic
}

// Diagnostic names one problem with one input object, for a status
// condition, an Event and a log line.
type Diagnostic struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Field is the path of the offending field, e.g. "spec.rules[0].to[0].operation.ports[1]".
	Field string `json:"field"`
	// Reason is a CamelCase condition reason, e.g. "UnsupportedValue".
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func sortDiagnostics(d []Diagnostic) {
	slices.SortFunc(d, func(a, b Diagnostic) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.Field, b.Field), cmp.Compare(a.Message, b.Message))
	})
}

// Translate builds every resource ztunnel needs from s. It is deterministic:
// equal snapshots give proto-equal resources.
func Translate(s Snapshot) Resources {
	s.Mesh = s.Mesh.withDefaults()
	out := Resources{
		Addresses:      map[string]*workloadapi.Address{},
		Authorizations: map[string]*security.Authorization{},
	}
	idx := newIndex(s)

	auths, authDiags := translateAuthorizations(s)
	out.Diagnostics = append(out.Diagnostics, authDiags...)
	for _, a := range auths {
		out.Authorizations[a.auth.Namespace+"/"+a.auth.Name] = a.auth
	}

	svcs, svcDiags := translateServices(s, idx)
	out.Diagnostics = append(out.Diagnostics, svcDiags...)
	for _, svc := range svcs {
		out.Addresses[ServiceResourceName(svc.svc)] = &workloadapi.Address{
			Type: &workloadapi.Address_Service{Service: svc.svc},
		}
	}

	configs, statuses, policyStatuses, routeDiags := compileRoutes(s, idx, svcs)
	out.WaypointConfigs, out.RouteStatuses, out.PolicyStatuses = configs, statuses, policyStatuses
	out.Diagnostics = append(out.Diagnostics, routeDiags...)

	tel, telDiags := compileTelemetry(s, idx)
	out.Telemetry = tel
	out.Diagnostics = append(out.Diagnostics, telDiags...)

	wls, wlDiags := translateWorkloads(s, idx, svcs, auths)
	out.Diagnostics = append(out.Diagnostics, wlDiags...)
	for _, w := range wls {
		out.Addresses[w.Uid] = &workloadapi.Address{
			Type: &workloadapi.Address_Workload{Workload: w},
		}
	}
	sortDiagnostics(out.Diagnostics)
	out.Diagnostics = slices.Compact(out.Diagnostics) // a problem found once per port is one problem
	return out
}

// ServiceResourceName is the xDS name of a Service Address: "<namespace>/<hostname>".
func ServiceResourceName(s *workloadapi.Service) string {
	return s.GetNamespace() + "/" + s.GetHostname()
}

// ResourceName is the xDS name of an Address: the Workload uid or the
// Service's "<namespace>/<hostname>".
func ResourceName(a *workloadapi.Address) string {
	if w := a.GetWorkload(); w != nil {
		return w.GetUid()
	}
	return ServiceResourceName(a.GetService())
}

// Aliases are the other names an on-demand client may ask for an Address by:
// "<network>/<ip>" for each of its addresses (istio's NetworkAddress form).
func Aliases(a *workloadapi.Address) []string {
	var out []string
	if w := a.GetWorkload(); w != nil {
		for _, ip := range w.GetAddresses() {
			if s := ipString(ip); s != "" {
				out = append(out, w.GetNetwork()+"/"+s)
			}
		}
	}
	if svc := a.GetService(); svc != nil {
		for _, na := range svc.GetAddresses() {
			if s := ipString(na.GetAddress()); s != "" {
				out = append(out, na.GetNetwork()+"/"+s)
			}
		}
	}
	return out
}
