package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	policyv1alpha1 "github.com/ambient-mesh/mesh/api/policy/v1alpha1"
	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	waypointproxy "github.com/ambient-mesh/mesh/pkg/waypoint"
)

// Builders for the Istio traffic APIs and the mesh's policies.

func destinationRule(ns, name string, age int, spec *networking.DestinationRule) *networkingv1.DestinationRule {
	dr := &networkingv1.DestinationRule{ObjectMeta: objMeta(ns, name, age)}
	dr.Spec.Host, dr.Spec.TrafficPolicy, dr.Spec.Subsets, dr.Spec.WorkloadSelector = spec.Host, spec.TrafficPolicy, spec.Subsets, spec.WorkloadSelector
	return dr
}

func virtualService(ns, name string, age int, spec *networking.VirtualService) *networkingv1.VirtualService {
	vs := &networkingv1.VirtualService{ObjectMeta: objMeta(ns, name, age)}
	vs.Spec.Hosts, vs.Spec.Gateways, vs.Spec.Http, vs.Spec.Tcp = spec.Hosts, spec.Gateways, spec.Http, spec.Tcp
	return vs
}

func rateLimitPolicy(ns, name string, age int, spec policyv1alpha1.LocalRateLimitPolicySpec) *policyv1alpha1.LocalRateLimitPolicy {
	return &policyv1alpha1.LocalRateLimitPolicy{ObjectMeta: objMeta(ns, name, age), Spec: spec}
}

func target(group, kind, name, section string) gatewayv1.LocalPolicyTargetReferenceWithSectionName {
	t := gatewayv1.LocalPolicyTargetReferenceWithSectionName{LocalPolicyTargetReference: gatewayv1.LocalPolicyTargetReference{
		Group: gatewayv1.Group(group), Kind: gatewayv1.Kind(kind), Name: gatewayv1.ObjectName(name)}}
	if section != "" {
		t.SectionName = ptr.To(gatewayv1.SectionName(section))
	}
	return t
}

func dest(host, subset string, weight int32) *networking.HTTPRouteDestination {
	return &networking.HTTPRouteDestination{Destination: &networking.Destination{Host: host, Subset: subset}, Weight: weight}
}

func exact(v string) *networking.StringMatch {
	return &networking.StringMatch{MatchType: &networking.StringMatch_Exact{Exact: v}}
}

func prefix(v string) *networking.StringMatch {
	return &networking.StringMatch{MatchType: &networking.StringMatch_Prefix{Prefix: v}}
}

func targetRef(group, kind, name string) *typev1beta1.PolicyTargetReference {
	return &typev1beta1.PolicyTargetReference{Group: group, Kind: kind, Name: name}
}

