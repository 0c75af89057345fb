package waypoint

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/anypb"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/internal/otelcoltest"
	"github.com/ambient-mesh/mesh/pkg/otel"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

// telemetryFor is the Telemetry resource istiod-lite would push: tracing
// to the collector at addr (OTLP/gRPC) at percent.
func telemetryFor(t testing.TB, addr string, percent float64, tags ...*waypointv1alpha1.CustomTag) *waypointv1alpha1.Telemetry {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &waypointv1alpha1.Telemetry{Namespace: testNS, Name: "waypoint", Tracing: &waypointv1alpha1.Tracing{
		Provider:                 &waypointv1alpha1.OpenTelemetryProvider{Name: "otel-tracing", Service: host, Port: uint32(p)},
		RandomSamplingPercentage: percent,
		CustomTags:               tags,
	}}
}

func telemetryDelta(t testing.TB, tel *waypointv1alpha1.Telemetry) xdsclient.Delta {
	t.Helper()
	a, err := anypb.New(tel)
	if err != nil {
		t.Fatal(err)
	}
	return xdsclient.Delta{TypeURL: TelemetryTypeURL, Updated: []xdsclient.Resource{{Name: tel.GetNamespace() + "/" + tel.GetName(), TypeURL: a.TypeUrl, Value: a.Value}}}
}

