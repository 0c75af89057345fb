package model

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// Builders for route test objects.

func objMeta(ns, name string, age int) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 3,
		CreationTimestamp: metav1.Time{Time: epoch.Add(time.Duration(age) * time.Hour)}}
}

// svcParent is a GAMMA parentRef to a Service, on one port when port > 0.
func svcParent(name string, port int32) gatewayv1.ParentReference {
	p := gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
	if port > 0 {
		p.Port = ptr.To(gatewayv1.PortNumber(port))
	}
	return p
}

func gwParent(ns, name string) gatewayv1.ParentReference {
	p := gatewayv1.ParentReference{Name: gatewayv1.ObjectName(name)}
	if ns != "" {
		p.Namespace = ptr.To(gatewayv1.Namespace(ns))
	}
	return p
}

func backendRef(name string, port int32, weight int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr.To(gatewayv1.PortNumber(port))},
		Weight:                 ptr.To(weight),
	}}
}

func httpRoute(ns, name string, age int, parents []gatewayv1.ParentReference, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{ObjectMeta: objMeta(ns, name, age), Spec: gatewayv1.HTTPRouteSpec{
		CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}, Rules: rules}}
}

func pathMatch(typ gatewayv1.PathMatchType, v string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(typ), Value: ptr.To(v)}}
}

func parents(p ...gatewayv1.ParentReference) []gatewayv1.ParentReference { return p }

func to(name string, port int32) []gatewayv1.HTTPBackendRef {
	return []gatewayv1.HTTPBackendRef{backendRef(name, port, 1)}
}

