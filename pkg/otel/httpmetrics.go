package otel

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// HTTPDurationBuckets are the semantic conventions' advisory bucket
// boundaries (seconds) for http.server.request.duration and
// http.client.request.duration.
var HTTPDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// HTTPServerMetrics records the stable http.server.request.duration
// histogram. It is safe for concurrent use.
type HTTPServerMetrics struct {
	duration metric.Float64Histogram
}

// NewHTTPServerMetrics creates the instrument on mp (Provider.MeterProvider).
func NewHTTPServerMetrics(mp metric.MeterProvider) (*HTTPServerMetrics, error) {
	h, err := mp.Meter("github.com/ambient-mesh/mesh/pkg/otel").Float64Histogram(
		"http.server.request.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Duration of HTTP server requests."),
		metric.WithExplicitBucketBoundaries(HTTPDurationBuckets...),
	)
	if err != nil {
		return nil, err
	}
	return &HTTPServerMetrics{duration: h}, nil
}

// HTTPRequest is what one request contributes to the attributes.
type HTTPRequest struct {
	Method     string // http.request.method; unknown methods become _OTHER
	Scheme     string // url.scheme: http or https
	Route      string // http.route, the matched route template ("" if none)
	StatusCode int    // http.response.status_code (0 if no response)
	// ProtocolVersion is network.protocol.version: "1.1", "2", "3".
	ProtocolVersion string
	// ErrorType is error.type: set it when the request failed without a
	// response (for example "timeout"); a 5xx status sets it by itself.
	ErrorType string
	// Extra attributes, for example the mesh's source and destination
	// workload labels.
	Extra []attribute.KeyValue
}

// Record adds one request of duration d.
func (m *HTTPServerMetrics) Record(ctx context.Context, d time.Duration, r HTTPRequest) {
	m.duration.Record(ctx, d.Seconds(), metric.WithAttributes(r.Attributes()...))
}

// Attributes are the request's semantic-convention attributes.
func (r HTTPRequest) Attributes() []attribute.KeyValue {
	kv := make([]attribute.KeyValue, 0, 6+len(r.Extra))
	kv = append(kv, semconv.HTTPRequestMethodKey.String(NormalizeMethod(r.Method)))
	scheme := r.Scheme
	if scheme == "" {
		scheme = "http"
	}
	kv = append(kv, semconv.URLSchemeKey.String(scheme))
	if r.Route != "" {
		kv = append(kv, semconv.HTTPRouteKey.String(r.Route))
	}
	if r.StatusCode > 0 {
		kv = append(kv, semconv.HTTPResponseStatusCodeKey.Int(r.StatusCode))
	}
	if r.ProtocolVersion != "" {
		kv = append(kv, semconv.NetworkProtocolVersionKey.String(r.ProtocolVersion))
	}
	switch {
	case r.ErrorType != "":
		kv = append(kv, semconv.ErrorTypeKey.String(r.ErrorType))
	case r.StatusCode >= 500:
		kv = append(kv, semconv.ErrorTypeKey.String(strconv.Itoa(r.StatusCode)))
	}
	return append(kv, r.Extra...)
}

var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true,
	http.MethodOptions: true, http.MethodTrace: true,
}

// NormalizeMethod returns the http.request.method value: the method when it
// is a known one, _OTHER otherwise.
func NormalizeMethod(m string) string {
	if knownMethods[m] {
		return m
	}
	return "_OTHER"
}

// SpanName is the conventional server span name "{method} {route}": the
// method alone without a route, and HTTP for unknown methods. Never the URI
// path.
func SpanName(method, route string) string {
	if !knownMethods[method] {
		method = "HTTP"
	}
	if route == "" {
		return method
	}
	return method + " " + route
}
