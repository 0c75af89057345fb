package otel

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"
)

// fakeExporter records exported spans; while blocked is set, ExportSpans
// waits for its context, like an exporter whose collector does not answer.
type fakeExporter struct {
	mu       sync.Mutex
	names    []string
	blocked  atomic.Bool
	shutdown atomic.Bool
}

func (f *fakeExporter) ExportSpans(ctx context.Context, spans []trace.ReadOnlySpan) error {
	if f.blocked.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range spans {
		f.names = append(f.names, s.Name())
	}
	return nil
}

func (f *fakeExporter) Shutdown(context.Context) error { f.shutdown.Store(true); return nil }

func (f *fakeExporter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.names)
}

func newTestProvider(t *testing.T, exp trace.SpanExporter, queue, batch int, timeout time.Duration) *Provider {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Enabled = true
	cfg.TracesEndpoint, cfg.MetricsEndpoint = "http://127.0.0.1:1/v1/traces", "http://127.0.0.1:1/v1/metrics"
	cfg.MaxQueueSize, cfg.MaxExportBatch = queue, batch
	cfg.ScheduleDelay = 50 * time.Millisecond
	cfg.Timeout = timeout
	cfg.MetricInterval = time.Hour
	p, err := New(t.Context(), cfg, WithSpanExporter(exp), WithMetricExporter(nopMetricExporter{}))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBatcherExportsAndFlushes(t *testing.T) {
	defer goleak.VerifyNone(t)
	exp := &fakeExporter{}
	p := newTestProvider(t, exp, 100, 10, time.Second)
	tr := p.Tracer("test")
	for range 25 {
		_, s := tr.Start(t.Context(), "op")
		s.End()
	}
	if err := p.ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := exp.count(); got != 25 {
		t.Errorf("exported %d spans, want 25", got)
	}
	st := p.SpanStats()
	if st.Enqueued != 25 || st.Exported != 25 || st.Dropped != 0 || st.Queued != 0 {
		t.Errorf("got stats %+v, want 25 enqueued and exported", st)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !exp.shutdown.Load() {
		t.Error("exporter not shut down")
	}
	_, s := tr.Start(t.Context(), "late")
	s.End() // after shutdown: not exported, no panic
}

func TestBatcherBoundedWhenExporterStalls(t *testing.T) {
	defer goleak.VerifyNone(t)
	exp := &fakeExporter{}
	exp.blocked.Store(true)
	const queue, batch, n = 64, 16, 5000
	p := newTestProvider(t, exp, queue, batch, 200*time.Millisecond)
	tr := p.Tracer("test")
	start := time.Now()
	var slowest time.Duration
	for range n {
		t0 := time.Now()
		_, s := tr.Start(t.Context(), "op")
		s.End()
		slowest = max(slowest, time.Since(t0))
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("%d spans took %v with the exporter stalled: span end blocks", n, el)
	}
	st := p.SpanStats()
	if st.Enqueued+st.Dropped != n {
		t.Errorf("enqueued %d + dropped %d != %d", st.Enqueued, st.Dropped, n)
	}
	if st.Enqueued > queue+batch+queue { // a few exports may drain the queue meanwhile
		t.Errorf("enqueued %d spans with a stalled exporter, want about %d at most", st.Enqueued, queue+batch)
	}
	t.Logf("stats %+v, slowest span %v", st, slowest)

	// Shutdown honors its deadline even though the exporter never answers.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := p.Shutdown(ctx)
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("Shutdown took %v with a 300ms deadline", el)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	// Let the worker finish its last (timed-out) export before goleak looks.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.batcher.done:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Error("batcher goroutine still running 5s after shutdown")
}

func TestSetSamplingPercent(t *testing.T) {
	exp := &fakeExporter{}
	p := newTestProvider(t, exp, 1000, 100, time.Second)
	defer p.Shutdown(context.Background())
	tr := p.Tracer("test")
	run := func(n int) int {
		before := exp.count()
		for range n {
			_, s := tr.Start(t.Context(), "op")
			s.End()
		}
		if err := p.ForceFlush(t.Context()); err != nil {
			t.Fatal(err)
		}
		return exp.count() - before
	}
	if got := run(100); got != 100 {
		t.Errorf("at 100%%: %d of 100 sampled", got)
	}
	p.SetSamplingPercent(0)
	if got := run(100); got != 0 {
		t.Errorf("at 0%%: %d of 100 sampled", got)
	}
	p.SetSamplingPercent(50)
	if got := run(1000); got < 350 || got > 650 {
		t.Errorf("at 50%%: %d of 1000 sampled", got)
	}
	p.SetSamplingPercent(250)
	if got := p.SamplingPercent(); got != 100 {
		t.Errorf("SamplingPercent after setting 250 = %v, want 100 (clamped)", got)
	}
}

func TestDisabledProviderPropagates(t *testing.T) {
	p, err := New(t.Context(), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled() {
		t.Fatal("enabled without an endpoint")
	}
	carrier := mapCarrier{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	ctx := p.Propagator().Extract(t.Context(), carrier)
	ctx, span := p.Tracer("t").Start(ctx, "op")
	span.End()
	out := mapCarrier{}
	p.Propagator().Inject(ctx, out)
	if out["traceparent"] != carrier["traceparent"] {
		t.Errorf("disabled provider forwards traceparent %q, want %q", out["traceparent"], carrier["traceparent"])
	}
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// nopMetricExporter discards metrics.
type nopMetricExporter struct{}

func (nopMetricExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (nopMetricExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}
func (nopMetricExporter) Export(context.Context, *metricdata.ResourceMetrics) error { return nil }
func (nopMetricExporter) ForceFlush(context.Context) error                          { return nil }
func (nopMetricExporter) Shutdown(context.Context) error                            { return nil }

type mapCarrier map[string]string

func (m mapCarrier) Get(k string) string { return m[k] }
func (m mapCarrier) Set(k, v string)     { m[k] = v }
func (m mapCarrier) Keys() []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
