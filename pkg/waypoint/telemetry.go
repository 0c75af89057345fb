package waypoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/otel"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// TelemetryTypeURL is the xDS type of the waypoint's telemetry configuration
// (tracing, access log, metric overrides):
// one ambientmesh.waypoint.v1alpha1.Telemetry per waypoint Gateway, named
// "<namespace>/<gateway>".
const TelemetryTypeURL = "type.googleapis.com/ambientmesh.waypoint.v1alpha1.Telemetry"

// TelemetryConfig configures a Telemetry.
type TelemetryConfig struct {
	// Name is the waypoint's "<namespace>/<gateway>": the only Telemetry
	// resource applied (others on a wildcard subscription are ignored).
	Name string
	// Base is the export configuration from the OTEL_* variables
	// (otel.ConfigFromEnv). It applies while no Telemetry resource names a
	// provider; a provider overlays its transport on it (ApplyProvider).
	Base otel.Config
	// Options are passed to every otel.New (the Prometheus gatherer whose
	// istio_* metrics are exported over OTLP, resource attributes).
	Options []otel.Option
	// LookupEnv resolves customTags of type environment. Nil: os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ShutdownTimeout bounds the flush of a replaced provider. Zero: 5 s.
	ShutdownTimeout time.Duration
	// AccessLog is whether the access log is written while no Telemetry
	// resource says (the waypoint's ACCESS_LOG setting).
	AccessLog bool
	Logger    *zap.Logger
}

// Telemetry is the waypoint's OTLP export: the current otel.Provider, the
// sampling percentage and the custom tags, driven by the Telemetry xDS
// resource (Handle). A nil *Telemetry traces nothing; traceparent is still
// propagated with a new span id per hop.
//
// Concurrency: mu serialises Handle and Close; each change publishes an
// immutable telemetryState through cur, which requests load without
// locking and keep for their whole life. A replaced provider is shut down
// in the background (bounded by ShutdownTimeout), so requests never wait
// for a collector; spans that end on it after that are dropped and
// counted.
type Telemetry struct {
	cfg TelemetryConfig
	log *zap.Logger

	mu       sync.Mutex
	last     *waypointv1alpha1.Telemetry // last applied resource, nil when none
	closed   bool
	retiring sync.WaitGroup // shutdowns of replaced providers

	cur atomic.Pointer[telemetryState]
}

// telemetryState is one immutable configuration of the export.
type telemetryState struct {
	provider *otel.Provider
	key      string // the provider's identity: "" for Base, else the marshalled provider
	tracer   trace.Tracer
	metrics  *otel.HTTPServerMetrics // nil when export is off
	spans    bool                    // start spans (export on, tracing not disabled)
	tags     []customTag
	// accessLog: write the access log (the resource's access_logging, or
	// TelemetryConfig.AccessLog without one).
	accessLog bool
	// overrides are the resource's metric_overrides (src) compiled; nil:
	// none. Kept across applies while src is the same: request metrics
	// cache their series per overrides.
	overrides *telemetry.Overrides
	src       []*waypointv1alpha1.MetricOverride
}

// customTag is a compiled Telemetry customTag: a literal or environment
// value (resolved at apply time) or a request header.
type customTag struct {
	name   string
	value  string // literal, environment, or the header's default
	header string // canonical header name; "" for literal and environment
}

