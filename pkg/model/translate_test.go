package model

import (
	"bytes"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/ with the current output")

const (
	strict     = securityv1beta1.PeerAuthentication_MutualTLS_STRICT
	permissive = securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
	disable    = securityv1beta1.PeerAuthentication_MutualTLS_DISABLE
	unset      = securityv1beta1.PeerAuthentication_MutualTLS_UNSET
)

var ambientNS = map[string]string{LabelDataplaneMode: DataplaneModeAmbient}

// golden is the on-disk form of Resources: protojson per resource, so files
// are reviewable and decode with the upstream types.
type golden struct {
	Addresses      map[string]json.RawMessage `json:"addresses"`
	Authorizations map[string]json.RawMessage `json:"authorizations"`
	Diagnostics    []Diagnostic               `json:"diagnostics"`
}

func marshalProto(t *testing.T, m proto.Message) json.RawMessage {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatalf("protojson.Marshal: %v", err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil { // protojson output whitespace is randomised
		t.Fatalf("json.Compact: %v", err)
	}
	return buf.Bytes()
}

func toGolden(t *testing.T, r Resources) []byte {
	g := golden{Addresses: map[string]json.RawMessage{}, Authorizations: map[string]json.RawMessage{}, Diagnostics: r.Diagnostics}
	for k, v := range r.Addresses {
		g.Addresses[k] = marshalProto(t, v)
	}
	for k, v := range r.Authorizations {
		g.Authorizations[k] = marshalProto(t, v)
	}
	if g.Diagnostics == nil {
		g.Diagnostics = []Diagnostic{}
	}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		t.Fatalf("json.MarshalIndent: %v", err)
	}
	return append(b, '\n')
}

// fromGolden decodes a golden file with the upstream types.
func fromGolden(t *testing.T, b []byte) Resources {
	t.Helper()
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("decode golden: %v", err)
	}
	r := Resources{Addresses: map[string]*workloadapi.Address{}, Authorizations: map[string]*security.Authorization{}, Diagnostics: g.Diagnostics}
	for k, v := range g.Addresses {
		a := &workloadapi.Address{}
		if err := protojson.Unmarshal(v, a); err != nil {
			t.Fatalf("decode address %s: %v", k, err)
		}
		r.Addresses[k] = a
	}
	for k, v := range g.Authorizations {
		a := &security.Authorization{}
		if err := protojson.Unmarshal(v, a); err != nil {
			t.Fatalf("decode authorization %s: %v", k, err)
		}
		r.Authorizations[k] = a
	}
	return r
}

func compareResources(t *testing.T, got, want Resources) {
	t.Helper()
	for k, w := range want.Addresses {
		g, ok := got.Addresses[k]
		if !ok {
			t.Errorf("address %q missing", k)
		} else if !proto.Equal(g, w) {
			t.Errorf("address %q:\n got %s\nwant %s", k, marshalProto(t, g), marshalProto(t, w))
		}
	}
	for k := range got.Addresses {
		if _, ok := want.Addresses[k]; !ok {
			t.Errorf("unexpected address %q: %s", k, marshalProto(t, got.Addresses[k]))
		}
	}
	for k, w := range want.Authorizations {
		g, ok := got.Authorizations[k]
		if !ok {
			t.Errorf("authorization %q missing", k)
		} else if !proto.Equal(g, w) {
			t.Errorf("authorization %q:\n got %s\nwant %s", k, marshalProto(t, g), marshalProto(t, w))
		}
	}
	for k := range got.Authorizations {
		if _, ok := want.Authorizations[k]; !ok {
			t.Errorf("unexpected authorization %q: %s", k, marshalProto(t, got.Authorizations[k]))
		}
	}
	if len(want.Diagnostics) == 0 {
		want.Diagnostics = nil
	}
	if !slices.Equal(got.Diagnostics, want.Diagnostics) {
		t.Errorf("diagnostics:\n got %+v\nwant %+v", got.Diagnostics, want.Diagnostics)
	}
}