// meshNS is an ambient namespace whose Services use waypoint "wp".
func meshNS(name string) *corev1.Namespace {
	return namespace(name, map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp"})
}

func withPorts(ports ...corev1.ServicePort) svcOpt {
	return func(s *corev1.Service) { s.Spec.Ports = ports }
}

func sport(name string, port int32, appProtocol string) corev1.ServicePort {
	p := corev1.ServicePort{Name: name, Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP}
	if appProtocol != "" {
		p.AppProtocol = ptr.To(appProtocol)
	}
	return p
}

// routesGolden is the on-disk form of the route compilation: ServiceConfigs
// as protojson, statuses and diagnostics as JSON.
type routesGolden struct {
	WaypointConfigs map[string]json.RawMessage `json:"waypointConfigs"`
	RouteStatuses   map[string]*RouteStatus    `json:"routeStatuses"`
	PolicyStatuses  map[string]*PolicyStatus   `json:"policyStatuses,omitempty"`
	Diagnostics     []Diagnostic               `json:"diagnostics"`
}

func toRoutesGolden(t *testing.T, r Resources) []byte {
	t.Helper()
	g := routesGolden{WaypointConfigs: map[string]json.RawMessage{}, RouteStatuses: r.RouteStatuses, PolicyStatuses: r.PolicyStatuses, Diagnostics: r.Diagnostics}
	for k, v := range r.WaypointConfigs {
		g.WaypointConfigs[k] = marshalProto(t, v)
	}
	if g.RouteStatuses == nil {
		g.RouteStatuses = map[string]*RouteStatus{}
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

func routeCases() []struct {
	name string
	snap Snapshot
} {
	wp := waypointGateway("demo", "wp")
	reviews := service("demo", "reviews", "10.96.0.10", map[string]string{"app": "reviews"})
	base := func(extra ...*corev1.Service) Snapshot {
		return Snapshot{
			Namespaces: []*corev1.Namespace{meshNS("demo")},
			Gateways:   []*gatewayv1.Gateway{wp},
			Services: append([]*corev1.Service{reviews,
				service("demo", "reviews-v1", "10.96.0.11", map[string]string{"app": "reviews", "version": "v1"}),
				service("demo", "reviews-v2", "10.96.0.12", map[string]string{"app": "reviews", "version": "v2"}),
			}, extra...),
		}
	}
	return append([]struct {
		name string
		snap Snapshot
	}{
		{
			// The canonical 90/10 split on the Service's http port; the
			// tcp-admin port keeps its default route to the Service.
			name: "routes_weighted_split",
			snap: func() Snapshot {
				s := base()
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("demo", "reviews", 0, parents(svcParent("reviews", 80)),
					gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("reviews-v1", 80, 90), backendRef("reviews-v2", 80, 10)}})}
				return s
			}(),
		},
		{
			name: "routes_precedence",
			snap: func() Snapshot {
				s := base()
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{
					httpRoute("demo", "catch-all", 0, parents(svcParent("reviews", 0)), gatewayv1.HTTPRouteRule{BackendRefs: to("reviews-v1", 80)}),
					httpRoute("demo", "paths", 1, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/api/"), pathMatch(gatewayv1.PathMatchPathPrefix, "/api/v2")}, BackendRefs: to("reviews-v2", 80)},
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/login"), pathMatch(gatewayv1.PathMatchRegularExpression, "/items/[0-9]+")}, BackendRefs: to("reviews-v1", 80)},
					),
					httpRoute("demo", "newer-headers", 5, parents(svcParent("reviews", 80)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{
							Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/api")},
							Headers: []gatewayv1.HTTPHeaderMatch{
								{Name: "x-user", Value: "jason"},
								{Name: "X-User", Value: "ignored, same name"},
								{Name: "x-env", Type: ptr.To(gatewayv1.HeaderMatchRegularExpression), Value: "prod|canary"},
							},
						}}, BackendRefs: to("reviews-v2", 80)},
					),
					httpRoute("demo", "older-query", 2, parents(svcParent("reviews", 80)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{
							Path:        &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/api")},
							QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "debug", Value: "1"}},
						}}, BackendRefs: to("reviews-v1", 80)},
					),
					httpRoute("demo", "method", 3, parents(svcParent("reviews", 80)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{
							Path:   &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/api")},
							Method: ptr.To(gatewayv1.HTTPMethodPost),
						}}, BackendRefs: to("reviews-v1", 80)},
					),
					// Same age as "older-query": the name decides.
					httpRoute("demo", "a-same-age", 2, parents(svcParent("reviews", 80)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{
							Path:        &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/api")},
							QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "trace", Type: ptr.To(gatewayv1.QueryParamMatchRegularExpression), Value: "on|yes"}},
						}}, BackendRefs: to("reviews-v2", 80)},
					),
				}
				return s
			}(),
		},
		{
			name: "routes_filters_timeouts_retry",
			snap: func() Snapshot {
				s := base()
				mirror := func(name string, pct *int32, frac *gatewayv1.Fraction) gatewayv1.HTTPRouteFilter {
					return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
						BackendRef: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr.To(gatewayv1.PortNumber(80))},
						Percent:    pct, Fraction: frac}}
				}
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("demo", "features", 0, parents(svcParent("reviews", 80)),
					gatewayv1.HTTPRouteRule{
						Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/v1")},
						Filters: []gatewayv1.HTTPRouteFilter{
							{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
								Set: []gatewayv1.HTTPHeader{{Name: "x-route", Value: "features"}}, Add: []gatewayv1.HTTPHeader{{Name: "x-hop", Value: "wp"}}, Remove: []string{"x-debug"}}},
							{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{
								Set: []gatewayv1.HTTPHeader{{Name: "cache-control", Value: "no-store"}}}},
							{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
								Hostname: ptr.To(gatewayv1.PreciseHostname("reviews.internal")),
								Path:     &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr.To("/v2")}}},
							mirror("reviews-v2", ptr.To[int32](25), nil),
							mirror("reviews-v1", nil, &gatewayv1.Fraction{Numerator: 1, Denominator: ptr.To[int32](3)}),
						},
						BackendRefs: []gatewayv1.HTTPBackendRef{func() gatewayv1.HTTPBackendRef {
							b := backendRef("reviews-v1", 80, 1)
							b.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
								RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Set: []gatewayv1.HTTPHeader{{Name: "x-backend", Value: "v1"}}}}}
							return b
						}()},
						Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: ptr.To(gatewayv1.Duration("10s")), BackendRequest: ptr.To(gatewayv1.Duration("2s"))},
						Retry: &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503, 504},
							Attempts: ptr.To(3), Backoff: ptr.To(gatewayv1.Duration("100ms"))},
					},
					gatewayv1.HTTPRouteRule{
						Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/old")},
						Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{
							Scheme: ptr.To("https"), Hostname: ptr.To(gatewayv1.PreciseHostname("new.example.com")), Port: ptr.To(gatewayv1.PortNumber(8443)),
							StatusCode: ptr.To(301), Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr.To("/new")}}}},
						// Retry with defaults; a zero request timeout means none.
						Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: ptr.To(gatewayv1.Duration("0s"))},
						Retry:    &gatewayv1.HTTPRouteRetry{},
					},
					// No match is PathPrefix "/", which ReplacePrefixMatch needs.
					gatewayv1.HTTPRouteRule{
						Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
							Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr.To("/legacy")}}}},
						BackendRefs: to("reviews-v2", 80),
					},
				)}
				return s
			}(),
		},
		{
			// Bad routes are rejected one by one; bad backends are served
			// as invalid and reported; good routes on the same Service stay.
			name: "routes_invalid",
			snap: func() Snapshot {
				s := base(service("other", "shared", "10.96.1.1", nil), service("granted", "api", "10.96.1.2", nil))
				s.Namespaces = append(s.Namespaces, namespace("other", nil), namespace("granted", nil))
				s.ReferenceGrants = []*gatewayv1.ReferenceGrant{{
					ObjectMeta: metav1.ObjectMeta{Namespace: "granted", Name: "from-demo"},
					Spec: gatewayv1.ReferenceGrantSpec{
						From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: "demo"}},
						To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
					},
				}}
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{
					httpRoute("demo", "bad-regex", 0, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchRegularExpression, "/items/(")}, BackendRefs: to("reviews-v1", 80)}),
					httpRoute("demo", "cors", 0, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterCORS, CORS: &gatewayv1.HTTPCORSFilter{}}}, BackendRefs: to("reviews-v1", 80)}),
					httpRoute("demo", "redirect-304", 0, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{StatusCode: ptr.To(304)}}}}),
					httpRoute("demo", "bad-header", 0, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
							RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Add: []gatewayv1.HTTPHeader{{Name: "x-ok", Value: "line\nbreak"}}}}}}),
					httpRoute("demo", "retry-forever", 0, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Retry: &gatewayv1.HTTPRouteRetry{Attempts: ptr.To(1000)}, BackendRefs: to("reviews-v1", 80)}),
					httpRoute("demo", "bad-backends", 1, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/broken")}, BackendRefs: []gatewayv1.HTTPBackendRef{
							backendRef("missing", 80, 50),
							{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
								Group: ptr.To(gatewayv1.Group("example.com")), Kind: ptr.To(gatewayv1.Kind("Bucket")), Name: "b"}}},
							{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
								Name: "shared", Namespace: ptr.To(gatewayv1.Namespace("other")), Port: ptr.To(gatewayv1.PortNumber(80))}}},
							{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
								Name: "api", Namespace: ptr.To(gatewayv1.Namespace("granted")), Port: ptr.To(gatewayv1.PortNumber(80))}}},
							backendRef("reviews-v1", 8080, 1),
						}}),
					httpRoute("demo", "good", 2, parents(svcParent("reviews", 0)),
						gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/good")}, BackendRefs: to("reviews-v2", 80)}),
				}
				return s
			}(),
		},
		{
			name: "routes_parents",
			snap: func() Snapshot {
				s := base(
					service("demo", "plain", "10.96.0.20", nil, withLabels(map[string]string{LabelUseWaypoint: "none"})),
					service("demo", "tcp-only", "10.96.0.21", nil, withPorts(sport("tcp-db", 5432, ""))),
				)
				s.Namespaces = append(s.Namespaces, namespace("client", nil))
				s.Gateways = append(s.Gateways, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "ingress"},
					Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio"}})
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{
					// Attaches to every Service of the waypoint (reviews,
					// reviews-v1, reviews-v2; not tcp-only's TCP port).
					httpRoute("demo", "whole-waypoint", 0, parents(gwParent("", "wp")),
						gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier,
							ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{Add: []gatewayv1.HTTPHeader{{Name: "x-via", Value: "wp"}}}}}}),
					httpRoute("demo", "many-parents", 1, parents(
						svcParent("missing", 0),
						svcParent("reviews", 8080),
						svcParent("tcp-only", 0),
						svcParent("plain", 80),
						gwParent("", "ingress"), // another controller's Gateway: no status from us
						gwParent("", "wp"),
						gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: "reviews",
							SectionName: ptr.To(gatewayv1.SectionName("tcp-admin"))},
					), gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/many")}, BackendRefs: to("reviews", 80)}),
					// A consumer route (route namespace differs from the Service's).
					httpRoute("client", "consumer", 0, parents(gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")),
						Namespace: ptr.To(gatewayv1.Namespace("demo")), Name: "reviews"}), gatewayv1.HTTPRouteRule{}),
					// The waypoint allows routes from its own namespace only.
					httpRoute("client", "foreign", 0, parents(gwParent("demo", "wp")), gatewayv1.HTTPRouteRule{}),
				}
				s.TCPRoutes = []*gatewayv1.TCPRoute{{ObjectMeta: objMeta("demo", "db", 0), Spec: gatewayv1.TCPRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents(svcParent("reviews", 80))},
					Rules:           []gatewayv1.TCPRouteRule{{BackendRefs: []gatewayv1.BackendRef{{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews-v1", Port: ptr.To(gatewayv1.PortNumber(80))}}}}},
				}}}
				return s
			}(),
		},
		{
			name: "routes_grpc_and_tcp",
			snap: func() Snapshot {
				s := base(service("demo", "rpc", "10.96.0.30", nil, withPorts(
					sport("grpc", 9090, ""), sport("h2", 9091, "kubernetes.io/h2c"), sport("db", 5432, "tcp"), sport("http-web", 8080, ""),
				)))
				tcp := func(name string, age int, weights map[string]int32) *gatewayv1.TCPRoute {
					var refs []gatewayv1.BackendRef
					for _, n := range []string{"reviews-v1", "reviews-v2"} {
						if w, ok := weights[n]; ok {
							refs = append(refs, gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(n), Port: ptr.To(gatewayv1.PortNumber(9000))}, Weight: ptr.To(w)})
						}
					}
					return &gatewayv1.TCPRoute{ObjectMeta: objMeta("demo", name, age), Spec: gatewayv1.TCPRouteSpec{
						CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents(svcParent("reviews", 9000), svcParent("rpc", 5432))},
						Rules:           []gatewayv1.TCPRouteRule{{BackendRefs: refs}}}}
				}
				s.TCPRoutes = []*gatewayv1.TCPRoute{
					tcp("newer", 2, map[string]int32{"reviews-v2": 1}),
					tcp("older", 1, map[string]int32{"reviews-v1": 80, "reviews-v2": 20}),
				}
				exact := gatewayv1.GRPCMethodMatchExact
				re := gatewayv1.GRPCMethodMatchRegularExpression
				gm := func(typ gatewayv1.GRPCMethodMatchType, svc, method string) gatewayv1.GRPCRouteMatch {
					m := &gatewayv1.GRPCMethodMatch{Type: &typ}
					if svc != "" {
						m.Service = ptr.To(svc)
					}
					if method != "" {
						m.Method = ptr.To(method)
					}
					return gatewayv1.GRPCRouteMatch{Method: m}
				}
				s.GRPCRoutes = []*gatewayv1.GRPCRoute{{ObjectMeta: objMeta("demo", "rpc", 0), Spec: gatewayv1.GRPCRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents(svcParent("rpc", 0))},
					Rules: []gatewayv1.GRPCRouteRule{
						{Matches: []gatewayv1.GRPCRouteMatch{gm(exact, "shop.Cart", "Add"), gm(exact, "shop.Cart", ""), gm(exact, "", "Health")},
							BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews-v1", Port: ptr.To(gatewayv1.PortNumber(80))}}}}},
						{Matches: []gatewayv1.GRPCRouteMatch{func() gatewayv1.GRPCRouteMatch {
							m := gm(re, `shop\..*`, "")
							m.Headers = []gatewayv1.GRPCHeaderMatch{{Name: "x-tenant", Value: "a"}}
							return m
						}()}, Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestHeaderModifier,
							RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Set: []gatewayv1.HTTPHeader{{Name: "x-grpc", Value: "1"}}}}},
							BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews-v2", Port: ptr.To(gatewayv1.PortNumber(80))}}}}},
					},
				}}}
				return s
			}(),
		},
	}, policyCases(base)...)
}

