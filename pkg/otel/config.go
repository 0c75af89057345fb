package otel

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Protocol is an OTLP transport, as OTEL_EXPORTER_OTLP_PROTOCOL names it.
type Protocol string

const (
	// ProtocolGRPC is OTLP/gRPC (default port 4317).
	ProtocolGRPC Protocol = "grpc"
	// ProtocolHTTP is OTLP/HTTP with protobuf bodies (default port 4318).
	ProtocolHTTP Protocol = "http/protobuf"
)

// Defaults, from the OpenTelemetry SDK environment-variable specification
// except where a proxy needs otherwise (noted).
const (
	DefaultGRPCEndpoint   = "http://localhost:4317"
	DefaultHTTPEndpoint   = "http://localhost:4318"
	DefaultTimeout        = 10 * time.Second
	DefaultMaxQueueSize   = 2048
	DefaultMaxExportBatch = 512
	DefaultScheduleDelay  = 5 * time.Second
	DefaultMetricInterval = 60 * time.Second
	// DefaultServiceName is the spec's fallback service.name.
	DefaultServiceName = "unknown_service"
)

// Config says where and how a proxy exports traces and metrics over OTLP.
// Build it with ConfigFromEnv (the standard OTEL_* variables), then
// optionally overlay an Istio extension provider with ApplyProvider. The zero
// value exports nothing (Enabled is false).
type Config struct {
	// Enabled turns export on. ConfigFromEnv sets it when an OTLP endpoint
	// variable is set and OTEL_SDK_DISABLED is not true.
	Enabled bool

	// TracesEndpoint and MetricsEndpoint are full URLs. For gRPC only the
	// scheme (http = plaintext, https = TLS) and host:port count; for HTTP
	// the path is the signal's path (".../v1/traces").
	TracesEndpoint  string
	MetricsEndpoint string
	TracesProtocol  Protocol
	MetricsProtocol Protocol
	// Headers are sent with every export (OTEL_EXPORTER_OTLP_HEADERS).
	Headers map[string]string
	// Timeout bounds one export call, retries included.
	Timeout time.Duration

	// ServiceName is the resource's service.name.
	ServiceName string
	// ResourceAttributes are extra resource attributes
	// (OTEL_RESOURCE_ATTRIBUTES); ServiceName wins over a service.name here.
	ResourceAttributes map[string]string

	// SamplingPercent is the share of new traces (no sampled parent) that
	// are recorded, 0..100. Provider.SetSamplingPercent changes it later.
	SamplingPercent float64
	// ParentBased makes a span follow its remote parent's sampled flag when
	// there is one (the parentbased_* samplers; the default).
	ParentBased bool

	// MaxQueueSize bounds the spans waiting for export; more are dropped.
	MaxQueueSize int
	// MaxExportBatch is the most spans sent in one export.
	MaxExportBatch int
	// ScheduleDelay is the longest a span waits before its batch is sent.
	ScheduleDelay time.Duration
	// MetricInterval is how often metrics are exported.
	MetricInterval time.Duration
}

// EnvVar documents one environment variable ConfigFromEnv reads.
type EnvVar struct {
	Name, Default, Help string
}

