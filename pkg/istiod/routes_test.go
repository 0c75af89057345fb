package istiod

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

var (
	httpRoutesGVR = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "httproutes"}
	gatewaysGVR   = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "gateways"}
)

// configLog holds the ServiceConfigs a waypoint received, decoded with the
// generated type, and counts the deltas of each.
type configLog struct {
	mu      sync.Mutex
	held    map[string]*waypointv1alpha1.ServiceConfig
	updates map[string]int
}

func (l *configLog) handle(d xdsclient.Delta) error {
	if d.TypeURL != model.WaypointConfigTypeURL {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range d.Updated {
		var sc waypointv1alpha1.ServiceConfig
		if err := r.UnmarshalTo(&sc); err != nil {
			return err
		}
		l.held[r.Name] = &sc
		l.updates[r.Name]++
	}
	for _, n := range d.Removed {
		delete(l.held, n)
	}
	return nil
}

// routes returns the HTTP routes of a Service port as received.
func (l *configLog) routes(name string, port uint32) ([]*waypointv1alpha1.HTTPRoute, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.held[name].GetPorts() {
		if p.GetPort() == port {
			return p.GetHttpRoutes(), l.updates[name]
		}
	}
	return nil, l.updates[name]
}

func weightsOf(r *waypointv1alpha1.HTTPRoute) []uint32 {
	var out []uint32
	for _, b := range r.GetBackends() {
		out = append(out, b.GetWeight())
	}
	return out
}

func httpRouteObject(name, path string, backends map[string]int64) *unstructured.Unstructured {
	var refs []any
	for _, n := range []string{"reviews-v1", "reviews-v2", "missing"} {
		if w, ok := backends[n]; ok {
			refs = append(refs, map[string]any{"name": n, "port": int64(80), "weight": w})
		}
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": name, "namespace": "demo"},
		"spec": map[string]any{
			"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "reviews", "port": int64(80)}},
			"rules": []any{map[string]any{
				"matches":     []any{map[string]any{"path": map[string]any{"type": "PathPrefix", "value": path}}},
				"backendRefs": refs,
			}},
		},
	}}
}