func translateCases() []struct {
	name string
	snap Snapshot
} {
	return []struct {
		name string
		snap Snapshot
	}{
		{
			name: "ambient_deployment_and_service",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{namespace("demo", ambientNS)},
				Pods: []*corev1.Pod{
					pod("demo", "reviews", "a1", "10.0.0.5", map[string]string{"app": "reviews", "version": "v1"}),
					pod("demo", "ratings", "b1", "10.0.0.6", map[string]string{"app.kubernetes.io/name": "ratings",
						"service.istio.io/canonical-revision": "r7"}, notCaptured),
				},
				Services: []*corev1.Service{
					service("demo", "reviews", "10.96.0.10", map[string]string{"app": "reviews"}),
					service("demo", "ratings", "10.96.0.11", map[string]string{"app.kubernetes.io/name": "ratings"}),
					{ObjectMeta: service("demo", "ext", "", nil).ObjectMeta, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
				},
			},
		},
		{
			name: "pod_status",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{namespace("demo", ambientNS)},
				Pods: []*corev1.Pod{
					pod("demo", "unready", "a", "10.0.0.1", nil, notReady),
					pod("demo", "deleting", "b", "10.0.0.2", nil, terminating),
					pod("demo", "done", "c", "10.0.0.3", nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
					pod("demo", "pending", "d", "", nil, func(p *corev1.Pod) { p.Status.PodIPs = nil }),
					pod("demo", "hostnet", "e", "192.168.1.10", nil, notCaptured, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
					pod("demo", "dual", "f", "10.0.0.4", nil, func(p *corev1.Pod) {
						p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.4"}, {IP: "fd00::4"}}
					}),
					pod("demo", "garbage", "g", "not-an-ip", nil),
					pod("demo", "cron-29000000", "h", "10.0.0.8", nil, func(p *corev1.Pod) {
						p.OwnerReferences[0].Kind, p.OwnerReferences[0].Name = "Job", "backup-29000000"
					}),
				},
			},
		},
		{
			name: "waypoints",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{
					namespace("demo", map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "demo-wp"}),
					namespace("other", map[string]string{LabelUseWaypoint: "shared", LabelUseWaypointNamespace: "infra"}),
					namespace("denied", map[string]string{LabelUseWaypoint: "demo-wp", LabelUseWaypointNamespace: "demo"}),
					namespace("infra", nil),
					namespace("team-a", map[string]string{"team": "a", LabelUseWaypoint: "team", LabelUseWaypointNamespace: "infra"}),
					namespace("team-b", map[string]string{"team": "b", LabelUseWaypoint: "team", LabelUseWaypointNamespace: "infra"}),
				},
				Gateways: []*gatewayv1.Gateway{
					waypointGateway("demo", "demo-wp"),
					waypointGateway("demo", "pod-wp", waypointFor(WaypointForWorkload)),
					waypointGateway("demo", "pending-wp", notProgrammed),
					waypointGateway("infra", "shared", waypointFor(WaypointForAll), fromAll),
					waypointGateway("infra", "bogus", waypointFor("everything")),
					waypointGateway("infra", "team", func(g *gatewayv1.Gateway) {
						g.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{
							From:     ptr.To(gatewayv1.NamespacesFromSelector),
							Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}},
						}}
					}),
					{ObjectMeta: waypointGateway("demo", "ingress").ObjectMeta, Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio"}},
				},
				Services: []*corev1.Service{
					service("demo", "inherits", "10.96.1.1", map[string]string{"app": "inherits"}),
					service("demo", "optout", "10.96.1.2", map[string]string{"app": "optout"}, withLabels(map[string]string{LabelUseWaypoint: "none"})),
					service("demo", "wrongtype", "10.96.1.3", nil, withLabels(map[string]string{LabelUseWaypoint: "pod-wp"})),
					service("demo", "notready", "10.96.1.4", nil, withLabels(map[string]string{LabelUseWaypoint: "pending-wp"})),
					service("demo", "demo-wp", "10.96.1.5", map[string]string{LabelGatewayName: "demo-wp"},
						withLabels(map[string]string{LabelGatewayManaged: ManagedMeshControllerValue})),
					service("other", "crossns", "10.96.2.1", nil),
					service("denied", "blocked", "10.96.3.1", nil),
					service("team-a", "selected", "10.96.3.2", nil),
					service("team-b", "unselected", "10.96.3.3", nil),
					service("infra", "uses-bogus", "10.96.3.4", nil, withLabels(map[string]string{LabelUseWaypoint: "bogus"})),
				},
				Pods: []*corev1.Pod{
					pod("demo", "inherits", "a", "10.1.0.1", map[string]string{"app": "inherits"}),
					pod("demo", "podwp", "b", "10.1.0.2", map[string]string{LabelUseWaypoint: "pod-wp"}),
					pod("demo", "podsvcwp", "c", "10.1.0.3", map[string]string{LabelUseWaypoint: "demo-wp"}),
					pod("demo", "demo-wp", "d", "10.1.0.4", map[string]string{LabelGatewayName: "demo-wp"}, notCaptured),
					pod("other", "crossns", "e", "10.1.0.5", nil),
				},
			},
		},
		{
			name: "selectorless_service",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{namespace("demo", ambientNS)},
				Services: []*corev1.Service{
					service("demo", "legacy", "10.96.4.1", nil, func(s *corev1.Service) {
						s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 443, TargetPort: intstr.FromInt32(8443), Protocol: corev1.ProtocolTCP}}
					}),
				},
				Pods: []*corev1.Pod{pod("demo", "backend", "a", "10.2.0.1", nil)},
				EndpointSlices: []*discoveryv1.EndpointSlice{
					endpointSlice("demo", "legacy-abcde", "legacy",
						discoveryv1.Endpoint{Addresses: []string{"192.0.2.10"}},
						discoveryv1.Endpoint{Addresses: []string{"192.0.2.11"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
						discoveryv1.Endpoint{Addresses: []string{"10.2.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "backend-5d8f7b-a"}},
					),
					endpointSlice("demo", "orphan-xyz", "missing", discoveryv1.Endpoint{Addresses: []string{"192.0.2.99"}}),
				},
			},
		},
		{
			name: "authorization_policies",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{namespace("demo", ambientNS)},
				Pods:       []*corev1.Pod{pod("demo", "api", "a", "10.3.0.1", map[string]string{"app": "api"})},
				AuthorizationPolicies: []*securityv1.AuthorizationPolicy{
					authz("demo", "allow-l4", &securityv1beta1.AuthorizationPolicy{
						Selector: selector(map[string]string{"app": "api"}),
						Rules: []*securityv1beta1.Rule{{
							From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
								Principals: []string{"cluster.local/ns/demo/sa/web", "*/sa/admin"}, Namespaces: []string{"demo", "test-*"},
								ServiceAccounts: []string{"web", "infra/bot"}, IpBlocks: []string{"10.0.0.0/8", "192.0.2.1"},
							}}},
							To:   []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"8080"}, NotPorts: []string{"9090"}}}},
							When: []*securityv1beta1.Condition{{Key: "destination.ip", Values: []string{"10.3.0.1"}}},
						}},
					}),
					authz("demo", "allow-http", &securityv1beta1.AuthorizationPolicy{
						Selector: selector(map[string]string{"app": "api"}),
						Rules: []*securityv1beta1.Rule{
							{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"GET"}, Ports: []string{"8080"}}}}},
							{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"ops"}}}}},
						},
					}),
					authz("demo", "deny-http", &securityv1beta1.AuthorizationPolicy{
						Action: securityv1beta1.AuthorizationPolicy_DENY,
						Rules: []*securityv1beta1.Rule{{
							To:   []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Paths: []string{"/admin"}, Ports: []string{"8080"}}}},
							When: []*securityv1beta1.Condition{{Key: "request.headers[x-debug]", Values: []string{"1"}}},
						}},
					}),
					authz("istio-system", "global-deny", &securityv1beta1.AuthorizationPolicy{
						Action: securityv1beta1.AuthorizationPolicy_DENY,
						Rules:  []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{NotNamespaces: []string{"*"}}}}}},
					}),
					authz("demo", "allow-all", &securityv1beta1.AuthorizationPolicy{Rules: []*securityv1beta1.Rule{{}}}),
					authz("demo", "allow-nothing", &securityv1beta1.AuthorizationPolicy{}),
					authz("demo", "custom", &securityv1beta1.AuthorizationPolicy{Action: securityv1beta1.AuthorizationPolicy_CUSTOM}),
					authz("demo", "waypoint-only", &securityv1beta1.AuthorizationPolicy{
						TargetRefs: []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "api"}},
					}),
					authz("demo", "bad-values", &securityv1beta1.AuthorizationPolicy{
						Selector: selector(map[string]string{"app": "api"}),
						Rules: []*securityv1beta1.Rule{{
							From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{"spiffe://cluster.local/ns/demo/sa/web"}}}},
							To:   []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"http", "70000"}}}},
						}},
					}),
					authz("demo", "bad-selector", &securityv1beta1.AuthorizationPolicy{Selector: selector(map[string]string{"app*": "x"})}),
				},
			},
		},
		{
			name: "peer_authentication",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{namespace("a", ambientNS), namespace("b", ambientNS), namespace("c", ambientNS)},
				Pods: []*corev1.Pod{
					pod("a", "web", "1", "10.4.0.1", map[string]string{"app": "web"}),
					pod("a", "db", "2", "10.4.0.2", map[string]string{"app": "db"}),
					pod("b", "web", "3", "10.4.1.1", map[string]string{"app": "web"}),
					pod("b", "legacy", "4", "10.4.1.2", map[string]string{"app": "legacy"}),
					pod("c", "web", "5", "10.4.2.1", map[string]string{"app": "web"}),
				},
				PeerAuthentications: []*securityv1.PeerAuthentication{
					peerAuth("istio-system", "mesh", 0, nil, strict, nil),
					// a: inherits STRICT; db opens 5432 for plaintext.
					peerAuth("a", "db-port", 1, map[string]string{"app": "db"}, unset, map[uint32]mtls{5432: permissive}),
					// b: PERMISSIVE namespace; legacy is STRICT except 8080; web only STRICT on 9000.
					peerAuth("b", "ns", 1, nil, permissive, nil),
					peerAuth("b", "ns-newer", 2, nil, strict, nil), // loses to the older one
					peerAuth("b", "legacy", 1, map[string]string{"app": "legacy"}, strict, map[uint32]mtls{8080: disable}),
					peerAuth("b", "web", 1, map[string]string{"app": "web"}, unset, map[uint32]mtls{9000: strict}),
					// c: namespace DISABLE overrides mesh STRICT.
					peerAuth("c", "ns", 1, nil, disable, nil),
					// Ignored settings, reported.
					peerAuth("c", "ns-ports", 3, nil, unset, map[uint32]mtls{80: strict}),
					peerAuth("c", "bad-port", 1, map[string]string{"app": "none"}, unset, map[uint32]mtls{70000: strict}),
				},
			},
		},
		{
			name: "locality_and_load_balancing",
			snap: Snapshot{
				Namespaces: []*corev1.Namespace{
					{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{
						LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp", LabelIngressUseWaypoint: "true",
					}, Annotations: map[string]string{AnnotationTrafficDist: "PreferSameNode"}}},
				},
				Nodes: []*corev1.Node{
					{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{
						corev1.LabelTopologyRegion: "eu-west", corev1.LabelTopologyZone: "eu-west-1a", LabelTopologySubzone: "rack-3",
					}}},
				},
				Gateways: []*gatewayv1.Gateway{waypointGateway("demo", "wp")},
				Pods:     []*corev1.Pod{pod("demo", "api", "a", "10.6.0.1", map[string]string{"app": "api"})},
				Services: []*corev1.Service{
					service("demo", "close", "10.96.6.1", map[string]string{"app": "api"}, func(s *corev1.Service) {
						s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
					}),
					service("demo", "inherits", "10.96.6.2", nil, withLabels(map[string]string{LabelIngressUseWaypoint: "false"})),
					service("demo", "local", "10.96.6.3", nil, func(s *corev1.Service) {
						s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
						s.Spec.PublishNotReadyAddresses = true
					}),
					service("demo", "badlabel", "10.96.6.4", nil, withLabels(map[string]string{LabelIngressUseWaypoint: "yes please"})),
					service("demo", "headless", "None", map[string]string{"app": "api"}, func(s *corev1.Service) {
						s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
					}),
				},
			},
		},
		{
			name: "mesh_config",
			snap: Snapshot{
				Mesh:       MeshConfig{ClusterID: "east", TrustDomain: "corp.example", DomainSuffix: "mesh.internal", RootNamespace: "mesh-root", Network: "net-1"},
				Namespaces: []*corev1.Namespace{namespace("demo", ambientNS)},
				Pods:       []*corev1.Pod{pod("demo", "api", "a", "10.5.0.1", map[string]string{"app": "api"})},
				Services:   []*corev1.Service{service("demo", "api", "10.96.5.1", map[string]string{"app": "api"})},
				AuthorizationPolicies: []*securityv1.AuthorizationPolicy{
					authz("mesh-root", "root-allow", &securityv1beta1.AuthorizationPolicy{Rules: []*securityv1beta1.Rule{{}}}),
				},
				PeerAuthentications: []*securityv1.PeerAuthentication{peerAuth("mesh-root", "default", 0, nil, strict, nil)},
			},
		},
	}
}