// NewTelemetry builds the Base provider (export off unless the OTEL_*
// variables enabled it).
func NewTelemetry(ctx context.Context, cfg TelemetryConfig) (*Telemetry, error) {
	if cfg.LookupEnv == nil {
		cfg.LookupEnv = os.LookupEnv
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	t := &Telemetry{cfg: cfg, log: cfg.Logger.Named("telemetry")}
	st, err := t.build(ctx, nil, nil)
	if err != nil {
		return nil, err
	}
	t.cur.Store(st)
	return t, nil
}

func (t *Telemetry) state() *telemetryState {
	if t == nil {
		return nil
	}
	return t.cur.Load()
}

// accessLogOn tells whether st has the access log written; a nil state (no
// Telemetry) leaves it to the Proxy's AccessLog logger alone.
func (st *telemetryState) accessLogOn() bool {
	return st == nil || st.accessLog
}

// metricOverrides are st's metrics overrides (nil: none, or no Telemetry).
func (st *telemetryState) metricOverrides() *telemetry.Overrides {
	if st == nil {
		return nil
	}
	return st.overrides
}

// compileOverrides turns validated metric_overrides into lookups; nil for
// none.
func compileOverrides(in []*waypointv1alpha1.MetricOverride) *telemetry.Overrides {
	if len(in) == 0 {
		return nil
	}
	o := &telemetry.Overrides{Disabled: map[string]bool{}, Removed: map[string]map[string]bool{}}
	for _, mo := range in {
		o.Disabled[mo.GetMetric()] = mo.GetDisabled()
		if len(mo.GetRemovedLabels()) > 0 {
			rm := map[string]bool{}
			for _, l := range mo.GetRemovedLabels() {
				rm[l] = true
			}
			o.Removed[mo.GetMetric()] = rm
		}
	}
	return o
}

// TelemetryDump is what the admin config dump shows of the telemetry: the
// last applied resource (nil: none yet) and the settings in force.
type TelemetryDump struct {
	Resource        *waypointv1alpha1.Telemetry
	AccessLog       bool
	Spans           bool
	SamplingPercent float64
	MetricOverrides []*waypointv1alpha1.MetricOverride
}

// Dump returns the telemetry's current configuration.
func (t *Telemetry) Dump() TelemetryDump {
	t.mu.Lock()
	last := t.last
	t.mu.Unlock()
	st := t.cur.Load()
	return TelemetryDump{Resource: last, AccessLog: st.accessLog, Spans: st.spans,
		SamplingPercent: st.provider.SamplingPercent(), MetricOverrides: st.src}
}

// Provider returns the current provider (tests, benchmarks).
func (t *Telemetry) Provider() *otel.Provider { return t.cur.Load().provider }

// Handle applies a delta of Telemetry resources (an xdsclient.Handler). A
// resource that does not decode, fails validation or whose provider cannot
// be built is NACKed and the last good configuration stays.
func (t *Telemetry) Handle(d xdsclient.Delta) error {
	if d.TypeURL != TelemetryTypeURL {
		return fmt.Errorf("unexpected type %s", d.TypeURL)
	}
	var (
		next    *waypointv1alpha1.Telemetry
		changed bool
		errs    []error
	)
	for _, name := range d.Removed {
		if name == t.cfg.Name {
			next, changed = nil, true
		}
	}
	for i := range d.Updated {
		res := &d.Updated[i]
		if res.Name != t.cfg.Name {
			continue
		}
		tel := &waypointv1alpha1.Telemetry{}
		if err := res.UnmarshalTo(tel); err != nil {
			errs = append(errs, telemetryError(t.cfg.Name, "resource", "cannot decode as ambientmesh.waypoint.v1alpha1.Telemetry: %v", err))
			continue
		}
		if err := validateTelemetry(t.cfg.Name, tel); err != nil {
			errs = append(errs, err)
			continue
		}
		next, changed = tel, true
	}
	if changed {
		if err := t.apply(context.Background(), next); err != nil {
			errs = append(errs, telemetryError(t.cfg.Name, "tracing.provider", "%v", err))
		}
	}
	return errors.Join(errs...)
}

// Set applies tel (nil: no resource) directly (in-process use and tests).
func (t *Telemetry) Set(ctx context.Context, tel *waypointv1alpha1.Telemetry) error {
	if tel != nil {
		if err := validateTelemetry(t.cfg.Name, tel); err != nil {
			return err
		}
	}
	return t.apply(ctx, tel)
}

func validateTelemetry(name string, tel *waypointv1alpha1.Telemetry) error {
	seen := map[string]bool{}
	for i, mo := range tel.GetMetricOverrides() {
		if !slices.Contains(telemetry.MetricNames, mo.GetMetric()) {
			return telemetryError(name, fmt.Sprintf("metric_overrides[%d].metric", i), "%q is not one of %v", mo.GetMetric(), telemetry.MetricNames)
		}
		if seen[mo.GetMetric()] {
			return telemetryError(name, fmt.Sprintf("metric_overrides[%d].metric", i), "%s overridden twice", mo.GetMetric())
		}
		seen[mo.GetMetric()] = true
	}
	tr := tel.GetTracing()
	if tr == nil {
		return nil
	}
	if s := tr.GetRandomSamplingPercentage(); s < 0 || s > 100 || s != s {
		return telemetryError(name, "tracing.random_sampling_percentage", "%v not in [0, 100]", s)
	}
	if p := tr.GetProvider(); p != nil && (p.GetService() == "" || p.GetPort() == 0 || p.GetPort() > 65535) {
		return telemetryError(name, "tracing.provider", "service and port 1-65535 are required, got %q:%d", p.GetService(), p.GetPort())
	}
	for i, ct := range tr.GetCustomTags() {
		if ct.GetName() == "" {
			return telemetryError(name, fmt.Sprintf("tracing.custom_tags[%d].name", i), "empty")
		}
		if ct.GetType() == nil {
			return telemetryError(name, fmt.Sprintf("tracing.custom_tags[%d]", i), "no literal, environment or header")
		}
	}
	return nil
}

// apply makes tel current: the provider is rebuilt only when it changes;
// sampling and tags change in place.
func (t *Telemetry) apply(ctx context.Context, tel *waypointv1alpha1.Telemetry) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("telemetry closed")
	}
	old := t.cur.Load()
	st, err := t.build(ctx, tel, old)
	if err != nil {
		return err
	}
	t.last = tel
	t.cur.Store(st)
	if st.provider != old.provider {
		t.retire(old.provider)
	}
	t.log.Info("telemetry applied", zap.Bool("export", st.provider.Enabled()), zap.Bool("spans", st.spans), zap.Bool("access_log", st.accessLog), zap.Int("metric_overrides", len(st.src)),
		zap.Float64("sampling_percent", st.provider.SamplingPercent()), zap.Int("custom_tags", len(st.tags)))
	return nil
}

