package waypoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// call is the state of one request through the proxy, shared by the
// handler, the retrying transport and the error handler through the
// request context.
type call struct {
	st      *stream
	rec     *recorder // the response writer of the request
	port    *port     // the current config of st's port
	snap    *state.Snapshot
	route   *route
	backend *weightedBackend
	h2      bool       // upstream speaks h2c
	body    []byte     // the buffered request body, when replayable
	replay  replayBody // the request's body once buffered (bufferBody)
	// bodyBuf: body's buffer came from bodyPool; bodyShared: something
	// that may outlive the request was given body (a mirror, a net/http
	// Transport's try, an upgrade), so the buffer is not pooled again.
	bodyBuf    *[]byte
	bodyShared bool
	answer     cancelBody // the final answer's body (roundTrip's)
	hasBody    bool       // body != nil, or an unbuffered body is being streamed

	// Written by the transport (one try at a time) and read after the
	// response: the last endpoint tried, how many tries, the flags.
	endpoint *endpoint
	attempts int
	flags    string

	// relay passes the endpoint's 1xx answers on (forward's; the reverse
	// proxy puts its own client trace in the request context).
	relay relay1xx
}

type callKey struct{}

// exchange is the per-request state of serveHTTP, allocated once.
type exchange struct {
	call  call
	rec   recorder
	orig  requestSummary
	trace requestTrace
	// forward's: the outbound request and URL, the 1xx relay
	out http.Request
	url url.URL
	exchange1xx
	// reqID holds a new x-request-id's value (ensureRequestID's slot).
	reqID [1]string
}

// transports builds the shared upstream transports: HTTP/1.1 with a
// keep-alive pool per endpoint, and h2c (prior knowledge) multiplexing on
// one connection per endpoint. Both dial HBONE streams through the pooled
// HBONE client.
func (p *Proxy) transports() (h1, h2c *http.Transport) {
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		c, err := p.dialEndpoint(ctx, addr)
		if err != nil {
			return nil, err
		}
		return abortOnClose{c}, nil
	}
	h1 = &http.Transport{
		DialContext:         dial,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	h2c = &http.Transport{
		DialContext:        dial,
		DisableCompression: true,
		Protocols:          &protos,
		IdleConnTimeout:    90 * time.Second,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReceiveBufferPerStream:     4 << 20,
		},
	}
	return h1, h2c
}

// abortOnClose resets an upstream HTTP stream both ways when the transport
// closes it. An HBONE Conn's Close is a TCP-like graceful close that keeps
// reading until what was written is sent; an HTTP client closes a
// connection only when it is done with it (or gave up on a try), and a
// late answer of a cancelled try must not race the cancellation.
type abortOnClose struct{ net.Conn }

// Readable passes hbone.Conn's on (the h1Pool's idle check).
func (c abortOnClose) Readable() (readable, known bool) {
	if r, ok := c.Conn.(readabler); ok {
		return r.Readable()
	}
	return false, false
}

func (c abortOnClose) Close() error {
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0)) // terminal: resets the stream now
	return c.Conn.Close()
}

// copyBuffers pools the reverse proxy's body-copy buffers (it would
// allocate 32 KiB per request otherwise).
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }

func (p *Proxy) reverseProxy() http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Keep what the client sent (Rewrite strips these by default).
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.Host = pr.In.Host
		},
		Transport: roundTripper{p},
		// Responses of unknown length (gRPC, chunked) and server-sent
		// events are flushed as they come by the reverse proxy itself (it
		// forces a -1 interval for them); responses of known length are
		// flushed write by write by the recorder (recorder.stream), which
		// sends the headers with the first body bytes instead of from a
		// timer goroutine of their own (see recorder).
		FlushInterval: 0,
		BufferPool:    copyBuffers{},
		ErrorHandler:  p.proxyError,
		ErrorLog:      zap.NewStdLog(p.log.Named("reverseproxy")),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serveHTTP(w, r, rp) })
}