// newTestTelemetry builds the waypoint's Telemetry with short export
// delays, exporting reg's metrics too.
func newTestTelemetry(t testing.TB, queue int) func(*prometheus.Registry) *Telemetry {
	return func(reg *prometheus.Registry) *Telemetry {
		base := otel.DefaultConfig()
		base.ScheduleDelay = 50 * time.Millisecond
		base.MetricInterval = 200 * time.Millisecond
		base.Timeout = 2 * time.Second
		base.ServiceName = "waypoint.demo"
		if queue > 0 {
			base.MaxQueueSize, base.MaxExportBatch = queue, queue
		}
		tel, err := NewTelemetry(t.Context(), TelemetryConfig{
			Name: waypointName, Base: base, Options: []otel.Option{otel.WithPrometheusGatherer(reg)},
			LookupEnv: func(k string) (string, bool) {
				if k == "CLUSTER_NAME" {
					return "kind-1", true
				}
				return "", false
			},
			Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Register(tel.Collector()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = tel.Close(ctx)
		})
		return tel
	}
}

// TestTelemetrySpans: client -> waypoint -> server through the real
// collector: one server span per request named "{method} {route}" with the
// HTTP and mesh attributes and the custom tags, the client's span as
// parent and the waypoint's span as the backend's parent; the Istio
// metrics and http.server.request.duration exported; then a Telemetry
// delta at 0 % stops new spans without touching the proxy.
func TestTelemetrySpans(t *testing.T) {
	col := otelcoltest.Start(t)
	var tel *Telemetry
	build := newTestTelemetry(t, 0)
	m := newMesh(t, meshOptions{telemetry: func(reg *prometheus.Registry) *Telemetry { tel = build(reg); return tel }})
	m.addService(reviews, "10.0.0.1")
	var mu sync.Mutex
	var seen []string
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Traceparent"))
		mu.Unlock()
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	if err := tel.Handle(telemetryDelta(t, telemetryFor(t, col.GRPCAddr, 100,
		&waypointv1alpha1.CustomTag{Name: "team", Type: &waypointv1alpha1.CustomTag_Literal{Literal: "bookinfo"}},
		&waypointv1alpha1.CustomTag{Name: "cluster", Type: &waypointv1alpha1.CustomTag_Environment{Environment: "CLUSTER_NAME"}},
		&waypointv1alpha1.CustomTag{Name: "user", Type: &waypointv1alpha1.CustomTag_Header{Header: "x-user"}, DefaultValue: "anonymous"},
	))); err != nil {
		t.Fatal(err)
	}

	const traceID, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	c := m.httpClient(false)
	const n = 5
	for i := range n {
		hdr := map[string]string{"traceparent": "00-" + traceID + "-" + clientSpan + "-01"}
		if i == 0 {
			hdr["x-user"] = "jason"
		}
		if code, _, _ := get(t, c, "http://10.0.0.1/productpage", hdr); code != http.StatusOK {
			t.Fatalf("request %d: status %d", i, code)
		}
	}
	if err := tel.Provider().ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	var spans []otelcoltest.Span
	waitFor(t, 10*time.Second, "5 spans in the collector", func() error {
		spans = col.Spans(t)
		if len(spans) != n {
			return errorf("%d spans", len(spans))
		}
		return nil
	})
	backendParents := map[string]bool{}
	mu.Lock()
	for _, tp := range seen {
		if !validTraceparent(tp) || tp[3:35] != traceID || tp[53:] != "01" {
			t.Errorf("backend saw traceparent %q, want trace %s sampled", tp, traceID)
			continue
		}
		backendParents[tp[36:52]] = true
	}
	mu.Unlock()
	users := map[string]int{}
	wantName := otel.SpanName("GET", defaultRoute(reviews).GetName())
	for _, s := range spans {
		if s.Name != wantName || s.Kind != 2 || s.TraceID != traceID || s.ParentSpanID != clientSpan {
			t.Errorf("span %q kind %d trace %s parent %s, want %q server span of trace %s with parent %s", s.Name, s.Kind, s.TraceID, s.ParentSpanID, wantName, traceID, clientSpan)
		}
		if !backendParents[s.SpanID] {
			t.Errorf("span %s is not the parent the backend saw (%v)", s.SpanID, backendParents)
		}
		want := map[string]string{
			"http.request.method":         "GET",
			"http.route":                  defaultRoute(reviews).GetName(),
			"http.response.status_code":   "200",
			"url.scheme":                  "http",
			"istio.source_principal":      m.caller.ID.String(),
			"istio.destination_workload":  "reviews-a",
			"istio.destination_namespace": testNS,
			"istio.destination_service":   reviews,
			"team":                        "bookinfo",
			"cluster":                     "kind-1",
		}
		for k, v := range want {
			if s.Attributes[k] != v {
				t.Errorf("span attribute %s = %q, want %q (all: %v)", k, s.Attributes[k], v, s.Attributes)
			}
		}
		if p := s.Attributes["istio.destination_principal"]; p == "" {
			t.Errorf("span has no destination principal: %v", s.Attributes)
		}
		users[s.Attributes["user"]]++
		if s.Resource["service.name"] != "waypoint.demo" {
			t.Errorf("resource %v, want service.name waypoint.demo", s.Resource)
		}
	}
	if users["jason"] != 1 || users["anonymous"] != n-1 {
		t.Errorf("header tag values %v, want jason once and the default otherwise", users)
	}

	// Metrics: the Istio counter through the Prometheus bridge, and the
	// semantic-convention histogram.
	waitFor(t, 10*time.Second, "metrics in the collector", func() error {
		var reqs float64
		var hist uint64
		for _, p := range col.Metrics(t) {
			switch {
			case p.Name == "istio_requests_total" && p.Attributes["response_code"] == "200":
				reqs = p.Value
			case p.Name == "http.server.request.duration" && p.Attributes["http.route"] == defaultRoute(reviews).GetName():
				hist = p.Count
			}
		}
		if reqs != n || hist != n {
			return errorf("istio_requests_total %v, http.server.request.duration count %d; want %d", reqs, hist, n)
		}
		return nil
	})

	// Sampling 100 -> 0 by a delta: same provider, no new root spans.
	before := tel.Provider()
	if err := tel.Handle(telemetryDelta(t, telemetryFor(t, col.GRPCAddr, 0))); err != nil {
		t.Fatal(err)
	}
	if tel.Provider() != before {
		t.Error("a sampling change rebuilt the provider")
	}
	for range n {
		get(t, c, "http://10.0.0.1/productpage", nil)
		get(t, c, "http://10.0.0.1/productpage", map[string]string{"traceparent": "00-" + traceID + "-" + clientSpan + "-00"})
	}
	if err := tel.Provider().ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(col.Spans(t)); got != n {
		t.Errorf("%d spans after sampling 0 %%, want still %d", got, n)
	}
	if st := tel.Provider().SpanStats(); st.Enqueued != n {
		t.Errorf("span stats %+v, want %d enqueued", st, n)
	}
	mu.Lock()
	last := seen[len(seen)-1]
	mu.Unlock()
	if !validTraceparent(last) || last[3:35] != traceID || last[36:52] == clientSpan || last[53:] != "00" {
		t.Errorf("unsampled request: backend saw %q, want the trace with a new span, unsampled", last)
	}

	// A bad resource is NACKed and the last good one stays.
	bad := telemetryFor(t, col.GRPCAddr, 150)
	if err := tel.Handle(telemetryDelta(t, bad)); err == nil {
		t.Error("sampling 150 accepted")
	}
	if tel.Provider() != before || tel.Provider().SamplingPercent() != 0 {
		t.Errorf("after a NACK: sampling %v, want the last good 0", tel.Provider().SamplingPercent())
	}
	if got := testutil.CollectAndCount(tel.Collector()); got != 5 {
		t.Errorf("telemetry collector: %d metrics, want the 5 otel_export_* ones", got)
	}
}

// TestTelemetryCollectorDown: with the collector gone, requests keep
// flowing at full speed, the export queue stays within its bound (spans
// are dropped and counted), and the heap does not grow from one round of
// load to the next.
func TestTelemetryCollectorDown(t *testing.T) {
	col := otelcoltest.Start(t)
	const queue = 128
	var tel *Telemetry
	build := newTestTelemetry(t, queue)
	m := newMesh(t, meshOptions{telemetry: func(reg *prometheus.Registry) *Telemetry { tel = build(reg); return tel }})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-a", reviews, text("ok"))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	if err := tel.Set(t.Context(), telemetryFor(t, col.GRPCAddr, 100)); err != nil {
		t.Fatal(err)
	}
	col.Stop()
	c := m.httpClient(false)
	round := func() {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 250 {
					code, _, _, err := tryGet(t, c, "http://10.0.0.1/", nil)
					if err != nil || code != http.StatusOK {
						t.Errorf("request with the collector down: %d %v", code, err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	round()
	h1 := heap()
	for range 3 {
		round()
		if st := tel.Provider().SpanStats(); st.Queued > queue {
			t.Fatalf("export queue holds %d spans, bound %d", st.Queued, queue)
		}
	}
	h2 := heap()
	st := tel.Provider().SpanStats()
	t.Logf("8000 requests, collector down: %+v; heap %d -> %d KiB", st, h1>>10, h2>>10)
	if st.Dropped == 0 {
		t.Errorf("span stats %+v: want drops with the collector down", st)
	}
	if h2 > h1+16<<20 {
		t.Errorf("heap grew from %d to %d KiB over 6000 requests with the collector down", h1>>10, h2>>10)
	}
}

// BenchmarkWaypointTracing measures sequential 1 KB HTTP/1.1 GETs through
// the waypoint with tracing off (no Telemetry), at 1 % and at 100 %,
// exporting to the real collector: the in-process counterpart of
// make bench-telemetry.
//
//	go test -run '^$' -bench WaypointTracing -benchmem ./pkg/waypoint/
func BenchmarkWaypointTracing(b *testing.B) {
	for _, mode := range []struct {
		name    string
		percent float64 // < 0: no Telemetry
	}{{"off", -1}, {"trace1", 1}, {"trace100", 100}} {
		b.Run(mode.name, func(b *testing.B) {
			var opts meshOptions
			var tel *Telemetry
			if mode.percent >= 0 {
				col := otelcoltest.Start(b)
				build := newTestTelemetry(b, 0)
				opts.telemetry = func(reg *prometheus.Registry) *Telemetry {
					tel = build(reg)
					if err := tel.Set(b.Context(), telemetryFor(b, col.GRPCAddr, mode.percent)); err != nil {
						b.Fatal(err)
					}
					return tel
				}
			}
			m := newMesh(b, opts)
			m.addService(reviews, "10.0.0.1")
			payload := make([]byte, 1024)
			m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(payload) }))
			m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
			c := m.httpClient(false)
			for range 100 {
				get(b, c, "http://10.0.0.1/", nil)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if code, _, _ := get(b, c, "http://10.0.0.1/", nil); code != http.StatusOK {
					b.Fatalf("status %d", code)
				}
			}
			b.StopTimer()
			if tel != nil {
				st := tel.Provider().SpanStats()
				b.ReportMetric(float64(st.Enqueued)/float64(b.N+100), "spans/op")
			}
		})
	}
}

// telemetryOnlyMesh is a waypoint with a Telemetry that exports nothing
// (accessLog: its ACCESS_LOG default) in front of one empty-answering pod
// of reviews at 10.0.0.1.
func telemetryOnlyMesh(t *testing.T, accessLog bool) (*mesh, *Telemetry) {
	var tel *Telemetry
	m := newMesh(t, meshOptions{telemetry: func(*prometheus.Registry) *Telemetry {
		var err error
		tel, err = NewTelemetry(t.Context(), TelemetryConfig{Name: waypointName, Base: otel.DefaultConfig(), AccessLog: accessLog,
			Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
		if err != nil {
			t.Fatal(err)
		}
		return tel
	}})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	return m, tel
}

// TestAccessLogSwitch: the access log follows the Telemetry resource's
// access_logging (istiod-lite's compilation of Istio's accessLogFile,
// defaultProviders.accessLogging and Telemetry accessLogging), and the
// waypoint's own default (ACCESS_LOG) while no resource says, without a
// request failing or the proxy restarting.
func TestAccessLogSwitch(t *testing.T) {
	m, tel := telemetryOnlyMesh(t, true)
	c := m.httpClient(false)
	ns, name, _ := strings.Cut(waypointName, "/")
	send := func(n int, want int) {
		t.Helper()
		for i := range n {
			if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code != http.StatusOK {
				t.Fatalf("request %d: status %d", i, code)
			}
		}
		// A line is written just after its answer: wait for the count,
		// then make sure no late one follows.
		lines := func() int { return m.access.FilterMessage("request complete").Len() }
		for deadline := time.Now().Add(2 * time.Second); lines() < want && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		if got := lines(); got != want {
			t.Fatalf("%d access-log lines, want %d", got, want)
		}
	}
	send(2, 2) // no resource yet: the waypoint's default (on)
	if err := tel.Handle(telemetryDelta(t, &waypointv1alpha1.Telemetry{Namespace: ns, Name: name,
		AccessLogging: &waypointv1alpha1.AccessLogging{Enabled: false}})); err != nil {
		t.Fatal(err)
	}
	send(3, 2)
	if err := tel.Handle(telemetryDelta(t, &waypointv1alpha1.Telemetry{Namespace: ns, Name: name,
		AccessLogging: &waypointv1alpha1.AccessLogging{Enabled: true}})); err != nil {
		t.Fatal(err)
	}
	send(1, 3)
	if err := tel.Handle(telemetryDelta(t, &waypointv1alpha1.Telemetry{Namespace: ns, Name: name})); err != nil {
		t.Fatal(err)
	}
	send(1, 4) // a resource that does not say: the default again
}

// TestMetricOverridesApplied: Telemetry metrics overrides (istiod-lite's
// compilation of Istio's Telemetry metrics) change the request metrics at
// run time: a disabled metric stops counting, a removed label is reported
// empty (absent, for Prometheus), a bad override is refused naming the
// field and the last good ones stay, and no override restores the full
// label set.
func TestMetricOverridesApplied(t *testing.T) {
	m, tel := telemetryOnlyMesh(t, false)
	c := m.httpClient(false)
	ns, name, _ := strings.Cut(waypointName, "/")
	caller := m.caller.ID.String()
	// counts: istio_requests_total by source_principal, and the number of
	// istio_request_duration_milliseconds observations.
	counts := func() (map[string]float64, uint64) {
		mfs, err := m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		byPrincipal, observed := map[string]float64{}, uint64(0)
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				principal := "(none)"
				for _, l := range mt.GetLabel() {
					if l.GetName() == "source_principal" {
						principal = l.GetValue()
					}
				}
				switch mf.GetName() {
				case "istio_requests_total":
					byPrincipal[principal] += mt.GetCounter().GetValue()
				case "istio_request_duration_milliseconds":
					observed += mt.GetHistogram().GetSampleCount()
				}
			}
		}
		return byPrincipal, observed
	}
	send := func(n int, wantCaller, wantBlank float64, wantObserved uint64) {
		t.Helper()
		for i := range n {
			if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code != http.StatusOK {
				t.Fatalf("request %d: status %d", i, code)
			}
		}
		// Metrics are recorded just after the answer.
		var byPrincipal map[string]float64
		var observed uint64
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			byPrincipal, observed = counts()
			if byPrincipal[caller] == wantCaller && byPrincipal[""] == wantBlank && observed == wantObserved || time.Now().After(deadline) {
				break
			}
		}
		if byPrincipal[caller] != wantCaller || byPrincipal[""] != wantBlank || observed != wantObserved {
			t.Fatalf("istio_requests_total by source_principal %v, durations observed %d; want %v from %s, %v blank, %d observed",
				byPrincipal, observed, wantCaller, caller, wantBlank, wantObserved)
		}
	}
	send(2, 2, 0, 2)
	overrides := &waypointv1alpha1.Telemetry{Namespace: ns, Name: name, MetricOverrides: []*waypointv1alpha1.MetricOverride{
		{Metric: "REQUEST_COUNT", RemovedLabels: []string{"source_principal"}},
		{Metric: "REQUEST_DURATION", Disabled: true},
	}}
	if err := tel.Handle(telemetryDelta(t, overrides)); err != nil {
		t.Fatal(err)
	}
	// The same overrides again (say, with a tracing change): the compiled
	// ones are kept, so the cached series stay in use.
	first := tel.state().metricOverrides()
	if err := tel.Handle(telemetryDelta(t, overrides)); err != nil {
		t.Fatal(err)
	}
	if tel.state().metricOverrides() != first {
		t.Error("unchanged metric overrides were compiled anew")
	}
	send(3, 2, 3, 2)
	bad := &waypointv1alpha1.Telemetry{Namespace: ns, Name: name, MetricOverrides: []*waypointv1alpha1.MetricOverride{{Metric: "REQUEST_BYTES", Disabled: true}}}
	if err := tel.Handle(telemetryDelta(t, bad)); err == nil || !strings.Contains(err.Error(), "metric_overrides[0].metric") {
		t.Fatalf("a bad metric name: %v, want an error naming metric_overrides[0].metric", err)
	}
	send(1, 2, 4, 2) // the last good overrides stay
	if err := tel.Handle(telemetryDelta(t, &waypointv1alpha1.Telemetry{Namespace: ns, Name: name})); err != nil {
		t.Fatal(err)
	}
	send(1, 3, 4, 3)
}