// EnvVars lists every variable ConfigFromEnv reads, with its default: the
// one place they are registered, for --help output and the docs.
var EnvVars = []EnvVar{
	{"OTEL_SDK_DISABLED", "false", "true disables all OTLP export"},
	{"OTEL_EXPORTER_OTLP_ENDPOINT", "", "base URL of the collector; signals go to <base>/v1/traces and /v1/metrics over HTTP. Export is off unless this or a per-signal endpoint is set"},
	{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", "traces URL, used as is"},
	{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "", "metrics URL, used as is"},
	{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "grpc or http/protobuf"},
	{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "", "protocol for traces (overrides OTEL_EXPORTER_OTLP_PROTOCOL)"},
	{"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "", "protocol for metrics (overrides OTEL_EXPORTER_OTLP_PROTOCOL)"},
	{"OTEL_EXPORTER_OTLP_HEADERS", "", "k=v,k2=v2 headers sent with every export"},
	{"OTEL_EXPORTER_OTLP_TIMEOUT", "10000", "export timeout in milliseconds"},
	{"OTEL_SERVICE_NAME", "", "service.name of the resource (overrides OTEL_RESOURCE_ATTRIBUTES)"},
	{"OTEL_RESOURCE_ATTRIBUTES", "", "k=v,k2=v2 resource attributes"},
	{"OTEL_TRACES_SAMPLER", "parentbased_always_on", "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"},
	{"OTEL_TRACES_SAMPLER_ARG", "1.0", "ratio 0..1 for the traceidratio samplers"},
	{"OTEL_BSP_MAX_QUEUE_SIZE", "2048", "spans queued for export at most; more are dropped"},
	{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512", "spans in one export at most"},
	{"OTEL_BSP_SCHEDULE_DELAY", "5000", "milliseconds a span waits for its batch at most"},
	{"OTEL_METRIC_EXPORT_INTERVAL", "60000", "milliseconds between metric exports"},
}

// DefaultConfig is the configuration with every default and export off.
func DefaultConfig() Config {
	return Config{
		TracesProtocol:  ProtocolHTTP,
		MetricsProtocol: ProtocolHTTP,
		Timeout:         DefaultTimeout,
		ServiceName:     DefaultServiceName,
		SamplingPercent: 100,
		ParentBased:     true,
		MaxQueueSize:    DefaultMaxQueueSize,
		MaxExportBatch:  DefaultMaxExportBatch,
		ScheduleDelay:   DefaultScheduleDelay,
		MetricInterval:  DefaultMetricInterval,
	}
}

// ConfigFromEnv reads the standard OTEL_* variables (EnvVars) through lookup
// (os.LookupEnv in production). Export is enabled when an endpoint is set.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	c := DefaultConfig()
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	var errs []error
	proto := func(k string, def Protocol) Protocol {
		switch v := get(k); v {
		case "":
			return def
		case string(ProtocolGRPC), string(ProtocolHTTP):
			return Protocol(v)
		default:
			errs = append(errs, fmt.Errorf("%s=%q: want grpc or http/protobuf", k, v))
			return def
		}
	}
	millis := func(k string, def time.Duration) time.Duration {
		v := get(k)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want milliseconds", k, v))
			return def
		}
		return time.Duration(n) * time.Millisecond
	}
	positive := func(k string, def int) int {
		v := get(k)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive integer", k, v))
			return def
		}
		return n
	}

	base := proto("OTEL_EXPORTER_OTLP_PROTOCOL", ProtocolHTTP)
	c.TracesProtocol = proto("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", base)
	c.MetricsProtocol = proto("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", base)

	baseURL := get("OTEL_EXPORTER_OTLP_ENDPOINT")
	c.TracesEndpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	c.MetricsEndpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
	c.Enabled = baseURL != "" || c.TracesEndpoint != "" || c.MetricsEndpoint != ""
	if c.TracesEndpoint == "" {
		c.TracesEndpoint = signalURL(baseURL, c.TracesProtocol, "v1/traces")
	}
	if c.MetricsEndpoint == "" {
		c.MetricsEndpoint = signalURL(baseURL, c.MetricsProtocol, "v1/metrics")
	}
	for _, e := range []string{c.TracesEndpoint, c.MetricsEndpoint} {
		if _, err := parseEndpoint(e); err != nil {
			errs = append(errs, err)
		}
	}
	if disabled, err := strconv.ParseBool(get("OTEL_SDK_DISABLED")); err == nil && disabled {
		c.Enabled = false
	}

	var err error
	if c.Headers, err = parseKV(get("OTEL_EXPORTER_OTLP_HEADERS")); err != nil {
		errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_HEADERS: %w", err))
	}
	c.Timeout = millis("OTEL_EXPORTER_OTLP_TIMEOUT", c.Timeout)
	if c.ResourceAttributes, err = parseKV(get("OTEL_RESOURCE_ATTRIBUTES")); err != nil {
		errs = append(errs, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err))
	}
	if n := c.ResourceAttributes["service.name"]; n != "" {
		c.ServiceName = n
	}
	if n := get("OTEL_SERVICE_NAME"); n != "" {
		c.ServiceName = n
	}
	if err := c.setSampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		errs = append(errs, err)
	}
	c.MaxQueueSize = positive("OTEL_BSP_MAX_QUEUE_SIZE", c.MaxQueueSize)
	c.MaxExportBatch = positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", c.MaxExportBatch)
	c.ScheduleDelay = millis("OTEL_BSP_SCHEDULE_DELAY", c.ScheduleDelay)
	c.MetricInterval = millis("OTEL_METRIC_EXPORT_INTERVAL", c.MetricInterval)
	return c, errors.Join(errs...)
}

// setSampler applies OTEL_TRACES_SAMPLER and its argument.
func (c *Config) setSampler(name, arg string) error {
	ratio := 1.0
	if arg != "" {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio in [0, 1]", arg)
		}
		ratio = r
	}
	switch name {
	case "", "parentbased_always_on":
		c.ParentBased, c.SamplingPercent = true, 100
	case "parentbased_always_off":
		c.ParentBased, c.SamplingPercent = true, 0
	case "parentbased_traceidratio":
		c.ParentBased, c.SamplingPercent = true, ratio*100
	case "always_on":
		c.ParentBased, c.SamplingPercent = false, 100
	case "always_off":
		c.ParentBased, c.SamplingPercent = false, 0
	case "traceidratio":
		c.ParentBased, c.SamplingPercent = false, ratio*100
	default:
		return fmt.Errorf("OTEL_TRACES_SAMPLER=%q: unsupported sampler", name)
	}
	return nil
}