// versioned are reviews pods of versions v1 and v2 (and a finished one,
// which has no Workload and joins no subset).
func versioned() []*corev1.Pod {
	return []*corev1.Pod{
		pod("demo", "reviews-v1", "a", "10.1.0.1", map[string]string{"app": "reviews", "version": "v1"}),
		pod("demo", "reviews-v1", "b", "10.1.0.2", map[string]string{"app": "reviews", "version": "v1"}),
		pod("demo", "reviews-v2", "a", "10.1.0.3", map[string]string{"app": "reviews", "version": "v2"}),
		pod("demo", "reviews-v2", "z", "10.1.0.9", map[string]string{"app": "reviews", "version": "v2"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
	}
}

// policyCases are the route cases of DestinationRule, VirtualService,
// LocalRateLimitPolicy and waypoint AuthorizationPolicy compilation.
func policyCases(base func(extra ...*corev1.Service) Snapshot) []struct {
	name string
	snap Snapshot
} {
	return []struct {
		name string
		snap Snapshot
	}{
		{
			// Host policy, subsets by labels with their policies merged
			// over it, Istio's outlier defaults; problems reported, the
			// good parts kept.
			name: "policies_destination_rule",
			snap: func() Snapshot {
				s := base()
				s.Pods = versioned()
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("demo", "split", 0, parents(svcParent("reviews", 80)),
					gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("reviews-v1", 80, 90), backendRef("reviews-v2", 80, 10)}})}
				s.DestinationRules = []*networkingv1.DestinationRule{
					destinationRule("demo", "reviews", 0, &networking.DestinationRule{
						Host: "reviews",
						TrafficPolicy: &networking.TrafficPolicy{
							LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_LEAST_REQUEST}},
							ConnectionPool: &networking.ConnectionPoolSettings{
								Tcp:  &networking.ConnectionPoolSettings_TCPSettings{MaxConnections: 1, ConnectTimeout: durationpb.New(time.Second)},
								Http: &networking.ConnectionPoolSettings_HTTPSettings{Http1MaxPendingRequests: 1, Http2MaxRequests: 100, MaxRequestsPerConnection: 10, MaxRetries: 3},
							},
							OutlierDetection: &networking.OutlierDetection{Interval: durationpb.New(time.Second)},
						},
						Subsets: []*networking.Subset{
							{Name: "v1", Labels: map[string]string{"version": "v1"}},
							{Name: "v2", Labels: map[string]string{"version": "v2"}, TrafficPolicy: &networking.TrafficPolicy{
								LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_RANDOM}},
								OutlierDetection: &networking.OutlierDetection{
									Consecutive_5XxErrors: wrapperspb.UInt32(0), ConsecutiveGatewayErrors: wrapperspb.UInt32(3),
									BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: 50, MinHealthPercent: 20,
								},
							}},
							{Name: "bad", Labels: map[string]string{"version*": "x"}},
						},
					}),
					// A second rule for the same host: subsets merged,
					// trafficPolicy ignored.
					destinationRule("demo", "reviews-more", 1, &networking.DestinationRule{
						Host:          "reviews.demo.svc.cluster.local",
						TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_RANDOM}}},
						Subsets: []*networking.Subset{
							{Name: "all"},
							{Name: "v1", Labels: map[string]string{"version": "none"}},
						},
					}),
					destinationRule("demo", "reviews-v1", 0, &networking.DestinationRule{
						Host: "reviews-v1",
						TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_ConsistentHash{
							ConsistentHash: &networking.LoadBalancerSettings_ConsistentHashLB{}}}},
					}),
					destinationRule("demo", "nowhere", 0, &networking.DestinationRule{Host: "nowhere"}),
					destinationRule("other", "foreign", 0, &networking.DestinationRule{Host: "reviews.demo.svc.cluster.local"}),
					destinationRule("demo", "sidecars", 0, &networking.DestinationRule{Host: "reviews", WorkloadSelector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "x"}}}),
				}
				return s
			}(),
		},
		{
			// A VirtualService splitting 50/50 over subsets with Istio's
			// route features; the HTTPRoute on reviews-v1 wins over the
			// VirtualService for it; an older VirtualService wins for
			// reviews-v2; a broken one is not applied.
			name: "policies_virtual_service",
			snap: func() Snapshot {
				s := base(service("demo", "ratings", "10.96.0.40", map[string]string{"app": "ratings"}))
				s.Pods = versioned()
				s.DestinationRules = []*networkingv1.DestinationRule{destinationRule("demo", "reviews", 0, &networking.DestinationRule{
					Host: "reviews",
					Subsets: []*networking.Subset{
						{Name: "v1", Labels: map[string]string{"version": "v1"}},
						{Name: "v2", Labels: map[string]string{"version": "v2"}},
					},
				})}
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("demo", "v1-route", 0, parents(svcParent("reviews-v1", 0)), gatewayv1.HTTPRouteRule{BackendRefs: to("reviews-v1", 80)})}
				s.VirtualServices = []*networkingv1.VirtualService{
					virtualService("demo", "reviews", 1, &networking.VirtualService{
						Hosts: []string{"reviews", "reviews-v1"},
						Http: []*networking.HTTPRoute{
							{
								Match: []*networking.HTTPMatchRequest{
									{Uri: prefix("/api"), Headers: map[string]*networking.StringMatch{"X-User": exact("jason"), "x-env": {}}, Method: exact("GET")},
									{Uri: &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: "/items/[0-9]+"}}, QueryParams: map[string]*networking.StringMatch{"debug": exact("1")}},
									{Uri: exact("/only-9000"), Port: 9000},
								},
								Route:   []*networking.HTTPRouteDestination{dest("reviews", "v1", 50), dest("reviews.demo.svc.cluster.local", "v2", 50)},
								Timeout: durationpb.New(10 * time.Second),
								Retries: &networking.HTTPRetry{Attempts: 3, PerTryTimeout: durationpb.New(2 * time.Second), RetryOn: "5xx,503,unavailable,retriable-4xx"},
								Fault: &networking.HTTPFaultInjection{
									Abort: &networking.HTTPFaultInjection_Abort{ErrorType: &networking.HTTPFaultInjection_Abort_HttpStatus{HttpStatus: 503}, Percentage: &networking.Percent{Value: 10}},
									Delay: &networking.HTTPFaultInjection_Delay{HttpDelayType: &networking.HTTPFaultInjection_Delay_FixedDelay{FixedDelay: durationpb.New(100 * time.Millisecond)}, Percentage: &networking.Percent{Value: 0.5}},
								},
								Mirror:           &networking.Destination{Host: "ratings"},
								MirrorPercentage: &networking.Percent{Value: 25},
								Headers: &networking.Headers{
									Request:  &networking.Headers_HeaderOperations{Set: map[string]string{"x-vs": "reviews"}, Remove: []string{"x-debug"}},
									Response: &networking.Headers_HeaderOperations{Add: map[string]string{"x-served-by": "waypoint"}},
								},
							},
							{
								Name:    "rest",
								Route:   []*networking.HTTPRouteDestination{dest("reviews", "v3", 0)},
								Retries: &networking.HTTPRetry{Attempts: 0},
								Fault: &networking.HTTPFaultInjection{Abort: &networking.HTTPFaultInjection_Abort{
									ErrorType: &networking.HTTPFaultInjection_Abort_GrpcStatus{GrpcStatus: "UNAVAILABLE"}, Percentage: &networking.Percent{Value: 100}}},
							},
						},
					}),
					virtualService("demo", "older-v2", 0, &networking.VirtualService{Hosts: []string{"reviews-v2"},
						Http: []*networking.HTTPRoute{{Route: []*networking.HTTPRouteDestination{dest("reviews-v2", "", 0)}}}}),
					virtualService("demo", "newer-v2", 2, &networking.VirtualService{Hosts: []string{"reviews-v2", "missing"},
						Http: []*networking.HTTPRoute{{Route: []*networking.HTTPRouteDestination{dest("reviews-v1", "", 0)}}}}),
					virtualService("demo", "broken", 0, &networking.VirtualService{Hosts: []string{"ratings"},
						Http: []*networking.HTTPRoute{{Redirect: &networking.HTTPRedirect{Uri: "/elsewhere"}}}}),
					// For an ingress gateway only: not read.
					virtualService("demo", "ingress", 0, &networking.VirtualService{Hosts: []string{"ratings"}, Gateways: []string{"istio-system/ingress"}}),
				}
				return s
			}(),
		},
		{
			name: "policies_rate_limit_and_authorization",
			snap: func() Snapshot {
				s := base()
				s.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("demo", "api", 0, parents(svcParent("reviews", 80)),
					gatewayv1.HTTPRouteRule{Name: ptr.To(gatewayv1.SectionName("search")),
						Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/search"), pathMatch(gatewayv1.PathMatchPathPrefix, "/find")}, BackendRefs: to("reviews-v1", 80)},
					gatewayv1.HTTPRouteRule{BackendRefs: to("reviews-v2", 80)},
				)}
				s.LocalRateLimitPolicies = []*policyv1alpha1.LocalRateLimitPolicy{
					rateLimitPolicy("demo", "reviews-100rps", 0, policyv1alpha1.LocalRateLimitPolicySpec{
						TargetRefs: []gatewayv1.LocalPolicyTargetReferenceWithSectionName{target("", "Service", "reviews", ""), target("", "Service", "missing", ""),
							target("apps", "Deployment", "reviews", ""), target("", "Service", "reviews-v1", "http")},
						Limit: &policyv1alpha1.RateLimit{Requests: 100, Unit: policyv1alpha1.RateLimitUnitSecond}}),
					rateLimitPolicy("demo", "reviews-newer", 1, policyv1alpha1.LocalRateLimitPolicySpec{
						TargetRefs: []gatewayv1.LocalPolicyTargetReferenceWithSectionName{target("", "Service", "reviews", "")},
						Limit:      &policyv1alpha1.RateLimit{Requests: 5, Unit: policyv1alpha1.RateLimitUnitMinute}}),
					rateLimitPolicy("demo", "search", 0, policyv1alpha1.LocalRateLimitPolicySpec{
						TargetRefs: []gatewayv1.LocalPolicyTargetReferenceWithSectionName{target(gatewayv1.GroupName, "HTTPRoute", "api", "search"), target(gatewayv1.GroupName, "HTTPRoute", "api", "nope")},
						Bucket:     &policyv1alpha1.TokenBucket{MaxTokens: 20, TokensPerFill: 5, FillInterval: "500ms"}}),
					rateLimitPolicy("demo", "whole-route", 0, policyv1alpha1.LocalRateLimitPolicySpec{
						TargetRefs: []gatewayv1.LocalPolicyTargetReferenceWithSectionName{target(gatewayv1.GroupName, "HTTPRoute", "api", "")},
						Limit:      &policyv1alpha1.RateLimit{Requests: 1000, Unit: policyv1alpha1.RateLimitUnitHour}}),
					rateLimitPolicy("demo", "invalid", 0, policyv1alpha1.LocalRateLimitPolicySpec{
						TargetRefs: []gatewayv1.LocalPolicyTargetReferenceWithSectionName{target("", "Service", "reviews-v2", "")}}),
				}
				ap := func(name string, action securityv1beta1.AuthorizationPolicy_Action, refs []*typev1beta1.PolicyTargetReference, rules ...*securityv1beta1.Rule) *securityv1.AuthorizationPolicy {
					a := authz("demo", name, &securityv1beta1.AuthorizationPolicy{TargetRefs: refs, Rules: rules, Action: action})
					a.CreationTimestamp = metav1.Time{Time: epoch}
					return a
				}
				s.AuthorizationPolicies = []*securityv1.AuthorizationPolicy{
					ap("deny-admin-post", securityv1beta1.AuthorizationPolicy_DENY, []*typev1beta1.PolicyTargetReference{targetRef("", "Service", "reviews")},
						&securityv1beta1.Rule{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"POST"}, Paths: []string{"/admin", "/admin/*"}}}}}),
					ap("allow-from-demo", securityv1beta1.AuthorizationPolicy_ALLOW, []*typev1beta1.PolicyTargetReference{targetRef("gateway.networking.k8s.io", "Gateway", "wp")},
						&securityv1beta1.Rule{
							From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"demo"}, NotPrincipals: []string{"cluster.local/ns/demo/sa/blocked"}, ServiceAccounts: []string{"web"}}}},
							To:   []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"80"}, NotPaths: []string{"/internal*"}, Hosts: []string{"reviews*"}}}},
							When: []*securityv1beta1.Condition{{Key: "request.headers[x-tenant]", Values: []string{"a", "b"}}, {Key: "destination.port", NotValues: []string{"9000"}}},
						},
						// Fails closed: dropped from this ALLOW policy.
						&securityv1beta1.Rule{When: []*securityv1beta1.Condition{{Key: "request.auth.claims[iss]", Values: []string{"x"}}}},
					),
					// Fails closed: this DENY rule matches every request.
					ap("deny-by-ip", securityv1beta1.AuthorizationPolicy_DENY, []*typev1beta1.PolicyTargetReference{targetRef("", "Service", "reviews-v1")},
						&securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{IpBlocks: []string{"10.0.0.0/8"}}}}}),
					ap("audit", securityv1beta1.AuthorizationPolicy_AUDIT, []*typev1beta1.PolicyTargetReference{targetRef("", "Service", "reviews")}),
					ap("no-such-service", securityv1beta1.AuthorizationPolicy_DENY, []*typev1beta1.PolicyTargetReference{targetRef("", "Service", "missing")}),
				}
				return s
			}(),
		},
	}
}

