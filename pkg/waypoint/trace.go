package waypoint

import (
	"context"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambient-mesh/mesh/pkg/otel"
)

// propagateTrace keeps W3C trace context across the waypoint hop: a valid
// traceparent gets a new parent (span) id, as one span per waypoint hop
// would; a missing or invalid one is replaced by a new, unsampled trace.
// tracestate passes through unchanged. It returns the trace id.
func propagateTrace(h http.Header, slot *[1]string) string {
	var tp string
	if vs := h["Traceparent"]; len(vs) > 0 {
		tp = vs[0]
	}
	// One allocation: "00-" trace id "-" span id "-" flags.
	var b [55]byte
	copy(b[:], "00-")
	if validTraceparent(tp) {
		copy(b[3:35], tp[3:35])
		copy(b[53:55], tp[53:55])
	} else {
		var id [16]byte
		putRandom(id[:])
		hex.Encode(b[3:35], id[:])
		b[53], b[54] = '0', '0'
		h.Del("Tracestate") // it belonged to the invalid parent
	}
	var span [8]byte
	putRandom(span[:])
	b[35], b[52] = '-', '-'
	hex.Encode(b[36:52], span[:])
	v := string(b[:])
	if vs := h["Traceparent"]; len(vs) == 1 {
		vs[0] = v // the request's own header: replace in place
	} else {
		h["Traceparent"] = headerValue(slot, v)
	}
	return v[3:35]
}

// validTraceparent checks version 00's shape: 00-<32 hex>-<16 hex>-<2 hex>,
// with non-zero ids.
func validTraceparent(tp string) bool {
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	return isLowerHex(tp[3:35]) && isLowerHex(tp[36:52]) && isLowerHex(tp[53:55]) &&
		tp[3:35] != "00000000000000000000000000000000" && tp[36:52] != "0000000000000000"
}

func isLowerHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ensureRequestID keeps the client's x-request-id or sets a new UUID v4.
// slot, when not nil, holds the new header's value (see headerValue).
func ensureRequestID(h http.Header, slot *[1]string) string {
	if vs := h["X-Request-Id"]; len(vs) > 0 && vs[0] != "" {
		return vs[0]
	}
	var b [16]byte
	putRandom(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var u [36]byte
	hex.Encode(u[0:8], b[0:4])
	u[8] = '-'
	hex.Encode(u[9:13], b[4:6])
	u[13] = '-'
	hex.Encode(u[14:18], b[6:8])
	u[18] = '-'
	hex.Encode(u[19:23], b[8:10])
	u[23] = '-'
	hex.Encode(u[24:36], b[10:16])
	id := string(u[:])
	h["X-Request-Id"] = headerValue(slot, id)
	return id
}

// headerValue is a header's one-value slice: in slot, storage of the
// request's own (the exchange's) when there is one, so that setting the
// header allocates no slice; its capacity is 1, so an append copies.
func headerValue(slot *[1]string, v string) []string {
	if slot == nil {
		return []string{v}
	}
	slot[0] = v
	return slot[:]
}

func putRandom(b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

// requestTrace is one request's trace context through the waypoint: the
// server span when the Telemetry traces, else only the hand-made hop of
// propagateTrace.
type requestTrace struct {
	st      *telemetryState // nil: no export
	span    trace.Span      // nil when no span was started
	traceID string
	method  string
	proto   string
	// tp holds a new traceparent's value (propagateTrace's slot).
	tp [1]string
}

// startTrace starts the request's server span: the W3C context is
// extracted from the request, a span named "{method}" (renamed to
// "{method} {route}" once routed) is started as its child and injected
// back, so the upstream request carries traceparent with the waypoint's
// span as parent. Without a span (no Telemetry, export off or tracing
// disabled) propagateTrace keeps the same wire behaviour: a new span id per
// hop, a new unsampled trace for a missing or invalid parent.
func (p *Proxy) startTrace(rt *requestTrace, r *http.Request, start time.Time) {
	st := p.cfg.Telemetry.state()
	*rt = requestTrace{st: st, method: r.Method, proto: "1.1"}
	if r.ProtoMajor == 2 {
		rt.proto = "2"
	}
	if st == nil || !st.spans {
		rt.traceID = propagateTrace(r.Header, &rt.tp)
		return
	}
	prop := st.provider.Propagator()
	carrier := propagation.HeaderCarrier(r.Header)
	ctx := prop.Extract(context.Background(), carrier)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		r.Header.Del("Tracestate") // it belonged to a missing or invalid parent
	}
	attrs := st.tagAttributes(r.Header)
	ctx, rt.span = st.tracer.Start(ctx, otel.SpanName(r.Method, ""),
		trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start), trace.WithAttributes(attrs...))
	prop.Inject(ctx, carrier)
	rt.traceID = rt.span.SpanContext().TraceID().String()
}

// end finishes the span (name, semantic-convention and mesh attributes,
// status) and records http.server.request.duration.
func (rt *requestTrace) end(c *call, rec *recorder, r *requestRecord, d time.Duration) {
	if rt.st == nil || (rt.st.metrics == nil && rt.span == nil) {
		return
	}
	route := ""
	if c.route != nil {
		route = c.route.name
	}
	req := otel.HTTPRequest{Method: rt.method, Scheme: "http", Route: route, StatusCode: r.code, ProtocolVersion: rt.proto}
	switch r.flags {
	case flagTimeout:
		req.ErrorType = "timeout"
	case flagDownstream:
		req.ErrorType = "canceled"
	}
	if rt.st.metrics != nil {
		rt.st.metrics.Record(context.Background(), d, req)
	}
	if rt.span == nil || !rt.span.IsRecording() {
		return
	}
	dstNS := r.dstNS
	if r.dstService != nil {
		dstNS = r.dstService.GetNamespace()
	}
	if r.dstWorkload != nil {
		dstNS = r.dstWorkload.GetNamespace()
	}
	req.Extra = []attribute.KeyValue{
		attribute.String("istio.source_workload", workloadName(r.srcWorkload)),
		attribute.String("istio.source_namespace", r.srcWorkload.GetNamespace()),
		attribute.String("istio.source_principal", idOrEmpty(r.srcIdentity)),
		attribute.String("istio.destination_workload", workloadName(r.dstWorkload)),
		attribute.String("istio.destination_namespace", dstNS),
		attribute.String("istio.destination_principal", idOrEmpty(r.dstIdentity)),
		attribute.String("istio.destination_service", c.st.svc.hostname),
	}
	if r.flags != "" {
		req.Extra = append(req.Extra, attribute.String("istio.response_flags", r.flags))
	}
	rt.span.SetName(otel.SpanName(rt.method, route))
	rt.span.SetAttributes(req.Attributes()...)
	if r.code >= 500 || r.code == 0 {
		rt.span.SetStatus(codes.Error, http.StatusText(r.code))
	}
	rt.span.End()
}
