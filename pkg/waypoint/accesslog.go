package waypoint

import (
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// requestSummary is the request as the client sent it, before filters.
type requestSummary struct {
	method, path, authority, proto string
	grpc                           bool
}

// report records the metrics and the access-log line of a finished request.
func (p *Proxy) report(c *call, rec *recorder, orig *requestSummary, reqID string, trace *requestTrace, start time.Time) {
	d := time.Since(start)
	st := c.st
	protocol := "http"
	if st.port.protocol == waypointv1alpha1.Protocol_GRPC || orig.grpc {
		protocol = "grpc"
	}
	r := &requestRecord{
		srcWorkload: st.src,
		srcIdentity: st.in.Peer,
		dstService:  st.svcAddr,
		protocol:    protocol,
		code:        rec.status(),
		grpcStatus:  rec.grpcStatus(),
		flags:       c.flags,
		durationMS:  float64(d.Microseconds()) / 1000,
	}
	var dstAddr string
	if c.backend != nil {
		if s := c.snap.Service(c.backend.backend.key); s != nil {
			r.dstService = s
		} else {
			r.dstService, r.dstHost = nil, c.backend.backend.hostname
			r.dstNS, _, _ = cutName(c.backend.backend.key)
		}
	}
	if ep := c.endpoint; ep != nil {
		r.dstWorkload, r.dstIdentity = ep.workload, ep.identity
		dstAddr = ep.host
	}
	if r.flags == "" && c.attempts > 1 && c.route != nil && c.route.retry.status(r.code) {
		r.flags = flagRetryLimit
	}
	// The Telemetry configuration the request started with (trace.st).
	p.cfg.Metrics.request(r, trace.st.metricOverrides())
	trace.end(c, rec, r, d)
	if !trace.st.accessLogOn() {
		return
	}
	if ce := p.access.Check(zap.InfoLevel, "request complete"); ce != nil {
		routeName := ""
		if c.route != nil {
			routeName = c.route.name
		}
		fp := accessFields.Get().(*[]zap.Field)
		fs := append((*fp)[:0],
			zap.String("src.addr", st.srcAddr),
			zap.String("src.workload", workloadName(st.src)),
			zap.String("src.namespace", st.src.GetNamespace()),
			zap.String("src.identity", idOrEmpty(st.in.Peer)),
			zap.String("dst.service", st.svc.hostname),
			zap.String("dst.hbone_addr", st.in.Target),
			zap.String("dst.addr", dstAddr),
			zap.String("dst.workload", workloadName(r.dstWorkload)),
			zap.String("dst.identity", idOrEmpty(r.dstIdentity)),
			zap.String("route", routeName),
			zap.String("method", orig.method),
			zap.String("path", orig.path),
			zap.String("authority", orig.authority),
			zap.String("protocol", orig.proto),
			zap.Int("response_code", r.code),
			zap.String("grpc_status", r.grpcStatus),
			zap.String("response_flags", or(r.flags)),
			zap.Int("attempts", c.attempts),
			zap.Int64("bytes_sent", rec.bytes),
			zap.String("request_id", reqID),
			zap.String("trace_id", trace.traceID),
			zap.String("duration", durationMS(d)),
		)
		ce.Write(fs...)
		clear(fs) // drop the strings until the next line
		*fp = fs
		accessFields.Put(fp)
	}
}

// accessFields pools the access line's fields: passed to zap they escape,
// and a new slice of 22 would be 1.5 KB of garbage per request. zap's cores
// copy what they keep.
var accessFields = sync.Pool{New: func() any { fs := make([]zap.Field, 0, 24); return &fs }}

func idOrEmpty(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

// durationMS renders d as ztunnel's access log does, "<n>ms".
func durationMS(d time.Duration) string {
	var b [24]byte
	return string(append(strconv.AppendInt(b[:0], d.Milliseconds(), 10), "ms"...))
}