// serveHTTP is the L7 path of one request: route, filters, body
// buffering, mirror, then the retrying reverse proxy; metrics and the
// access log at the end.
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request, rp *httputil.ReverseProxy) {
	start := time.Now()
	st, _ := r.Context().Value(streamKey{}).(*stream)
	if st == nil {
		http.Error(w, "no stream", http.StatusInternalServerError)
		return
	}
	x := takeExchange(r)
	rec, c, orig := &x.rec, &x.call, &x.orig
	rec.ResponseWriter = w
	*c = call{st: st, rec: rec, snap: p.cfg.Addresses.Snapshot()}
	*orig = requestSummary{method: r.Method, path: r.URL.RequestURI(), authority: r.Host, proto: r.Proto,
		grpc: strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")}
	reqID := ensureRequestID(r.Header, &x.reqID)
	trace := &x.trace
	p.startTrace(trace, r, start)
	defer func() {
		p.report(c, rec, orig, reqID, trace, start)
		c.releaseBody()
	}()

	// The stream may outlive the config it was admitted with (keep-alive,
	// h2c): route each request with the current one.
	svc, pt := st.svc, st.port
	if cur := p.cfg.Routes.lookup(st.svc.key); cur != st.svc {
		if cur == nil || !cur.waypoints[p.cfg.Name] || cur.ports[pt.port] == nil {
			c.flags = flagNoRoute
			http.Error(rec, "service no longer served by this waypoint", http.StatusServiceUnavailable)
			return
		}
		svc, pt = cur, cur.ports[pt.port]
	}
	c.port = pt
	if len(svc.authz) > 0 {
		if ok, by := authorize(svc.authz, newAuthzRequest(st.in.Peer, pt.port, r)); !ok {
			c.flags = flagDenied
			p.log.Debug("request denied", zap.String("service", svc.key), zap.String("policy", by), zap.Stringer("peer", st.in.Peer))
			http.Error(rec, "RBAC: access denied", http.StatusForbidden)
			return
		}
	}
	if limited(svc.limit, rec) {
		c.flags = flagRateLimited
		return
	}
	rt, m := selectRoute(pt.routes, r)
	if rt == nil {
		c.flags = flagNoRoute
		http.Error(rec, "no route", http.StatusNotFound)
		return
	}
	c.route = rt
	if limited(rt.limit, rec) {
		c.flags = flagRateLimited
		return
	}
	if aborted, delayed := rt.fault.inject(r.Context(), rec, orig.grpc); aborted {
		c.flags = flagFaultAbort
		return
	} else if delayed {
		c.flags = flagFaultDelay
	}
	var pl plan
	applyFilters(rt.filters, m, r, &pl)
	if pl.redirect == nil {
		c.backend = pickWeighted(rt.backends, rt.total)
		if c.backend != nil {
			applyFilters(c.backend.filters, m, r, &pl)
		}
	}
	if pl.redirect != nil {
		for _, hm := range pl.respHeaders {
			hm.apply(rec.Header())
		}
		http.Redirect(rec, r, redirectLocation(pl.redirect, m, r), redirectStatus(pl.redirect))
		return
	}
	if c.backend == nil || c.backend.backend.invalid {
		c.flags = flagBadBackend
		http.Error(rec, "invalid backend", http.StatusInternalServerError)
		return
	}
	c.h2 = p.upstreamH2(pt, c.backend.backend)

	// The call goes into the context only for the reverse proxy (upgrades),
	// which hands it to the transport and the error handler that way;
	// forward passes it along itself (two allocations per request less).
	upgrade := upgradeType(r.Header) != ""
	if upgrade || rt.requestTimeout > 0 {
		ctx := r.Context()
		if upgrade {
			ctx = context.WithValue(ctx, callKey{}, c)
		}
		if rt.requestTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, rt.requestTimeout)
			defer cancel()
		}
		r = r.WithContext(ctx)
	}
	p.bufferBody(r, c, rt.retry.attempts > 0 || len(pl.mirrors) > 0)
	for _, mi := range pl.mirrors {
		p.mirror(mi, r, c)
	}
	if len(pl.respHeaders) > 0 {
		rec.respHeaders = pl.respHeaders
	}
	release, ok := p.acquire(c.backend.backend, c.h2)
	if !ok {
		c.flags = flagOverflow
		rec.Header().Set("X-Envoy-Overloaded", "true")
		http.Error(rec, "upstream connect error or disconnect/reset before headers. reset reason: overflow", http.StatusServiceUnavailable)
		return
	}
	defer release()
	defer rec.endStream()
	if upgrade {
		c.bodyShared = true
		rp.ServeHTTP(rec, r) // it does the upgrade: hijack, copy both ways
		return
	}
	p.forward(rec, r, x)
}

// takeExchange is the request's exchange: the one allocated with it when
// serveH1's parser made it (taken once), else a new one.
func takeExchange(r *http.Request) *exchange {
	if rc, ok := r.Context().(*reqCtx); ok && rc.x != nil {
		x := rc.x
		rc.x = nil
		return x
	}
	return &exchange{}
}