// build compiles tel into a state, reusing old's provider when the
// provider is the same.
func (t *Telemetry) build(ctx context.Context, tel *waypointv1alpha1.Telemetry, old *telemetryState) (*telemetryState, error) {
	tr := tel.GetTracing()
	cfg, key := t.cfg.Base, ""
	sampling := t.cfg.Base.SamplingPercent
	spans := t.cfg.Base.Enabled
	if tr != nil {
		spans = !tr.GetDisabled() && tr.GetProvider() != nil
		if pv := tr.GetProvider(); pv != nil {
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(pv)
			key = string(b)
			var err error
			if cfg, err = t.cfg.Base.ApplyProvider(providerConfig(pv)); err != nil {
				return nil, err
			}
			sampling = tr.GetRandomSamplingPercentage()
		}
	}
	st := &telemetryState{key: key, spans: spans, tags: t.compileTags(tr.GetCustomTags()), accessLog: t.cfg.AccessLog}
	if al := tel.GetAccessLogging(); al != nil {
		st.accessLog = al.GetEnabled()
	}
	st.src = tel.GetMetricOverrides()
	if old != nil && slices.EqualFunc(old.src, st.src, func(a, b *waypointv1alpha1.MetricOverride) bool { return proto.Equal(a, b) }) {
		st.overrides = old.overrides
	} else {
		st.overrides = compileOverrides(st.src)
	}
	if old != nil && old.key == key {
		st.provider, st.tracer, st.metrics = old.provider, old.tracer, old.metrics
	} else {
		cfg.SamplingPercent = sampling
		p, err := otel.New(ctx, cfg, t.cfg.Options...)
		if err != nil {
			return nil, err
		}
		st.provider = p
		st.tracer = p.Tracer("github.com/ambient-mesh/mesh/pkg/waypoint")
		if p.Enabled() {
			if st.metrics, err = otel.NewHTTPServerMetrics(p.MeterProvider()); err != nil {
				t.retire(p)
				return nil, err
			}
		}
	}
	st.provider.SetSamplingPercent(sampling)
	st.spans = st.spans && st.provider.Enabled()
	return st, nil
}