// TestVirtualServicePrefix: Istio prefixes are string prefixes, so they
// compile to regular expressions, not Gateway API's element-wise prefix.
func TestVirtualServiceMatch(t *testing.T) {
	tests := []struct {
		name string
		in   *networking.HTTPMatchRequest
		want *waypointv1alpha1.PathMatch
		err  string
	}{
		{"prefix", &networking.HTTPMatchRequest{Uri: prefix("/foo")}, &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: "/foo.*"}, ""},
		{"root prefix is any path", &networking.HTTPMatchRequest{Uri: prefix("/")}, nil, ""},
		{"exact", &networking.HTTPMatchRequest{Uri: exact("/a.b")}, &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_EXACT, Value: "/a.b"}, ""},
		{"exact ignoring case", &networking.HTTPMatchRequest{Uri: exact("/a.b"), IgnoreUriCase: true}, &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: `(?i)/a\.b`}, ""},
		{"bad regex", &networking.HTTPMatchRequest{Uri: &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: "("}}}, nil, "m.uri.regex"},
		{"authority", &networking.HTTPMatchRequest{Authority: exact("x")}, nil, "m.authority"},
		{"method regex", &networking.HTTPMatchRequest{Method: &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: "GET|POST"}}}, nil, "m.method"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := vsMatch(tc.in, "m")
			switch {
			case tc.err != "":
				if err == nil || err.field != tc.err {
					t.Fatalf("vsMatch() error = %v, want one naming %s", err, tc.err)
				}
			case err != nil:
				t.Fatalf("vsMatch() error = %v", err)
			case tc.want == nil && got.Path != nil, tc.want != nil && (got.Path == nil || got.Path.Type != tc.want.Type || got.Path.Value != tc.want.Value):
				t.Errorf("vsMatch().Path = %v, want %v", got.Path, tc.want)
			}
		})
	}
}

