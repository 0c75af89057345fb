package istiod

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

var telemetriesGVR = schema.GroupVersionResource{Group: "telemetry.istio.io", Version: "v1", Resource: "telemetries"}

// telemetryLog holds the Telemetry resources a waypoint received, with the
// time of the last update of each.
type telemetryLog struct {
	mu   sync.Mutex
	held map[string]*waypointv1alpha1.Telemetry
	at   map[string]time.Time
}

func (l *telemetryLog) handle(d xdsclient.Delta) error {
	if d.TypeURL != model.TelemetryTypeURL {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range d.Updated {
		var tel waypointv1alpha1.Telemetry
		if err := r.UnmarshalTo(&tel); err != nil {
			return err
		}
		l.held[r.Name], l.at[r.Name] = &tel, time.Now()
	}
	for _, n := range d.Removed {
		delete(l.held, n)
	}
	return nil
}

func (l *telemetryLog) get(name string) (*waypointv1alpha1.Telemetry, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[name], l.at[name]
}

// waitEvent waits for a Warning Event on an object whose note names field.
func (h *harness) waitEvent(t *testing.T, ns, kind, name, field string) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("Warning event on %s %s/%s naming %s", kind, ns, name, field), func() error {
		evs, err := h.cs.EventsV1().Events(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Kind == kind && e.Regarding.Name == name && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, field) {
				return nil
			}
		}
		return fmt.Errorf("%d events in %s, none matching", len(evs.Items), ns)
	})
}