// signalURL is the endpoint of one signal given the base URL: for HTTP the
// signal path is appended (the spec's rule for OTEL_EXPORTER_OTLP_ENDPOINT);
// gRPC takes the base as is.
func signalURL(base string, p Protocol, path string) string {
	if base == "" {
		if p == ProtocolGRPC {
			return DefaultGRPCEndpoint
		}
		base = DefaultHTTPEndpoint
	}
	if p == ProtocolGRPC {
		return base
	}
	return strings.TrimSuffix(base, "/") + "/" + path
}

// endpoint is a parsed OTLP endpoint URL.
type endpoint struct {
	hostPort string
	path     string
	insecure bool
}

func parseEndpoint(raw string) (endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("OTLP endpoint %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return endpoint{}, fmt.Errorf("OTLP endpoint %q: want an http:// or https:// URL", raw)
	}
	if u.Host == "" {
		return endpoint{}, fmt.Errorf("OTLP endpoint %q: no host", raw)
	}
	hp := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		hp = net.JoinHostPort(u.Hostname(), port)
	}
	return endpoint{hostPort: hp, path: u.Path, insecure: u.Scheme == "http"}, nil
}

// parseKV parses the spec's "k=v,k2=v2" lists (values URL-decoded).
func parseKV(s string) (map[string]string, error) {
	m := map[string]string{}
	if s == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		if dv, err := url.PathUnescape(strings.TrimSpace(v)); err == nil {
			v = dv
		}
		m[k] = v
	}
	return m, nil
}

// OpenTelemetryProvider is the shape of Istio's mesh config
// extensionProviders[].opentelemetry (istio.io/api mesh/v1alpha1
// OpenTelemetryTracingProvider) that a proxy needs: istiod-lite fills it from
// the mesh config and pushes it with the Telemetry resource's choice of
// provider and sampling.
type OpenTelemetryProvider struct {
	// Name is the extensionProviders[].name a Telemetry resource refers to.
	Name string `json:"name,omitempty"`
	// Service is the collector's host: an FQDN
	// ("opentelemetry-collector.otel-collector.svc.cluster.local") or
	// Istio's "namespace/host" form.
	Service string `json:"service"`
	// Port is the collector's OTLP port (4317 gRPC, 4318 HTTP).
	Port uint32 `json:"port"`
	// HTTP selects OTLP/HTTP; nil means OTLP/gRPC (Istio's default).
	HTTP *OpenTelemetryHTTP `json:"http,omitempty"`
	// Timeout is the gRPC export timeout (opentelemetry.grpc.timeout).
	Timeout time.Duration `json:"timeout,omitempty"`
	// Headers are gRPC metadata (opentelemetry.grpc.initialMetadata).
	Headers map[string]string `json:"headers,omitempty"`
}

// OpenTelemetryHTTP is extensionProviders[].opentelemetry.http.
type OpenTelemetryHTTP struct {
	// Path of the traces endpoint ("/v1/traces" when empty). Metrics go to
	// /v1/metrics on the same host.
	Path    string            `json:"path,omitempty"`
	Timeout time.Duration     `json:"timeout,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// ApplyProvider returns c exporting to the collector p names, enabled. Only
// the transport changes; service name, sampling and queue settings stay.
func (c Config) ApplyProvider(p OpenTelemetryProvider) (Config, error) {
	host := p.Service
	if i := strings.LastIndexByte(host, '/'); i >= 0 {
		host = host[i+1:]
	}
	if host == "" || p.Port == 0 || p.Port > 65535 {
		return c, fmt.Errorf("opentelemetry provider %q: service and port are required, got %q:%d", p.Name, p.Service, p.Port)
	}
	base := "http://" + net.JoinHostPort(host, strconv.Itoa(int(p.Port)))
	c.Enabled = true
	c.Headers = map[string]string{}
	if p.HTTP == nil {
		c.TracesProtocol, c.MetricsProtocol = ProtocolGRPC, ProtocolGRPC
		c.TracesEndpoint, c.MetricsEndpoint = base, base
		for k, v := range p.Headers {
			c.Headers[k] = v
		}
		if p.Timeout > 0 {
			c.Timeout = p.Timeout
		}
		return c, nil
	}
	path := p.HTTP.Path
	if path == "" {
		path = "/v1/traces"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	c.TracesProtocol, c.MetricsProtocol = ProtocolHTTP, ProtocolHTTP
	c.TracesEndpoint, c.MetricsEndpoint = base+path, base+"/v1/metrics"
	for k, v := range p.HTTP.Headers {
		c.Headers[k] = v
	}
	if p.HTTP.Timeout > 0 {
		c.Timeout = p.HTTP.Timeout
	}
	return c, nil
}