func TestRateLimitBucket(t *testing.T) {
	tests := []struct {
		name      string
		spec      policyv1alpha1.LocalRateLimitPolicySpec
		tokens    uint32
		perFill   uint32
		interval  time.Duration
		wantField string
	}{
		{"100 per second", policyv1alpha1.LocalRateLimitPolicySpec{Limit: &policyv1alpha1.RateLimit{Requests: 100, Unit: "Second"}}, 100, 100, time.Second, ""},
		{"per hour", policyv1alpha1.LocalRateLimitPolicySpec{Limit: &policyv1alpha1.RateLimit{Requests: 7, Unit: "Hour"}}, 7, 7, time.Hour, ""},
		{"bucket", policyv1alpha1.LocalRateLimitPolicySpec{Bucket: &policyv1alpha1.TokenBucket{MaxTokens: 10, TokensPerFill: 1, FillInterval: "100ms"}}, 10, 1, 100 * time.Millisecond, ""},
		{"neither", policyv1alpha1.LocalRateLimitPolicySpec{}, 0, 0, 0, "spec"},
		{"both", policyv1alpha1.LocalRateLimitPolicySpec{Limit: &policyv1alpha1.RateLimit{Requests: 1, Unit: "Second"}, Bucket: &policyv1alpha1.TokenBucket{MaxTokens: 1, TokensPerFill: 1, FillInterval: "1s"}}, 0, 0, 0, "spec"},
		{"bad unit", policyv1alpha1.LocalRateLimitPolicySpec{Limit: &policyv1alpha1.RateLimit{Requests: 1, Unit: "Day"}}, 0, 0, 0, "spec.limit.unit"},
		{"zero requests", policyv1alpha1.LocalRateLimitPolicySpec{Limit: &policyv1alpha1.RateLimit{Unit: "Second"}}, 0, 0, 0, "spec.limit.requests"},
		{"tiny interval", policyv1alpha1.LocalRateLimitPolicySpec{Bucket: &policyv1alpha1.TokenBucket{MaxTokens: 1, TokensPerFill: 1, FillInterval: "10us"}}, 0, 0, 0, "spec.bucket.fillInterval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bucket(rateLimitPolicy("ns", "p", 0, tc.spec))
			if tc.wantField != "" {
				if err == nil || err.field != tc.wantField {
					t.Fatalf("bucket() error = %v, want one naming %s", err, tc.wantField)
				}
				return
			}
			if err != nil {
				t.Fatalf("bucket() error = %v", err)
			}
			if got.Name != "ns/p" || got.MaxTokens != tc.tokens || got.TokensPerFill != tc.perFill || got.FillInterval.AsDuration() != tc.interval {
				t.Errorf("bucket() = %v, want ns/p %d tokens, %d per %s", got, tc.tokens, tc.perFill, tc.interval)
			}
		})
	}
}