func TestRoutesGolden(t *testing.T) {
	for _, tc := range routeCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := toRoutesGolden(t, Translate(tc.snap))
			path := filepath.Join("testdata", tc.name+".golden.json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if string(got) != string(want) {
				t.Errorf("route compilation differs from %s (run with -update and review the diff):\n got %s", path, got)
			}
			// The golden configs decode with the generated type.
			var g routesGolden
			if err := json.Unmarshal(want, &g); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRoutesDeterministic checks that input order does not change output.
func TestRoutesDeterministic(t *testing.T) {
	for _, tc := range routeCases() {
		t.Run(tc.name, func(t *testing.T) {
			want := toRoutesGolden(t, Translate(tc.snap))
			r := rand.New(rand.NewPCG(3, 4))
			for range 5 {
				s := tc.snap
				s.Services = shuffled(r, s.Services)
				s.HTTPRoutes = shuffled(r, s.HTTPRoutes)
				s.GRPCRoutes = shuffled(r, s.GRPCRoutes)
				s.TCPRoutes = shuffled(r, s.TCPRoutes)
				s.Gateways = shuffled(r, s.Gateways)
				s.Pods = shuffled(r, s.Pods)
				s.DestinationRules = shuffled(r, s.DestinationRules)
				s.VirtualServices = shuffled(r, s.VirtualServices)
				s.LocalRateLimitPolicies = shuffled(r, s.LocalRateLimitPolicies)
				s.AuthorizationPolicies = shuffled(r, s.AuthorizationPolicies)
				if got := toRoutesGolden(t, Translate(s)); string(got) != string(want) {
					t.Fatalf("shuffled input changed the output:\n got %s\nwant %s", got, want)
				}
			}
		})
	}
}

func TestPortProtocol(t *testing.T) {
	tests := []struct {
		name string
		port corev1.ServicePort
		want waypointv1alpha1.Protocol
	}{
		{"appProtocol http", sport("web", 80, "http"), waypointv1alpha1.Protocol_HTTP},
		{"appProtocol h2c", sport("web", 80, "kubernetes.io/h2c"), waypointv1alpha1.Protocol_HTTP2},
		{"appProtocol grpc", sport("x", 80, "grpc"), waypointv1alpha1.Protocol_GRPC},
		{"appProtocol http2", sport("x", 80, "http2"), waypointv1alpha1.Protocol_HTTP2},
		{"appProtocol tcp wins over name", sport("http-web", 80, "tcp"), waypointv1alpha1.Protocol_TCP},
		{"name http-", sport("http-web", 80, ""), waypointv1alpha1.Protocol_HTTP},
		{"name http2-", sport("http2-api", 80, ""), waypointv1alpha1.Protocol_HTTP2},
		{"name grpc-", sport("grpc-api", 80, ""), waypointv1alpha1.Protocol_GRPC},
		{"name grpc-web is tcp", sport("grpc-web", 80, ""), waypointv1alpha1.Protocol_TCP},
		{"name tcp-", sport("tcp-db", 80, ""), waypointv1alpha1.Protocol_TCP},
		{"name https is tcp", sport("https", 443, ""), waypointv1alpha1.Protocol_TCP},
		{"unnamed", sport("", 80, ""), waypointv1alpha1.Protocol_TCP},
		{"unknown", sport("redis", 6379, ""), waypointv1alpha1.Protocol_TCP},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := portProtocol(tc.port); got != tc.want {
				t.Errorf("portProtocol(%s, %v) = %v, want %v", tc.port.Name, tc.port.AppProtocol, got, tc.want)
			}
		})
	}
}