// upstreamH2 tells whether the backend port speaks HTTP/2 (HTTP2, GRPC):
// from the backend Service's own config when it has one, else the
// protocol of the port the request came in on.
func (p *Proxy) upstreamH2(pt *port, b backendRef) bool {
	proto := pt.protocol
	if s := p.cfg.Routes.lookup(b.key); s != nil {
		if pt := s.ports[b.port]; pt != nil {
			proto = pt.protocol
		}
	}
	return proto == waypointv1alpha1.Protocol_HTTP2 || proto == waypointv1alpha1.Protocol_GRPC
}

// bufferBody makes the request replayable when its body is small enough:
// a body of known length up to MaxReplayBody is read now; one of unknown
// length is read up to the limit only when the route needs it (retries,
// mirrors) and the port is not gRPC (a streaming client would wait for
// us). A body that does not fit is streamed and the request is not
// retried.
func (p *Proxy) bufferBody(r *http.Request, c *call, wanted bool) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		c.body = []byte{}
		return
	}
	c.hasBody = true
	limit := int64(p.cfg.MaxReplayBody)
	switch {
	case r.ContentLength > 0 && r.ContentLength <= limit:
	case r.ContentLength < 0 && wanted && c.port.protocol != waypointv1alpha1.Protocol_GRPC:
	default:
		return
	}
	var pooled *[]byte
	var into []byte
	if r.ContentLength > 0 && r.ContentLength <= pooledBody {
		pooled = bodyPool.Get().(*[]byte)
		into = *pooled
	}
	buf, err := readBody(r.Body, r.ContentLength, limit, into)
	if pooled != nil && err == nil && len(buf) == int(r.ContentLength) {
		c.bodyBuf = pooled // back to the pool when the request is over
	}
	if err != nil || int64(len(buf)) > limit {
		// Too large (or broken): stream what was read, then the rest.
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		return
	}
	c.body = buf
	// The h1Pool sends c.body itself, and a Transport's try gets a reader
	// of it (retry.go): r.Body is read only on an upgrade. No allocation.
	c.replay = replayBody{b: buf}
	r.Body = &c.replay
	r.ContentLength = int64(len(buf))
}

// pooledBody is the largest buffered request body whose buffer comes from
// bodyPool (and goes back when the request is over, unless it may still
// be read: see call.bodyShared).
const pooledBody = 4 << 10

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, pooledBody+1); return &b }}

// releaseBody gives the request's body buffer back to the pool, when it
// came from there and nothing can still read it.
func (c *call) releaseBody() {
	if c.bodyBuf != nil && !c.bodyShared {
		bodyPool.Put(c.bodyBuf)
	}
	c.bodyBuf = nil
}

// replayBody reads a buffered request body (the call's) from its start;
// closing it does nothing.
type replayBody struct {
	b   []byte
	off int
}

func (r *replayBody) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func (r *replayBody) Close() error { return nil }

// readBody reads body to its end, or to limit+1 bytes. A body of known
// length is read into one slice of that size (io.ReadAll would start at
// 512 bytes and grow), then read once more to its EOF: the server starts
// its next request only once the body reported EOF.
//
// A body of known length goes into into when its capacity is more than
// the length.
func readBody(body io.Reader, length, limit int64, into []byte) ([]byte, error) {
	if length <= 0 || length > limit {
		return io.ReadAll(io.LimitReader(body, limit+1))
	}
	var buf []byte
	if int64(cap(into)) > length {
		buf = into[:length]
	} else {
		buf = make([]byte, length, length+1)
	}
	if n, err := io.ReadFull(body, buf); err != nil {
		return buf[:n], err
	}
	var one [1]byte
	n, err := body.Read(one[:])
	if n > 0 {
		// More than its Content-Length: not a body net/http would
		// give; keep every byte and read on as io.ReadAll would.
		rest, err := io.ReadAll(io.LimitReader(body, limit))
		return append(append(buf, one[0]), rest...), err
	}
	if err == io.EOF {
		err = nil
	}
	return buf, err
}

type readCloser struct {
	io.Reader
	io.Closer
}

// proxyError answers for a request the transport could not complete.
// (The reverse proxy's error handler: the call is in the context.)
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	c, _ := r.Context().Value(callKey{}).(*call)
	p.callError(w, r, c, err)
}

