package otel

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambient-mesh/mesh/internal/otelcoltest"
)

// These tests export to the real collector build (hack/tools/otelcol) running
// on loopback, and read back what its file exporter wrote.

func collectorConfig(t *testing.T, col *otelcoltest.Collector, proto Protocol, service string, extra map[string]string) Config {
	t.Helper()
	addr := col.HTTPAddr
	if proto == ProtocolGRPC {
		addr = col.GRPCAddr
	}
	env := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + addr,
		"OTEL_EXPORTER_OTLP_PROTOCOL": string(proto),
		"OTEL_SERVICE_NAME":           service,
		"OTEL_RESOURCE_ATTRIBUTES":    "k8s.namespace.name=demo",
		"OTEL_BSP_SCHEDULE_DELAY":     "100",
		"OTEL_METRIC_EXPORT_INTERVAL": "200",
		"OTEL_EXPORTER_OTLP_TIMEOUT":  "5000",
	}
	for k, v := range extra {
		env[k] = v
	}
	cfg, err := ConfigFromEnv(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func spansOf(col *otelcoltest.Collector, t *testing.T, service string) func() []otelcoltest.Span {
	return func() []otelcoltest.Span {
		var out []otelcoltest.Span
		for _, s := range col.Spans(t) {
			if s.Resource["service.name"] == service {
				out = append(out, s)
			}
		}
		return out
	}
}

func TestExportToCollector(t *testing.T) {
	col := otelcoltest.Start(t)
	for _, proto := range []Protocol{ProtocolGRPC, ProtocolHTTP} {
		t.Run(string(proto), func(t *testing.T) {
			service := "waypoint-" + string(proto)
			cfg := collectorConfig(t, col, proto, service, nil)

			// An Istio metric defined once, in the proxy's Prometheus registry.
			reg := prometheus.NewRegistry()
			requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "requests"},
				[]string{"reporter", "destination_workload", "response_code"})
			reg.MustRegister(requests)
			requests.WithLabelValues("waypoint", "reviews-v1", "200").Add(3)

			p, err := New(t.Context(), cfg, WithPrometheusGatherer(reg),
				WithResourceAttributes(attribute.String("k8s.pod.name", "waypoint-0")))
			if err != nil {
				t.Fatal(err)
			}
			hm, err := NewHTTPServerMetrics(p.MeterProvider())
			if err != nil {
				t.Fatal(err)
			}

			// A request arriving with a traceparent: the waypoint's server
			// span is its child, and the upstream call a child of that.
			const remoteTrace, remoteSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
			ctx := p.Propagator().Extract(t.Context(), mapCarrier{"traceparent": "00-" + remoteTrace + "-" + remoteSpan + "-01"})
			tr := p.Tracer("github.com/ambient-mesh/mesh/pkg/waypoint")
			ctx, server := tr.Start(ctx, SpanName("GET", "/api/{id}"), trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(HTTPRequest{Method: "GET", Scheme: "http", Route: "/api/{id}", StatusCode: 200, ProtocolVersion: "1.1"}.Attributes()...))
			server.SetAttributes(attribute.String("istio.source_workload", "productpage-v1"))
			_, client := tr.Start(ctx, "GET", trace.WithSpanKind(trace.SpanKindClient),
				trace.WithAttributes(attribute.String("server.address", "reviews.demo.svc.cluster.local")))
			out := mapCarrier{}
			p.Propagator().Inject(trace.ContextWithSpan(ctx, client), out)
			client.End()
			server.End()
			if want := fmt.Sprintf("00-%s-%s-01", remoteTrace, client.SpanContext().SpanID()); out["traceparent"] != want {
				t.Errorf("forwarded traceparent %q, want %q", out["traceparent"], want)
			}

			hm.Record(t.Context(), 30*time.Millisecond, HTTPRequest{Method: "GET", Route: "/api/{id}", StatusCode: 200})
			hm.Record(t.Context(), 2*time.Second, HTTPRequest{Method: "GET", Route: "/api/{id}", StatusCode: 200})

			sctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := p.Shutdown(sctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}

			wctx, wcancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer wcancel()
			spans := otelcoltest.WaitFor(wctx, t, "2 spans", spansOf(col, t, service),
				func(s []otelcoltest.Span) bool { return len(s) >= 2 })
			byName := map[string]otelcoltest.Span{}
			for _, s := range spans {
				byName[s.Name] = s
			}
			srv, cli := byName["GET /api/{id}"], byName["GET"]
			if srv.TraceID != remoteTrace || cli.TraceID != remoteTrace {
				t.Errorf("trace IDs %q, %q; want the incoming %q", srv.TraceID, cli.TraceID, remoteTrace)
			}
			if srv.ParentSpanID != remoteSpan {
				t.Errorf("server span's parent %q, want the incoming %q", srv.ParentSpanID, remoteSpan)
			}
			if cli.ParentSpanID != srv.SpanID || srv.SpanID == "" {
				t.Errorf("client span's parent %q, want the server span %q", cli.ParentSpanID, srv.SpanID)
			}
			wantAttrs := map[string]string{
				"http.request.method": "GET", "url.scheme": "http", "http.route": "/api/{id}",
				"http.response.status_code": "200", "network.protocol.version": "1.1",
				"istio.source_workload": "productpage-v1",
			}
			for k, v := range wantAttrs {
				if srv.Attributes[k] != v {
					t.Errorf("server span attribute %s = %q, want %q (all: %v)", k, srv.Attributes[k], v, srv.Attributes)
				}
			}
			if srv.Kind != 2 || cli.Kind != 3 {
				t.Errorf("span kinds %d/%d, want server(2)/client(3)", srv.Kind, cli.Kind)
			}
			for k, v := range map[string]string{"service.name": service, "k8s.namespace.name": "demo", "k8s.pod.name": "waypoint-0"} {
				if srv.Resource[k] != v {
					t.Errorf("resource %s = %q, want %q", k, srv.Resource[k], v)
				}
			}

			metricsOf := func() map[string]otelcoltest.MetricPoint {
				last := map[string]otelcoltest.MetricPoint{}
				for _, m := range col.Metrics(t) {
					if m.Resource["service.name"] == service {
						last[m.Name] = m // cumulative: the last point is the total
					}
				}
				return last
			}
			ms := otelcoltest.WaitFor(wctx, t, "both metrics", metricsOf, func(m map[string]otelcoltest.MetricPoint) bool {
				return m["http.server.request.duration"].Count == 2 && m["istio_requests_total"].Value == 3
			})
			d := ms["http.server.request.duration"]
			if d.Type != "histogram" || d.Unit != "s" || !reflect.DeepEqual(d.Bounds, HTTPDurationBuckets) {
				t.Errorf("http.server.request.duration: type %s unit %q bounds %v", d.Type, d.Unit, d.Bounds)
			}
			if d.Sum < 2.03-1e-9 || d.Sum > 2.03+1e-9 {
				t.Errorf("http.server.request.duration sum %v, want 2.03", d.Sum)
			}
			if d.Attributes["http.route"] != "/api/{id}" || d.Attributes["http.response.status_code"] != "200" {
				t.Errorf("http.server.request.duration attributes %v", d.Attributes)
			}
			r := ms["istio_requests_total"]
			if r.Type != "sum" || r.Attributes["reporter"] != "waypoint" || r.Attributes["destination_workload"] != "reviews-v1" {
				t.Errorf("istio_requests_total: type %s attributes %v", r.Type, r.Attributes)
			}
		})
	}
}

