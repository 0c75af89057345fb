package istiod

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

var (
	destinationRulesGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
	virtualServicesGVR  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	authzPoliciesGVR    = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	rateLimitsGVR       = schema.GroupVersionResource{Group: "policy.ambient-mesh.io", Version: "v1alpha1", Resource: "localratelimitpolicies"}
)

// config returns a ServiceConfig as the waypoint holds it.
func (l *configLog) config(name string) *waypointv1alpha1.ServiceConfig {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[name]
}

func object(apiVersion, kind, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": apiVersion, "kind": kind,
		"metadata": map[string]any{"name": name, "namespace": "demo"}, "spec": spec}}
}

// TestIstioPolicies runs issue 9's control plane on a real apiserver: a
// DestinationRule (subsets v1/v2, LEAST_REQUEST, a connection pool, outlier
// detection), a VirtualService splitting 50/50 over the subsets, a
// LocalRateLimitPolicy and an L7 AuthorizationPolicy reach a waypoint's
// xDS stream as one decoded ServiceConfig; the policies' statuses are
// written (the AuthorizationPolicy's as Istio's istio.io/WaypointAccepted);
// a bad DestinationRule gets a Warning Event and breaks nothing.
func TestIstioPolicies(t *testing.T) {
	h := startIstiod(t)
	ctx := t.Context()

	if _, err := h.dyn.Resource(gatewaysGVR).Namespace("demo").Create(ctx, object("gateway.networking.k8s.io/v1", "Gateway", "wp", map[string]any{
		"gatewayClassName": model.WaypointGatewayClassName,
		"listeners":        []any{map[string]any{"name": "mesh", "port": int64(model.HBONEPort), "protocol": "HBONE"}},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create waypoint gateway: %v", err)
	}
	if _, err := h.cs.CoreV1().Services("demo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "reviews", Labels: map[string]string{model.LabelUseWaypoint: "wp"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// One pod per version.
	for i, v := range []string{"v1", "v2"} {
		p := h.pod(t, "demo", "reviews-"+v, "reviews", "node-a", fmt.Sprintf("198.18.17.%d", 20+i))
		p.Labels = map[string]string{"app": "reviews", "version": v}
		if _, err := h.cs.CoreV1().Pods("demo").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("label pod %s: %v", p.Name, err)
		}
	}

	proxy := h.pod(t, "demo", "wp-proxy", "wp", "node-a", "198.18.17.10")
	log := &configLog{held: map[string]*waypointv1alpha1.ServiceConfig{}, updates: map[string]int{}}
	client, err := xdsclient.New(xdsclient.Config{
		Conn:          h.dial(t, h.token(t, proxy)),
		Node:          &core.Node{Id: "waypoint~198.18.17.10~wp-proxy.demo~demo.svc.cluster.local"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: model.AddressTypeURL}, {TypeURL: model.WaypointConfigTypeURL}},
		Handler:       log.handle, InitialBackoff: 50 * time.Millisecond, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(cctx) }()
	defer func() { cancel(); <-done }()

	create := func(gvr schema.GroupVersionResource, u *unstructured.Unstructured) {
		t.Helper()
		if _, err := h.dyn.Resource(gvr).Namespace("demo").Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	// The bad one first: the others must still be served.
	create(destinationRulesGVR, object("networking.istio.io/v1", "DestinationRule", "bad", map[string]any{"host": "nowhere"}))
	create(destinationRulesGVR, object("networking.istio.io/v1", "DestinationRule", "reviews", map[string]any{
		"host": "reviews",
		"trafficPolicy": map[string]any{
			"loadBalancer":     map[string]any{"simple": "LEAST_REQUEST"},
			"connectionPool":   map[string]any{"tcp": map[string]any{"maxConnections": int64(1)}, "http": map[string]any{"http1MaxPendingRequests": int64(1)}},
			"outlierDetection": map[string]any{"consecutive5xxErrors": int64(3), "interval": "1s", "baseEjectionTime": "15s"},
		},
		"subsets": []any{
			map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}},
			map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}},
		},
	}))
	create(virtualServicesGVR, object("networking.istio.io/v1", "VirtualService", "reviews", map[string]any{
		"hosts": []any{"reviews"},
		"http": []any{map[string]any{"route": []any{
			map[string]any{"destination": map[string]any{"host": "reviews", "subset": "v1"}, "weight": int64(50)},
			map[string]any{"destination": map[string]any{"host": "reviews", "subset": "v2"}, "weight": int64(50)},
		}}},
	}))
	create(rateLimitsGVR, object("policy.ambient-mesh.io/v1alpha1", "LocalRateLimitPolicy", "reviews", map[string]any{
		"targetRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "reviews"}},
		"limit":      map[string]any{"requests": int64(100), "unit": "Second"},
	}))
	create(authzPoliciesGVR, object("security.istio.io/v1", "AuthorizationPolicy", "deny-admin-post", map[string]any{
		"targetRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "reviews"}},
		"action":     "DENY",
		"rules":      []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"methods": []any{"POST"}, "paths": []any{"/admin", "/admin/*"}}}}}},
	}))

	const reviews = "demo/reviews.demo.svc.cluster.local"
	waitFor(t, 60*time.Second, "ServiceConfig of demo/reviews with the VirtualService, DestinationRule, rate limit and authorization", func() error {
		sc := log.config(reviews)
		if sc == nil || len(sc.GetPorts()) != 1 {
			return fmt.Errorf("config = %v", sc)
		}
		routes := sc.GetPorts()[0].GetHttpRoutes()
		if len(routes) != 1 || routes[0].GetName() != "VirtualService/demo/reviews/0" || !slices.Equal(weightsOf(routes[0]), []uint32{50, 50}) {
			return fmt.Errorf("routes = %v", routes)
		}
		for i, want := range []string{"v1", "v2"} {
			if b := routes[0].GetBackends()[i].GetBackend(); b.GetSubset() != want || b.GetInvalid() || b.GetHostname() != "reviews.demo.svc.cluster.local" || b.GetPort() != 80 {
				return fmt.Errorf("backend %d = %v, want subset %s", i, b, want)
			}
		}
		bps := sc.GetBackendPolicies()
		if len(bps) != 1 || bps[0].GetHostname() != "reviews.demo.svc.cluster.local" || len(bps[0].GetSubsets()) != 2 {
			return fmt.Errorf("backend policies = %v", bps)
		}
		pol := bps[0].GetPolicy()
		if pol.GetLoadBalancer() != waypointv1alpha1.TrafficPolicy_LEAST_REQUEST || pol.GetConnectionPool().GetMaxConnections() != 1 ||
			pol.GetConnectionPool().GetHttp1MaxPendingRequests() != 1 || pol.GetOutlierDetection().GetConsecutive_5XxErrors() != 3 ||
			pol.GetOutlierDetection().GetInterval().AsDuration() != time.Second || pol.GetOutlierDetection().GetBaseEjectionTime().AsDuration() != 15*time.Second ||
			pol.GetOutlierDetection().GetMaxEjectionPercent() != model.DefaultMaxEjectionPercent {
			return fmt.Errorf("policy = %v", pol)
		}
		for i, v := range []string{"v1", "v2"} {
			sub := bps[0].GetSubsets()[i]
			if want := []string{model.PodUID("Kubernetes", "demo", "reviews-"+v)}; sub.GetName() != v || !slices.Equal(sub.GetWorkloadUids(), want) {
				return fmt.Errorf("subset %d = %v, want %s with %v", i, sub, v, want)
			}
		}
		if rl := sc.GetRateLimit(); rl.GetName() != "demo/reviews" || rl.GetMaxTokens() != 100 || rl.GetTokensPerFill() != 100 || rl.GetFillInterval().AsDuration() != time.Second {
			return fmt.Errorf("rate limit = %v", rl)
		}
		az := sc.GetAuthorization()
		if len(az) != 1 || az[0].GetName() != "demo/deny-admin-post" || az[0].GetAction() != waypointv1alpha1.AuthorizationPolicy_DENY ||
			len(az[0].GetRules()) != 1 || !slices.Equal(az[0].GetRules()[0].GetTo()[0].GetMethods(), []string{"POST"}) ||
			!slices.Equal(az[0].GetRules()[0].GetTo()[0].GetPaths(), []string{"/admin", "/admin/*"}) {
			return fmt.Errorf("authorization = %v", az)
		}
		return nil
	})

	waitFor(t, 30*time.Second, "a Warning Event on DestinationRule bad naming spec.host", func() error {
		evs, err := h.cs.EventsV1().Events("demo").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Kind == model.KindDestinationRule && e.Regarding.Name == "bad" && e.Type == corev1.EventTypeWarning && e.Reason == "HostNotFound" {
				return nil
			}
		}
		return fmt.Errorf("no HostNotFound event for DestinationRule bad among %d events", len(evs.Items))
	})

	// Statuses, from the leader.
	waitFor(t, 30*time.Second, "LocalRateLimitPolicy reviews Accepted", func() error {
		u, err := h.dyn.Resource(rateLimitsGVR).Namespace("demo").Get(ctx, "reviews", metav1.GetOptions{})
		if err != nil {
			return err
		}
		ancestors, _, _ := unstructured.NestedSlice(u.Object, "status", "ancestors")
		if len(ancestors) != 1 {
			return fmt.Errorf("status.ancestors = %v", ancestors)
		}
		a := ancestors[0].(map[string]any)
		conds, _, _ := unstructured.NestedSlice(a, "conditions")
		if a["controllerName"] != string(model.PolicyControllerName) || len(conds) != 1 {
			return fmt.Errorf("ancestor = %v", a)
		}
		c := conds[0].(map[string]any)
		if c["type"] != "Accepted" || c["status"] != "True" || c["observedGeneration"] != u.GetGeneration() {
			return fmt.Errorf("condition = %v (generation %d)", c, u.GetGeneration())
		}
		return nil
	})
	waitFor(t, 30*time.Second, "AuthorizationPolicy deny-admin-post istio.io/WaypointAccepted", func() error {
		u, err := h.dyn.Resource(authzPoliciesGVR).Namespace("demo").Get(ctx, "deny-admin-post", metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			c := c.(map[string]any)
			if c["type"] == model.ConditionWaypointAccepted && c["status"] == "True" && c["message"] == "bound to demo/wp" {
				return nil
			}
		}
		return fmt.Errorf("status.conditions = %v", conds)
	})
	waitFor(t, 30*time.Second, "VirtualService reviews Accepted", func() error {
		u, err := h.dyn.Resource(virtualServicesGVR).Namespace("demo").Get(ctx, "reviews", metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			c := c.(map[string]any)
			if c["type"] == "Accepted" && c["status"] == "True" {
				return nil
			}
		}
		return fmt.Errorf("status.conditions = %v", conds)
	})
}