func TestTranslateGolden(t *testing.T) {
	for _, tc := range translateCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := Translate(tc.snap)
			path := filepath.Join("testdata", tc.name+".golden.json")
			if *update {
				if err := os.WriteFile(path, toGolden(t, got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			compareResources(t, got, fromGolden(t, b))
		})
	}
}

// TestTranslateDeterministic checks that input order does not change output.
func TestTranslateDeterministic(t *testing.T) {
	for _, tc := range translateCases() {
		t.Run(tc.name, func(t *testing.T) {
			want := Translate(tc.snap)
			r := rand.New(rand.NewPCG(1, 2))
			for range 5 {
				s := tc.snap
				s.Pods = shuffled(r, s.Pods)
				s.Services = shuffled(r, s.Services)
				s.Namespaces = shuffled(r, s.Namespaces)
				s.Nodes = shuffled(r, s.Nodes)
				s.Gateways = shuffled(r, s.Gateways)
				s.EndpointSlices = shuffled(r, s.EndpointSlices)
				s.AuthorizationPolicies = shuffled(r, s.AuthorizationPolicies)
				s.PeerAuthentications = shuffled(r, s.PeerAuthentications)
				compareResources(t, Translate(s), want)
			}
		})
	}
}

func shuffled[T any](r *rand.Rand, in []T) []T {
	out := slices.Clone(in)
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