// TestResilienceSamples: the manifests/samples/resilience objects compile
// for a waypoint-bound Service echo without a diagnostic.
func TestResilienceSamples(t *testing.T) {
	files, err := filepath.Glob("../../manifests/samples/resilience/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			s := Snapshot{
				Namespaces: []*corev1.Namespace{namespace("demo", map[string]string{LabelDataplaneMode: DataplaneModeAmbient})},
				Gateways:   []*gatewayv1.Gateway{waypointGateway("demo", "waypoint")},
				Services: []*corev1.Service{service("demo", "echo", "10.96.0.10", map[string]string{"app": "echo"},
					withLabels(map[string]string{LabelUseWaypoint: "waypoint"}))},
				Pods: []*corev1.Pod{
					pod("demo", "echo-v1", "a", "10.1.0.1", map[string]string{"app": "echo", "version": "v1"}),
					pod("demo", "echo-v2", "a", "10.1.0.2", map[string]string{"app": "echo", "version": "v2"}),
				},
			}
			for _, doc := range strings.Split(string(b), "\n---\n") {
				var meta metav1.TypeMeta
				if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
					t.Fatal(err)
				}
				var obj any
				switch meta.Kind {
				case "DestinationRule":
					dr := &networkingv1.DestinationRule{}
					s.DestinationRules, obj = append(s.DestinationRules, dr), dr
				case "VirtualService":
					vs := &networkingv1.VirtualService{}
					s.VirtualServices, obj = append(s.VirtualServices, vs), vs
				case "LocalRateLimitPolicy":
					p := &policyv1alpha1.LocalRateLimitPolicy{}
					s.LocalRateLimitPolicies, obj = append(s.LocalRateLimitPolicies, p), p
				case "AuthorizationPolicy":
					ap := &securityv1.AuthorizationPolicy{}
					s.AuthorizationPolicies, obj = append(s.AuthorizationPolicies, ap), ap
				default:
					t.Fatalf("unexpected kind %q", meta.Kind)
				}
				if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
					t.Fatalf("decode %s: %v", meta.Kind, err)
				}
				obj.(metav1.Object).SetNamespace("demo")
			}
			r := Translate(s)
			if len(r.Diagnostics) > 0 {
				t.Errorf("diagnostics: %+v", r.Diagnostics)
			}
			sc := r.WaypointConfigs["demo/echo.demo.svc.cluster.local"]
			if sc == nil {
				t.Fatal("no ServiceConfig for echo")
			}
			for _, st := range r.PolicyStatuses {
				for _, c := range st.Conditions {
					if c.Status != metav1.ConditionTrue {
						t.Errorf("%s %s: %+v", st.Kind, st.Name, c)
					}
				}
				for _, a := range st.Ancestors {
					if a.Conditions[0].Status != metav1.ConditionTrue {
						t.Errorf("%s %s: %+v", st.Kind, st.Name, a.Conditions[0])
					}
				}
			}
			vsRoute := strings.HasPrefix(sc.Ports[0].HttpRoutes[0].Name, KindVirtualService+"/")
			if len(sc.BackendPolicies) == 0 && sc.RateLimit == nil && len(sc.Authorization) == 0 && !vsRoute {
				t.Errorf("the sample changed nothing in the ServiceConfig: %v", sc)
			}
			if err := waypointproxy.NewRoutes().Set(sc); err != nil {
				t.Errorf("the waypoint refuses the config: %v", err)
			}
		})
	}
}