// TestRouteIsolation: a broken route next to a good one on the same Service
// rejects only itself.
func TestRouteIsolation(t *testing.T) {
	s := Snapshot{
		Namespaces: []*corev1.Namespace{meshNS("demo")},
		Gateways:   []*gatewayv1.Gateway{waypointGateway("demo", "wp")},
		Services:   []*corev1.Service{service("demo", "api", "10.96.0.1", nil)},
		HTTPRoutes: []*gatewayv1.HTTPRoute{
			httpRoute("demo", "broken", 0, parents(svcParent("api", 0)), gatewayv1.HTTPRouteRule{
				Matches: []gatewayv1.HTTPRouteMatch{{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "x", Type: ptr.To(gatewayv1.HeaderMatchRegularExpression), Value: "[z-a]"}}}},
			}),
			httpRoute("demo", "fine", 1, parents(svcParent("api", 0)), gatewayv1.HTTPRouteRule{BackendRefs: to("api", 80)}),
		},
	}
	r := Translate(s)
	cond := func(key, typ string) metav1.Condition {
		t.Helper()
		st := r.RouteStatuses[key]
		if st == nil || len(st.Parents) != 1 {
			t.Fatalf("status %s = %+v, want one parent", key, st)
		}
		for _, c := range st.Parents[0].Conditions {
			if c.Type == typ {
				return c
			}
		}
		t.Fatalf("status %s has no %s condition", key, typ)
		return metav1.Condition{}
	}
	if c := cond("HTTPRoute/demo/broken", "Accepted"); c.Status != metav1.ConditionFalse || c.Reason != "UnsupportedValue" ||
		c.Message[:len("spec.rules[0].matches[0].headers[0].value")] != "spec.rules[0].matches[0].headers[0].value" || c.ObservedGeneration != 3 {
		t.Errorf("broken Accepted = %+v, want False/UnsupportedValue naming spec.rules[0].matches[0].headers[0].value, observedGeneration 3", c)
	}
	if c := cond("HTTPRoute/demo/fine", "Accepted"); c.Status != metav1.ConditionTrue {
		t.Errorf("fine Accepted = %+v, want True", c)
	}
	sc := r.WaypointConfigs["demo/api.demo.svc.cluster.local"]
	if sc == nil || len(sc.Ports) != 2 {
		t.Fatalf("config = %v, want two ports", sc)
	}
	if got := sc.Ports[0].HttpRoutes; len(got) != 1 || got[0].Name != "HTTPRoute/demo/fine/0" {
		t.Errorf("port 80 routes = %v, want only HTTPRoute/demo/fine/0", got)
	}
}
