// Package otel exports a proxy's traces and metrics over OTLP to an
// OpenTelemetry Collector, configured the way users already write it: the
// standard OTEL_* environment variables (ConfigFromEnv) or an Istio mesh
// config extensionProviders[].opentelemetry entry (ApplyProvider).
//
// A Provider holds a TracerProvider whose export queue is bounded (spans are
// dropped and counted, never waited for, when the collector is slow or down),
// a sampler whose percentage changes at run time (SetSamplingPercent, from a
// Telemetry resource), the W3C trace-context propagator, and a MeterProvider
// that exports OTLP metrics periodically: instruments of its own (such as
// http.server.request.duration, see HTTPServerMetrics) and, through the
// Prometheus bridge, every metric of the proxy's Prometheus registry, so the
// Istio metrics are defined once and served both ways.
//
// Imported by the data plane (pkg/waypoint, pkg/ztunnel); it imports no
// Kubernetes client.
package otel

import (
	"context"
	"errors"
	"fmt"
	"time"

	promclient "github.com/prometheus/client_golang/prometheus"
	prombridge "go.opentelemetry.io/contrib/bridges/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Provider is a proxy's OTLP export: traces and metrics. Its methods are safe
// for concurrent use. When the Config is not Enabled, it hands out no-op
// tracers and meters (spans still carry an incoming trace context through, so
// propagation works) and SetSamplingPercent only records the value.
type Provider struct {
	cfg     Config
	sampler *ratioSampler
	prop    propagation.TextMapPropagator

	tp      *sdktrace.TracerProvider // nil when disabled
	mp      *sdkmetric.MeterProvider // nil when disabled
	batcher *batcher                 // nil when disabled
}

type options struct {
	gatherer  promclient.Gatherer
	resource  []attribute.KeyValue
	spanExp   sdktrace.SpanExporter
	metricExp sdkmetric.Exporter
}

// Option adjusts New.
type Option func(*options)

// WithPrometheusGatherer exports every metric g gathers (the proxy's
// Prometheus registry) over OTLP too, through the Prometheus bridge.
func WithPrometheusGatherer(g promclient.Gatherer) Option {
	return func(o *options) { o.gatherer = g }
}

// WithResourceAttributes adds resource attributes (for example k8s.pod.name,
// k8s.namespace.name); OTEL_RESOURCE_ATTRIBUTES and the service name win.
func WithResourceAttributes(kv ...attribute.KeyValue) Option {
	return func(o *options) { o.resource = append(o.resource, kv...) }
}

// WithSpanExporter replaces the OTLP span exporter (tests).
func WithSpanExporter(e sdktrace.SpanExporter) Option {
	return func(o *options) { o.spanExp = e }
}

// WithMetricExporter replaces the OTLP metric exporter (tests).
func WithMetricExporter(e sdkmetric.Exporter) Option {
	return func(o *options) { o.metricExp = e }
}

// New builds the Provider for cfg. It does not connect: exporters dial
// lazily, and a collector that is down only costs dropped spans.
func New(ctx context.Context, cfg Config, opts ...Option) (*Provider, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	p := &Provider{
		cfg:     cfg,
		sampler: newRatioSampler(cfg.SamplingPercent),
		prop:    propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}
	if !cfg.Enabled {
		return p, nil
	}
	def := DefaultConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.MaxQueueSize <= 0 {
		cfg.MaxQueueSize = def.MaxQueueSize
	}
	if cfg.MaxExportBatch <= 0 {
		cfg.MaxExportBatch = def.MaxExportBatch
	}
	if cfg.ScheduleDelay <= 0 {
		cfg.ScheduleDelay = def.ScheduleDelay
	}
	if cfg.MetricInterval <= 0 {
		cfg.MetricInterval = def.MetricInterval
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = def.ServiceName
	}
	p.cfg = cfg

	res, err := newResource(cfg, o.resource)
	if err != nil {
		return nil, err
	}
	spanExp := o.spanExp
	if spanExp == nil {
		if spanExp, err = newSpanExporter(ctx, cfg); err != nil {
			return nil, err
		}
	}
	metricExp := o.metricExp
	if metricExp == nil {
		if metricExp, err = newMetricExporter(ctx, cfg); err != nil {
			return nil, err
		}
	}

	var sampler sdktrace.Sampler = p.sampler
	if cfg.ParentBased {
		sampler = sdktrace.ParentBased(p.sampler)
	}
	p.batcher = newBatcher(spanExp, cfg.MaxQueueSize, cfg.MaxExportBatch, cfg.ScheduleDelay, cfg.Timeout)
	p.tp = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
		sdktrace.WithSpanProcessor(p.batcher),
	)
	var readerOpts []sdkmetric.PeriodicReaderOption
	readerOpts = append(readerOpts, sdkmetric.WithInterval(cfg.MetricInterval), sdkmetric.WithTimeout(cfg.Timeout))
	if o.gatherer != nil {
		readerOpts = append(readerOpts, sdkmetric.WithProducer(prombridge.NewMetricProducer(prombridge.WithGatherer(o.gatherer))))
	}
	p.mp = sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp, readerOpts...)),
	)
	return p, nil
}