// callError answers for c's request r, which the transport could not
// complete.
func (p *Proxy) callError(w http.ResponseWriter, r *http.Request, c *call, err error) {
	status, flags := http.StatusServiceUnavailable, flagReset
	var de *dialError
	switch {
	case errors.Is(err, errNoEndpoints):
		flags = flagNoHealthy
	case errors.Is(err, errTryTimeout) || errors.Is(err, context.DeadlineExceeded):
		status, flags = http.StatusGatewayTimeout, flagTimeout
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away: nobody reads an answer.
		status, flags = 499, flagDownstream
	case errors.As(err, &de):
		flags = flagConnect
	}
	if c != nil {
		c.flags = flags
	}
	p.log.Debug("upstream request failed", zap.String("authority", r.Host), zap.String("path", r.URL.Path), zap.String("response_flags", flags), zap.Error(err))
	if status == 499 {
		if rec, ok := w.(*recorder); ok {
			rec.code = status
		}
		return
	}
	if rec, ok := w.(*recorder); ok {
		rec.respHeaders = nil // Envoy applies route response headers to its own replies too; we keep them off errors
	}
	http.Error(w, strings.ToLower(http.StatusText(status)), status)
}

// recorder captures the status and size of the response and applies the
// route's response header modifiers before the status is written.
//
// For a proxied response of known length (stream, set by the transport)
// it flushes every body write at once, as the reverse proxy does for
// streams, so nothing waits in the server's buffers. Its headers go out
// with the first body bytes, in one write, or on their own after
// headerFlushDelay if the body is late (the reverse proxy's own -1
// interval flushes them from a timer goroutine at once, which costs a
// separate write and a goroutine hand-off per request).
type recorder struct {
	http.ResponseWriter
	code        int
	bytes       int64
	respHeaders []*headerMod

	stream bool // flush each write; set before WriteHeader, by the transport
	// body, with stream: whether the first body bytes are already read
	// from the endpoint (bodyBuffered: the headers wait for them, no
	// timer), not yet (bodyLate: the headers go at once), or unknown
	// (bodyUnknown: the timer).
	body  bodyState
	armed bool // timer may fire: writes take mu (the handler's goroutine only)
	mu    sync.Mutex
	timer *time.Timer
	// pending: the headers wait for the timer; ended: the handler is
	// done with the writer, the timer must not touch it. Both under mu.
	pending, ended bool
}

// headerFlushDelay is how long the headers of a response of known length
// wait for its first body bytes before they are sent alone.
const headerFlushDelay = time.Millisecond

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 || (r.code >= 100 && r.code < 200) {
		if code >= 200 {
			for _, hm := range r.respHeaders {
				hm.apply(r.ResponseWriter.Header())
			}
		}
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
	if !r.stream || code < 200 || r.armed {
		return
	}
	switch r.body {
	case bodyLate:
		r.flush()
	case bodyUnknown:
		r.armed, r.pending = true, true
		r.timer = time.AfterFunc(headerFlushDelay, r.flushHeaders)
	}
}

type bodyState uint8

const (
	bodyUnknown bodyState = iota
	bodyBuffered
	bodyLate
)

// flushHeaders is the timer: the body is late, send the headers alone.
func (r *recorder) flushHeaders() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending && !r.ended {
		r.pending = false
		r.flush()
	}
}

// disarm stops the header timer (the headers leave with what follows).
func (r *recorder) disarm() {
	if !r.armed {
		return
	}
	r.mu.Lock()
	r.pending = false
	r.timer.Stop()
	r.mu.Unlock()
	r.armed = false
}

// endStream is called when the body copy is over (the transport closed
// the body) and again when the reverse proxy returns: the timer must not
// touch the writer any more.
func (r *recorder) endStream() {
	if !r.armed {
		return
	}
	r.mu.Lock()
	r.pending, r.ended = false, true
	r.timer.Stop()
	r.mu.Unlock()
	r.armed = false
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.WriteHeader(http.StatusOK)
	}
	r.disarm()
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	if r.stream && err == nil {
		r.flush()
	}
	return n, err
}

func (r *recorder) Flush() {
	if r.code == 0 {
		r.WriteHeader(http.StatusOK)
	}
	r.disarm()
	r.flush()
}

func (r *recorder) flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
		return
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// adoptHeader makes h the answer's header when the writer is serveH1's
// and its header is still empty (see h1writer.adoptHeader).
func (r *recorder) adoptHeader(h http.Header) bool {
	w, ok := r.ResponseWriter.(*h1writer)
	return ok && w.adoptHeader(h)
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// grpcStatus reads grpc-status from the response trailers (or headers,
// for a trailers-only response).
func (r *recorder) grpcStatus() string {
	h := r.ResponseWriter.Header()
	if v := h.Get("Grpc-Status"); v != "" {
		return v
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}