func providerConfig(pv *waypointv1alpha1.OpenTelemetryProvider) otel.OpenTelemetryProvider {
	out := otel.OpenTelemetryProvider{Name: pv.GetName(), Service: pv.GetService(), Port: pv.GetPort()}
	headers := func(hs []*waypointv1alpha1.Header) map[string]string {
		if len(hs) == 0 {
			return nil
		}
		m := make(map[string]string, len(hs))
		for _, h := range hs {
			m[h.GetName()] = h.GetValue()
		}
		return m
	}
	if h := pv.GetHttp(); h != nil {
		out.HTTP = &otel.OpenTelemetryHTTP{Path: h.GetPath(), Timeout: h.GetTimeout().AsDuration(), Headers: headers(h.GetHeaders())}
		return out
	}
	out.Timeout = pv.GetGrpc().GetTimeout().AsDuration()
	out.Headers = headers(pv.GetGrpc().GetInitialMetadata())
	return out
}

func (t *Telemetry) compileTags(in []*waypointv1alpha1.CustomTag) []customTag {
	out := make([]customTag, 0, len(in))
	for _, ct := range in {
		tag := customTag{name: ct.GetName(), value: ct.GetDefaultValue()}
		switch v := ct.GetType().(type) {
		case *waypointv1alpha1.CustomTag_Literal:
			tag.value = v.Literal
		case *waypointv1alpha1.CustomTag_Environment:
			if val, ok := t.cfg.LookupEnv(v.Environment); ok {
				tag.value = val
			}
		case *waypointv1alpha1.CustomTag_Header:
			tag.header = v.Header
		}
		out = append(out, tag)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// retire shuts p down in the background. Caller holds mu.
func (t *Telemetry) retire(p *otel.Provider) {
	t.retiring.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), t.cfg.ShutdownTimeout)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.log.Debug("shut down replaced provider", zap.Error(err))
		}
	})
}

// Close flushes and stops the current provider (on drain), bounded by ctx,
// and waits for replaced ones. Later Handle calls fail.
func (t *Telemetry) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	p := t.cur.Load().provider
	t.mu.Unlock()
	err := p.Shutdown(ctx)
	t.retiring.Wait()
	return err
}

// Collector exports the current provider's export-queue metrics
// (otel_export_*) for the waypoint's /metrics; it follows provider
// replacements. It is an unchecked collector (Describe sends nothing).
func (t *Telemetry) Collector() prometheus.Collector { return telemetryCollector{t} }

type telemetryCollector struct{ t *Telemetry }

func (telemetryCollector) Describe(chan<- *prometheus.Desc) {}

func (c telemetryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, col := range c.t.cur.Load().provider.Collectors() {
		col.Collect(ch)
	}
}

// tagAttributes are the custom tags' span attributes for one request.
func (st *telemetryState) tagAttributes(h interface{ Get(string) string }) []attribute.KeyValue {
	if len(st.tags) == 0 {
		return nil
	}
	out := make([]attribute.KeyValue, 0, len(st.tags))
	for _, tag := range st.tags {
		v := tag.value
		if tag.header != "" {
			if hv := h.Get(tag.header); hv != "" {
				v = hv
			}
		}
		out = append(out, attribute.String(tag.name, v))
	}
	return out
}

func telemetryError(name, field, why string, args ...any) error {
	return &state.ResourceError{Type: TelemetryTypeURL, Name: name, Field: field, Reason: fmt.Sprintf(why, args...)}
}