func newResource(cfg Config, extra []attribute.KeyValue) (*resource.Resource, error) {
	kvs := append([]attribute.KeyValue(nil), extra...)
	for k, v := range cfg.ResourceAttributes {
		kvs = append(kvs, attribute.String(k, v))
	}
	kvs = append(kvs, semconv.ServiceName(cfg.ServiceName))
	// Later attributes win in NewWithAttributes, so the order above is the
	// precedence: options < OTEL_RESOURCE_ATTRIBUTES < service name.
	return resource.Merge(resource.NewSchemaless(
		attribute.String("telemetry.sdk.language", "go"),
		attribute.String("telemetry.sdk.name", "opentelemetry"),
	), resource.NewWithAttributes(semconv.SchemaURL, kvs...))
}

func newSpanExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	ep, err := parseEndpoint(cfg.TracesEndpoint)
	if err != nil {
		return nil, err
	}
	switch cfg.TracesProtocol {
	case ProtocolGRPC:
		opts := []otlptracegrpc.Option{
			otlptracegrpc.WithEndpoint(ep.hostPort),
			otlptracegrpc.WithHeaders(cfg.Headers),
			otlptracegrpc.WithTimeout(cfg.Timeout),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: cfg.Timeout}),
		}
		if ep.insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		return otlptracegrpc.New(ctx, opts...)
	case ProtocolHTTP, "":
		opts := []otlptracehttp.Option{
			otlptracehttp.WithEndpoint(ep.hostPort),
			otlptracehttp.WithURLPath(ep.path),
			otlptracehttp.WithHeaders(cfg.Headers),
			otlptracehttp.WithTimeout(cfg.Timeout),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: cfg.Timeout}),
		}
		if ep.insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		return otlptracehttp.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("traces protocol %q: want grpc or http/protobuf", cfg.TracesProtocol)
	}
}

func newMetricExporter(ctx context.Context, cfg Config) (sdkmetric.Exporter, error) {
	ep, err := parseEndpoint(cfg.MetricsEndpoint)
	if err != nil {
		return nil, err
	}
	switch cfg.MetricsProtocol {
	case ProtocolGRPC:
		opts := []otlpmetricgrpc.Option{
			otlpmetricgrpc.WithEndpoint(ep.hostPort),
			otlpmetricgrpc.WithHeaders(cfg.Headers),
			otlpmetricgrpc.WithTimeout(cfg.Timeout),
			otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: cfg.Timeout}),
		}
		if ep.insecure {
			opts = append(opts, otlpmetricgrpc.WithInsecure())
		}
		return otlpmetricgrpc.New(ctx, opts...)
	case ProtocolHTTP, "":
		opts := []otlpmetrichttp.Option{
			otlpmetrichttp.WithEndpoint(ep.hostPort),
			otlpmetrichttp.WithURLPath(ep.path),
			otlpmetrichttp.WithHeaders(cfg.Headers),
			otlpmetrichttp.WithTimeout(cfg.Timeout),
			otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: cfg.Timeout}),
		}
		if ep.insecure {
			opts = append(opts, otlpmetrichttp.WithInsecure())
		}
		return otlpmetrichttp.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("metrics protocol %q: want grpc or http/protobuf", cfg.MetricsProtocol)
	}
}