func TestSamplingChangeStopsSpans(t *testing.T) {
	col := otelcoltest.Start(t)
	const service = "waypoint-sampling"
	p, err := New(t.Context(), collectorConfig(t, col, ProtocolGRPC, service, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	}()
	tr := p.Tracer("test")
	emit := func(name string) {
		for range 20 {
			_, s := tr.Start(t.Context(), name)
			s.End()
		}
		if err := p.ForceFlush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	count := func(spans []otelcoltest.Span, name string) int {
		n := 0
		for _, s := range spans {
			if s.Name == name {
				n++
			}
		}
		return n
	}
	wctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	emit("at-100")
	p.SetSamplingPercent(0)
	emit("at-0")
	p.SetSamplingPercent(100)
	emit("back-at-100")
	spans := otelcoltest.WaitFor(wctx, t, "spans after sampling went back to 100%", spansOf(col, t, service),
		func(s []otelcoltest.Span) bool { return count(s, "back-at-100") == 20 })
	if got := count(spans, "at-100"); got != 20 {
		t.Errorf("%d spans at 100%%, want 20", got)
	}
	if got := count(spans, "at-0"); got != 0 {
		t.Errorf("%d spans at 0%%, want none", got)
	}
}

func TestCollectorDownBoundedQueue(t *testing.T) {
	col := otelcoltest.Start(t)
	const service = "waypoint-down"
	const queue, batch = 512, 128
	cfg := collectorConfig(t, col, ProtocolGRPC, service, map[string]string{
		"OTEL_BSP_MAX_QUEUE_SIZE":        strconv.Itoa(queue),
		"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": strconv.Itoa(batch),
		"OTEL_BSP_SCHEDULE_DELAY":        "50",
		"OTEL_EXPORTER_OTLP_TIMEOUT":     "500",
	})
	p, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr := p.Tracer("test")
	span := func(i int) {
		_, s := tr.Start(t.Context(), "GET /api/{id}", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
			attribute.String("http.request.method", "GET"), attribute.String("http.route", "/api/{id}"),
			attribute.Int("http.response.status_code", 200), attribute.Int("i", i),
			attribute.String("istio.destination_workload", "reviews-v1")))
		s.End()
	}

	// The collector is up: spans arrive.
	for i := range 100 {
		span(i)
	}
	if err := p.ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	otelcoltest.WaitFor(wctx, t, "100 spans", spansOf(col, t, service), func(s []otelcoltest.Span) bool { return len(s) == 100 })

	// The collector goes down: ending spans never blocks, the queue stays
	// bounded, the rest are dropped and counted, and memory stays flat.
	col.Stop()
	before := p.SpanStats()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	const n = 20000
	start := time.Now()
	var slowest time.Duration
	for i := range n {
		t0 := time.Now()
		span(i)
		slowest = max(slowest, time.Since(t0))
	}
	elapsed := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	after := p.SpanStats()
	growth := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	t.Logf("%d spans in %v (slowest %v) with the collector down; heap %+d KiB; stats %+v", n, elapsed, slowest, growth/1024, after)

	if elapsed > 5*time.Second {
		t.Errorf("%d spans took %v with the collector down: ending a span blocks", n, elapsed)
	}
	if slowest > 500*time.Millisecond {
		t.Errorf("slowest span end took %v: it waited for the exporter", slowest)
	}
	accepted, dropped := after.Enqueued-before.Enqueued, after.Dropped-before.Dropped
	if accepted+dropped != n {
		t.Errorf("accepted %d + dropped %d != %d", accepted, dropped, n)
	}
	if after.Queued > queue {
		t.Errorf("queue holds %d spans, bound is %d", after.Queued, queue)
	}
	if dropped < n/2 {
		t.Errorf("dropped %d of %d spans with the collector down, want most (queue %d)", dropped, n, queue)
	}
	if growth > 16<<20 {
		t.Errorf("heap grew by %d MiB over %d spans with the collector down; the queue is not bounded", growth>>20, n)
	}

	// Shutdown gives up at its deadline.
	sctx, scancel := context.WithTimeout(t.Context(), time.Second)
	defer scancel()
	t0 := time.Now()
	_ = p.Shutdown(sctx)
	if el := time.Since(t0); el > 3*time.Second {
		t.Errorf("Shutdown took %v with a 1s deadline and the collector down", el)
	}
}
