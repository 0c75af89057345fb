package otel

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		{
			name: "nothing set: defaults, export off",
			env:  nil,
			check: func(t *testing.T, c Config) {
				want := DefaultConfig()
				want.TracesEndpoint = "http://localhost:4318/v1/traces"
				want.MetricsEndpoint = "http://localhost:4318/v1/metrics"
				want.Headers, want.ResourceAttributes = map[string]string{}, map[string]string{}
				if !reflect.DeepEqual(c, want) {
					t.Errorf("got %+v\nwant %+v", c, want)
				}
			},
		},
		{
			name: "base endpoint over http appends the signal paths",
			env:  map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
			check: func(t *testing.T, c Config) {
				if !c.Enabled || c.TracesEndpoint != "http://collector:4318/v1/traces" || c.MetricsEndpoint != "http://collector:4318/v1/metrics" || c.TracesProtocol != ProtocolHTTP {
					t.Errorf("got enabled=%v traces=%q metrics=%q proto=%q", c.Enabled, c.TracesEndpoint, c.MetricsEndpoint, c.TracesProtocol)
				}
			},
		},
		{
			name: "grpc takes the base as is; per-signal endpoint wins",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://collector:4317",
				"OTEL_EXPORTER_OTLP_PROTOCOL":        "grpc",
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:443",
			},
			check: func(t *testing.T, c Config) {
				if c.TracesEndpoint != "https://traces.example:443" || c.MetricsEndpoint != "http://collector:4317" || c.MetricsProtocol != ProtocolGRPC {
					t.Errorf("got traces=%q metrics=%q proto=%q", c.TracesEndpoint, c.MetricsEndpoint, c.MetricsProtocol)
				}
			},
		},
		{
			name: "per-signal protocol",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":         "http://c:4318",
				"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
			},
			check: func(t *testing.T, c Config) {
				if c.TracesProtocol != ProtocolHTTP || c.MetricsProtocol != ProtocolGRPC || c.MetricsEndpoint != "http://c:4318" {
					t.Errorf("got traces %q metrics %q at %q", c.TracesProtocol, c.MetricsProtocol, c.MetricsEndpoint)
				}
			},
		},
		{
			name: "service name beats resource attributes; headers decoded",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
				"OTEL_SERVICE_NAME":                  "waypoint",
				"OTEL_RESOURCE_ATTRIBUTES":           "service.name=other, k8s.namespace.name=demo",
				"OTEL_EXPORTER_OTLP_HEADERS":         "authorization=Bearer%20x,tenant=a",
				"OTEL_EXPORTER_OTLP_TIMEOUT":         "2500",
			},
			check: func(t *testing.T, c Config) {
				if c.ServiceName != "waypoint" || c.ResourceAttributes["k8s.namespace.name"] != "demo" {
					t.Errorf("got service %q resource %v", c.ServiceName, c.ResourceAttributes)
				}
				if c.Headers["authorization"] != "Bearer x" || c.Headers["tenant"] != "a" {
					t.Errorf("got headers %v", c.Headers)
				}
				if c.Timeout != 2500*time.Millisecond {
					t.Errorf("got timeout %v", c.Timeout)
				}
			},
		},
		{
			name: "parentbased_traceidratio",
			env:  map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
			check: func(t *testing.T, c Config) {
				if !c.ParentBased || c.SamplingPercent != 1 {
					t.Errorf("got parentBased=%v percent=%v", c.ParentBased, c.SamplingPercent)
				}
			},
		},
		{
			name: "always_off",
			env:  map[string]string{"OTEL_TRACES_SAMPLER": "always_off"},
			check: func(t *testing.T, c Config) {
				if c.ParentBased || c.SamplingPercent != 0 {
					t.Errorf("got parentBased=%v percent=%v", c.ParentBased, c.SamplingPercent)
				}
			},
		},
		{
			name: "queue, batch and intervals",
			env: map[string]string{
				"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
				"OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
			},
			check: func(t *testing.T, c Config) {
				if c.MaxQueueSize != 100 || c.MaxExportBatch != 10 || c.ScheduleDelay != 200*time.Millisecond || c.MetricInterval != time.Second {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "sdk disabled wins over an endpoint",
			env:  map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"},
			check: func(t *testing.T, c Config) {
				if c.Enabled {
					t.Error("got enabled, want disabled")
				}
			},
		},
		{name: "bad protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "bad sampler", env: map[string]string{"OTEL_TRACES_SAMPLER": "jaeger_remote"}, wantErr: "unsupported sampler"},
		{name: "bad ratio", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, wantErr: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "bad endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, wantErr: "want an http:// or https:// URL"},
		{name: "bad interval", env: map[string]string{"OTEL_METRIC_EXPORT_INTERVAL": "1s"}, wantErr: "OTEL_METRIC_EXPORT_INTERVAL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ConfigFromEnv(envOf(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			tt.check(t, c)
		})
	}
}

func TestEnvVarsListed(t *testing.T) {
	listed := map[string]bool{}
	for _, e := range EnvVars {
		listed[e.Name] = true
	}
	var read []string
	_, _ = ConfigFromEnv(func(k string) (string, bool) { read = append(read, k); return "", false })
	for _, k := range read {
		if !listed[k] {
			t.Errorf("ConfigFromEnv reads %s, which EnvVars does not list", k)
		}
	}
}

func TestApplyProvider(t *testing.T) {
	base := DefaultConfig()
	base.ServiceName = "waypoint"
	tests := []struct {
		name                string
		p                   OpenTelemetryProvider
		wantTraces, wantMet string
		wantProto           Protocol
		wantTimeout         time.Duration
		wantErr             bool
	}{
		{
			name:       "grpc (no http block)",
			p:          OpenTelemetryProvider{Name: "otel", Service: "opentelemetry-collector.otel-collector.svc.cluster.local", Port: 4317},
			wantTraces: "http://opentelemetry-collector.otel-collector.svc.cluster.local:4317",
			wantMet:    "http://opentelemetry-collector.otel-collector.svc.cluster.local:4317",
			wantProto:  ProtocolGRPC, wantTimeout: DefaultTimeout,
		},
		{
			name:       "http with istio's relative path and namespace/host service",
			p:          OpenTelemetryProvider{Service: "otel-collector/collector.example.com", Port: 4318, HTTP: &OpenTelemetryHTTP{Path: "v1/traces", Timeout: 3 * time.Second}},
			wantTraces: "http://collector.example.com:4318/v1/traces",
			wantMet:    "http://collector.example.com:4318/v1/metrics",
			wantProto:  ProtocolHTTP, wantTimeout: 3 * time.Second,
		},
		{
			name:       "http default path",
			p:          OpenTelemetryProvider{Service: "c", Port: 4318, HTTP: &OpenTelemetryHTTP{}},
			wantTraces: "http://c:4318/v1/traces", wantMet: "http://c:4318/v1/metrics",
			wantProto: ProtocolHTTP, wantTimeout: DefaultTimeout,
		},
		{name: "no port", p: OpenTelemetryProvider{Service: "c"}, wantErr: true},
		{name: "no service", p: OpenTelemetryProvider{Port: 4317}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := base.ApplyProvider(tt.p)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if !c.Enabled || c.TracesEndpoint != tt.wantTraces || c.MetricsEndpoint != tt.wantMet || c.TracesProtocol != tt.wantProto || c.MetricsProtocol != tt.wantProto {
				t.Errorf("got enabled=%v traces=%q metrics=%q protocols=%q/%q, want %q %q %q", c.Enabled, c.TracesEndpoint, c.MetricsEndpoint, c.TracesProtocol, c.MetricsProtocol, tt.wantTraces, tt.wantMet, tt.wantProto)
			}
			if c.Timeout != tt.wantTimeout || c.ServiceName != "waypoint" {
				t.Errorf("got timeout %v service %q", c.Timeout, c.ServiceName)
			}
		})
	}
}

func TestSpanNameAndMethod(t *testing.T) {
	tests := []struct{ method, route, wantName, wantMethod string }{
		{"GET", "/api/{id}", "GET /api/{id}", "GET"},
		{"POST", "", "POST", "POST"},
		{"PURGE", "/x", "HTTP /x", "_OTHER"},
	}
	for _, tt := range tests {
		if got := SpanName(tt.method, tt.route); got != tt.wantName {
			t.Errorf("SpanName(%q, %q) = %q, want %q", tt.method, tt.route, got, tt.wantName)
		}
		if got := NormalizeMethod(tt.method); got != tt.wantMethod {
			t.Errorf("NormalizeMethod(%q) = %q, want %q", tt.method, got, tt.wantMethod)
		}
	}
}