// Config returns the configuration the Provider runs with (defaults filled).
func (p *Provider) Config() Config { return p.cfg }

// Enabled reports whether the Provider exports anything.
func (p *Provider) Enabled() bool { return p.tp != nil }

// TracerProvider returns the provider spans are started from.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p.tp == nil {
		return tracenoop.NewTracerProvider()
	}
	return p.tp
}

// Tracer is TracerProvider().Tracer(name).
func (p *Provider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return p.TracerProvider().Tracer(name, opts...)
}

// MeterProvider returns the provider OTLP-exported instruments come from.
func (p *Provider) MeterProvider() metric.MeterProvider {
	if p.mp == nil {
		return metricnoop.NewMeterProvider()
	}
	return p.mp
}

// Propagator is the W3C trace-context and baggage propagator (the SDK
// default, OTEL_PROPAGATORS=tracecontext,baggage).
func (p *Provider) Propagator() propagation.TextMapPropagator { return p.prop }

// SetSamplingPercent changes the share of new traces that are sampled, 0..100
// (clamped), from the next span on, without a restart. With a parent-based
// config, spans whose remote parent made a decision still follow it.
func (p *Provider) SetSamplingPercent(percent float64) { p.sampler.set(percent) }

// SamplingPercent returns the current sampling percentage.
func (p *Provider) SamplingPercent() float64 { return p.sampler.get() }

// SpanStats returns the export queue's counters (zero when disabled).
func (p *Provider) SpanStats() SpanStats {
	if p.batcher == nil {
		return SpanStats{}
	}
	return p.batcher.stats()
}

// Collectors returns Prometheus collectors for the export queue, for the
// proxy's /metrics: otel_export_spans_{enqueued,dropped,exported,failed}_total
// and otel_export_queue_spans.
func (p *Provider) Collectors() []promclient.Collector {
	counter := func(name, help string, f func(SpanStats) uint64) promclient.Collector {
		return promclient.NewCounterFunc(promclient.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(p.SpanStats())) })
	}
	return []promclient.Collector{
		counter("otel_export_spans_enqueued_total", "Sampled spans accepted into the OTLP export queue.", func(s SpanStats) uint64 { return s.Enqueued }),
		counter("otel_export_spans_dropped_total", "Sampled spans dropped because the OTLP export queue was full.", func(s SpanStats) uint64 { return s.Dropped }),
		counter("otel_export_spans_exported_total", "Spans the collector accepted.", func(s SpanStats) uint64 { return s.Exported }),
		counter("otel_export_spans_failed_total", "Spans whose OTLP export failed.", func(s SpanStats) uint64 { return s.Failed }),
		promclient.NewGaugeFunc(promclient.GaugeOpts{Name: "otel_export_queue_spans", Help: "Spans waiting in the OTLP export queue."},
			func() float64 { return float64(p.SpanStats().Queued) }),
	}
}

// ForceFlush exports queued spans and collects and exports metrics now.
func (p *Provider) ForceFlush(ctx context.Context) error {
	if p.tp == nil {
		return nil
	}
	mErr := make(chan error, 1)
	go func() { mErr <- p.mp.ForceFlush(ctx) }()
	tErr := p.tp.ForceFlush(ctx)
	return errors.Join(tErr, <-mErr)
}

// Shutdown flushes what is queued and stops both providers, giving up when
// ctx is done (give it a deadline: a collector that is down would otherwise
// hold it for the export timeout).
func (p *Provider) Shutdown(ctx context.Context) error {
	if p.tp == nil {
		return nil
	}
	// Concurrently, so that a collector that is down costs the deadline
	// once, not once per signal.
	mErr := make(chan error, 1)
	go func() { mErr <- p.mp.Shutdown(ctx) }()
	tErr := p.tp.Shutdown(ctx)
	return errors.Join(tErr, <-mErr)
}