// routeStatus reads a route's status from the API server.
func (h *harness) routeStatus(t *testing.T, name string) (*gatewayv1.HTTPRoute, error) {
	t.Helper()
	u, err := h.dyn.Resource(httpRoutesGVR).Namespace("demo").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var r gatewayv1.HTTPRoute
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// condition returns our parent's condition of a type on a route.
func condition(r *gatewayv1.HTTPRoute, typ string) (*metav1.Condition, error) {
	for _, p := range r.Status.Parents {
		if p.ControllerName != model.RouteStatusControllerName {
			continue
		}
		for i, c := range p.Conditions {
			if c.Type == typ {
				return &p.Conditions[i], nil
			}
		}
	}
	return nil, fmt.Errorf("no %s condition under %s in %+v", typ, model.RouteStatusControllerName, r.Status.Parents)
}

// TestMeshRoutes runs the GAMMA path on a real apiserver: a waypoint-bound
// Service with an HTTPRoute splitting 90/10 reaches a waypoint's xDS stream
// as a ServiceConfig; a weight change is pushed as an update; a second route
// with a missing backend is served with that backend invalid and reported
// ResolvedRefs=False/BackendNotFound, while the first stays Accepted; route
// status carries observedGeneration.
func TestMeshRoutes(t *testing.T) {
	h := startIstiod(t)
	ctx := t.Context()

	// The waypoint: istiod-lite deploys it and publishes its address.
	gw := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": "wp", "namespace": "demo"},
		"spec": map[string]any{"gatewayClassName": model.WaypointGatewayClassName,
			"listeners": []any{map[string]any{"name": "mesh", "port": int64(model.HBONEPort), "protocol": "HBONE"}}},
	}}
	if _, err := h.dyn.Resource(gatewaysGVR).Namespace("demo").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create waypoint gateway: %v", err)
	}
	svc := func(name string, labels map[string]string) {
		t.Helper()
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Labels: labels},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
		if _, err := h.cs.CoreV1().Services("demo").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create service %s: %v", name, err)
		}
	}
	svc("reviews", map[string]string{model.LabelUseWaypoint: "wp"})
	svc("reviews-v1", nil)
	svc("reviews-v2", nil)

	// A waypoint proxy's stream (any pod's token authenticates).
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

	const reviews = "demo/reviews.demo.svc.cluster.local"
	waitFor(t, 60*time.Second, "default route of demo/reviews once its waypoint has an address", func() error {
		routes, _ := log.routes(reviews, 80)
		if len(routes) != 1 || routes[0].GetName() != "default" {
			return fmt.Errorf("port 80 routes = %v", routes)
		}
		return nil
	})

	// 90/10.
	canary, err := h.dyn.Resource(httpRoutesGVR).Namespace("demo").Create(ctx,
		httpRouteObject("canary", "/", map[string]int64{"reviews-v1": 90, "reviews-v2": 10}), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create HTTPRoute: %v", err)
	}
	waitFor(t, 30*time.Second, "ServiceConfig with the 90/10 split", func() error {
		routes, _ := log.routes(reviews, 80)
		if len(routes) != 1 || routes[0].GetName() != "HTTPRoute/demo/canary/0" || !slices.Equal(weightsOf(routes[0]), []uint32{90, 10}) {
			return fmt.Errorf("port 80 routes = %v", routes)
		}
		b := routes[0].GetBackends()[0].GetBackend()
		if b.GetHostname() != "reviews-v1.demo.svc.cluster.local" || b.GetPort() != 80 || b.GetInvalid() {
			return fmt.Errorf("first backend = %v", b)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "canary Accepted=True with observedGeneration", func() error {
		r, err := h.routeStatus(t, "canary")
		if err != nil {
			return err
		}
		c, err := condition(r, "Accepted")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue || c.Reason != "Accepted" || c.ObservedGeneration != r.Generation || c.LastTransitionTime.IsZero() {
			return fmt.Errorf("Accepted = %+v (generation %d)", c, r.Generation)
		}
		if c, err := condition(r, "ResolvedRefs"); err != nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("ResolvedRefs = %+v, %v", c, err)
		}
		return nil
	})

	// Weights change: an update is pushed, and the status follows the
	// new generation.
	_, before := log.routes(reviews, 80)
	spec := canary.Object["spec"].(map[string]any)
	refs := spec["rules"].([]any)[0].(map[string]any)["backendRefs"].([]any)
	refs[0].(map[string]any)["weight"], refs[1].(map[string]any)["weight"] = int64(50), int64(50)
	waitFor(t, 30*time.Second, "weight change applied", func() error {
		cur, err := h.dyn.Resource(httpRoutesGVR).Namespace("demo").Get(ctx, "canary", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Object["spec"] = spec
		_, err = h.dyn.Resource(httpRoutesGVR).Namespace("demo").Update(ctx, cur, metav1.UpdateOptions{})
		return err // a conflict with a status write is retried
	})
	waitFor(t, 30*time.Second, "ServiceConfig update with 50/50", func() error {
		routes, n := log.routes(reviews, 80)
		if n <= before || len(routes) != 1 || !slices.Equal(weightsOf(routes[0]), []uint32{50, 50}) {
			return fmt.Errorf("after %d updates (had %d), port 80 routes = %v", n, before, routes)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "canary status at the new generation", func() error {
		r, err := h.routeStatus(t, "canary")
		if err != nil {
			return err
		}
		if r.Generation < 2 {
			return errors.New("generation not bumped yet")
		}
		c, err := condition(r, "Accepted")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue || c.ObservedGeneration != r.Generation {
			return fmt.Errorf("Accepted = %+v (generation %d)", c, r.Generation)
		}
		return nil
	})

	// A second route with a missing backend.
	if _, err := h.dyn.Resource(httpRoutesGVR).Namespace("demo").Create(ctx,
		httpRouteObject("broken", "/broken", map[string]int64{"missing": 1}), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create HTTPRoute broken: %v", err)
	}
	waitFor(t, 30*time.Second, "broken ResolvedRefs=False/BackendNotFound", func() error {
		r, err := h.routeStatus(t, "broken")
		if err != nil {
			return err
		}
		c, err := condition(r, "ResolvedRefs")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.Reason != string(gatewayv1.RouteReasonBackendNotFound) || c.ObservedGeneration != r.Generation {
			return fmt.Errorf("ResolvedRefs = %+v", c)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "both routes served, the broken backend invalid", func() error {
		routes, _ := log.routes(reviews, 80)
		if len(routes) != 2 || routes[0].GetName() != "HTTPRoute/demo/broken/0" || routes[1].GetName() != "HTTPRoute/demo/canary/0" {
			return fmt.Errorf("port 80 routes = %v", routes)
		}
		if b := routes[0].GetBackends()[0].GetBackend(); !b.GetInvalid() {
			return fmt.Errorf("broken backend = %v, want invalid", b)
		}
		if b := routes[1].GetBackends()[0].GetBackend(); b.GetInvalid() || !slices.Equal(weightsOf(routes[1]), []uint32{50, 50}) {
			return fmt.Errorf("canary route = %v", routes[1])
		}
		return nil
	})
	r, err := h.routeStatus(t, "canary")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := condition(r, "Accepted"); err != nil || c.Status != metav1.ConditionTrue {
		t.Errorf("canary Accepted = %+v, %v; want True next to the broken route", c, err)
	}
	if c, err := condition(r, "ResolvedRefs"); err != nil || c.Status != metav1.ConditionTrue {
		t.Errorf("canary ResolvedRefs = %+v, %v; want True", c, err)
	}
}

// TestRunWithoutGatewayAPI: without the Gateway API CRDs istiod-lite still
// becomes ready and serves ztunnels; routes, waypoints and route status
// stand down.
func TestRunWithoutGatewayAPI(t *testing.T) {
	env := kubetest.Start(t, kubetest.Options{})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{}
	cfg.RegisterFlags(newFlagSet(t))
	addrs := freeAddrs(t, 3)
	cfg.GRPCAddr, cfg.MetricsAddr, cfg.DebugAddr = addrs[0], addrs[1], addrs[2]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, env.Config, zaptest.NewLogger(t)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v on shutdown, want nil", err)
		}
	}()
	waitFor(t, 60*time.Second, "istiod-lite /ready without the Gateway API CRDs", func() error {
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("Run returned early: %v", err)
		default:
		}
		resp, err := http.Get("http://" + cfg.DebugAddr + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}