// TestWaypointTelemetry runs the tracing configuration path on a real
// apiserver: with Istio's mesh config ConfigMap declaring an OpenTelemetry
// extensionProvider and a Telemetry targeting a waypoint Gateway at 100 %,
// the waypoint's xDS stream gets a Telemetry resource with the provider and
// 100 %; 100 -> 0 % is pushed within about a second; a broken mesh config is
// reported on the ConfigMap and the last good one stays in use; an unknown
// provider name is reported on the Telemetry and leaves tracing unset;
// access logging and metric overrides follow the Telemetry's accessLogging
// and metrics.
func TestWaypointTelemetry(t *testing.T) {
	h := startIstiod(t)
	ctx := t.Context()
	ns := h.cfg.Namespace

	const mesh = `extensionProviders:
- name: otel-tracing
  opentelemetry:
    service: opentelemetry-collector.otel-collector.svc.cluster.local
    port: 4317
`
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio"}, Data: map[string]string{"mesh": mesh}}
	if _, err := h.cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create mesh config: %v", err)
	}
	gw := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": "wp", "namespace": "demo"},
		"spec": map[string]any{"gatewayClassName": model.WaypointGatewayClassName,
			"listeners": []any{map[string]any{"name": "mesh", "port": int64(model.HBONEPort), "protocol": "HBONE"}}},
	}}
	if _, err := h.dyn.Resource(gatewaysGVR).Namespace("demo").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create waypoint gateway: %v", err)
	}
	tel := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
		"metadata": map[string]any{"name": "wp-tracing", "namespace": "demo"},
		"spec": map[string]any{
			"targetRefs": []any{map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}},
			"tracing": []any{map[string]any{
				"providers":                []any{map[string]any{"name": "otel-tracing"}},
				"randomSamplingPercentage": int64(100),
			}},
		},
	}}
	tel, err := h.dyn.Resource(telemetriesGVR).Namespace("demo").Create(ctx, tel, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Telemetry: %v", err)
	}
	setTracing := func(tracing map[string]any) {
		t.Helper()
		cur, err := h.dyn.Resource(telemetriesGVR).Namespace("demo").Get(ctx, "wp-tracing", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Object["spec"].(map[string]any)["tracing"] = []any{tracing}
		if _, err := h.dyn.Resource(telemetriesGVR).Namespace("demo").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update Telemetry: %v", err)
		}
	}

	proxy := h.pod(t, "demo", "wp-proxy", "wp", "node-a", "198.18.17.10")
	log := &telemetryLog{held: map[string]*waypointv1alpha1.Telemetry{}, at: map[string]time.Time{}}
	client, err := xdsclient.New(xdsclient.Config{
		Conn:          h.dial(t, h.token(t, proxy)),
		Node:          &core.Node{Id: "waypoint~198.18.17.10~wp-proxy.demo~demo.svc.cluster.local"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: model.TelemetryTypeURL}},
		Handler:       log.handle, InitialBackoff: 50 * time.Millisecond, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(cctx) }()
	defer func() { cancel(); <-done }()

	const name = "demo/wp"
	sampledAt := func(want float64) func() error {
		return func() error {
			got, _ := log.get(name)
			tr := got.GetTracing()
			p := tr.GetProvider()
			if p.GetName() != "otel-tracing" || p.GetService() != "opentelemetry-collector.otel-collector.svc.cluster.local" || p.GetPort() != 4317 || p.GetHttp() != nil {
				return fmt.Errorf("telemetry %s = %v, want the otel-tracing provider over gRPC", name, protojson.Format(got))
			}
			if tr.GetRandomSamplingPercentage() != want || tr.GetDisabled() {
				return fmt.Errorf("sampling = %v (disabled %v), want %v", tr.GetRandomSamplingPercentage(), tr.GetDisabled(), want)
			}
			return nil
		}
	}
	waitFor(t, 60*time.Second, "waypoint Telemetry with the otel-tracing provider at 100%", sampledAt(100))

	// 100 -> 0 %: pushed within about a second of the change.
	_, before := log.get(name)
	changed := time.Now()
	setTracing(map[string]any{"providers": []any{map[string]any{"name": "otel-tracing"}}, "randomSamplingPercentage": int64(0)})
	waitFor(t, 30*time.Second, "sampling 0% pushed", sampledAt(0))
	_, at := log.get(name)
	if !at.After(before) {
		t.Fatal("no new update for the sampling change")
	}
	if took := at.Sub(changed); took > 3*time.Second {
		t.Errorf("sampling change took %s to reach the waypoint, want about 1s at most", took)
	} else {
		t.Logf("sampling change reached the waypoint %s after the update", took.Round(time.Millisecond))
	}

	// A broken mesh config: reported on the ConfigMap, naming the field;
	// the last good config (with otel-tracing) stays in use.
	cm.Data["mesh"] = strings.Replace(mesh, "port: 4317", "port: 0", 1)
	if _, err := h.cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update mesh config: %v", err)
	}
	h.waitEvent(t, ns, "ConfigMap", "istio", "data.mesh.extensionProviders[0].opentelemetry.port")
	setTracing(map[string]any{"providers": []any{map[string]any{"name": "otel-tracing"}}, "randomSamplingPercentage": int64(50)})
	waitFor(t, 30*time.Second, "sampling 50% with the last good provider", sampledAt(50))

	// An unknown provider: an Event on the Telemetry naming the field, and
	// no tracing for the waypoint.
	setTracing(map[string]any{"providers": []any{map[string]any{"name": "otel-tracng"}}, "randomSamplingPercentage": int64(100)})
	h.waitEvent(t, "demo", "Telemetry", "wp-tracing", "spec.tracing[0].providers[0].name")
	waitFor(t, 30*time.Second, "tracing unset for an unknown provider", func() error {
		got, _ := log.get(name)
		if got == nil {
			return errors.New("no Telemetry resource for the waypoint")
		}
		if got.GetTracing() != nil {
			return fmt.Errorf("tracing = %v, want unset", protojson.Format(got.GetTracing()))
		}
		return nil
	})

	// Access logging: off without accessLogFile or a Telemetry enabling it
	// (Istio's default); on once the waypoint's Telemetry names the
	// built-in envoy provider; an unsupported filter is reported and the
	// log stays on.
	accessLog := func(want bool) func() error {
		return func() error {
			got, _ := log.get(name)
			if al := got.GetAccessLogging(); al == nil || al.GetEnabled() != want {
				return fmt.Errorf("access_logging = %v, want enabled=%v", al, want)
			}
			return nil
		}
	}
	waitFor(t, 30*time.Second, "access log off by default", accessLog(false))
	cur, err := h.dyn.Resource(telemetriesGVR).Namespace("demo").Get(ctx, "wp-tracing", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Object["spec"].(map[string]any)["accessLogging"] = []any{map[string]any{
		"providers": []any{map[string]any{"name": "envoy"}},
		"filter":    map[string]any{"expression": "response.code >= 400"},
	}}
	if _, err := h.dyn.Resource(telemetriesGVR).Namespace("demo").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update Telemetry: %v", err)
	}
	waitFor(t, 30*time.Second, "access log on through Telemetry accessLogging", accessLog(true))
	h.waitEvent(t, "demo", "Telemetry", "wp-tracing", "spec.accessLogging[0].filter.expression")

	// Metrics overrides: REQUEST_DURATION disabled for the waypoint.
	if cur, err = h.dyn.Resource(telemetriesGVR).Namespace("demo").Get(ctx, "wp-tracing", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	cur.Object["spec"].(map[string]any)["metrics"] = []any{map[string]any{
		"overrides": []any{map[string]any{"match": map[string]any{"metric": "REQUEST_DURATION"}, "disabled": true}},
	}}
	if _, err := h.dyn.Resource(telemetriesGVR).Namespace("demo").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update Telemetry: %v", err)
	}
	waitFor(t, 30*time.Second, "REQUEST_DURATION disabled through Telemetry metrics", func() error {
		got, _ := log.get(name)
		if mo := got.GetMetricOverrides(); len(mo) != 1 || mo[0].GetMetric() != "REQUEST_DURATION" || !mo[0].GetDisabled() {
			return fmt.Errorf("metric_overrides = %v, want REQUEST_DURATION disabled", mo)
		}
		return nil
	})
}
