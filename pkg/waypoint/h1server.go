package waypoint

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 server of HBONE streams to HTTP ports.
//
// It serves, on the stream's own goroutine, the requests that make up
// nearly all service traffic: HTTP/1.1, a head that fits its buffer, no
// protocol upgrade, no Expect, no Transfer-Encoding, not CONNECT. On the
// first request that is anything else (HTTP/1.0, h2c prior knowledge, a
// WebSocket, a chunked upload, a malformed head, a head over the buffer)
// it hands the stream, with the bytes it has read, to the net/http server
// for the rest of the stream's life, so every unusual case keeps
// net/http's behaviour, errors included.
//
// What it does like net/http's server, for the requests it serves: the
// Host checks (400 missing, repeated or malformed; 400 for an invalid
// header name or value), the request context (ended when the stream is
// reset, or when the request is over), keep-alive until the client
// closes, sends "Connection: close" or its idle timeout passes, the
// response framing (the handler's Content-Length, else the length of a
// body it wrote whole before returning, else chunked), Date and a
// sniffed Content-Type when the handler set none, 1xx answers, trailers
// (declared and http.TrailerPrefix), no body for HEAD, 1xx, 204 and 304,
// at most 256 KiB of an unread request body drained before the next
// request (more closes the stream), a handler's panic logged and its
// stream closed (http.ErrAbortHandler silently). Why: net/http's server
// is about a tenth of the waypoint's CPU per request (its per-connection
// reader and writer state, a background read per request to notice the
// client leaving, which the HBONE stream's reset tells us anyway).

const (
	h1ReadBuffer  = 8 << 10 // a request head must fit, else net/http serves the stream
	h1WriteBuffer = 4 << 10
	h1HeadTimeout = 30 * time.Second // as the http.Server's ReadHeaderTimeout
	h1ServerIdle  = time.Hour        // as its IdleTimeout
	h1MaxDrain    = 256 << 10        // as net/http: unread request body drained before the next request
	h1Pending     = 2 << 10          // body bytes held to compute a Content-Length (net/http's 2048)
)

var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1ReadBuffer) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1WriteBuffer) }}
)

// h1conn is one HBONE stream served by serveH1.
type h1conn struct {
	p      *Proxy
	st     *stream
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	remote string
	idle   atomic.Bool // waiting for the next request: a drain may end it
	w      h1writer
	reqs   streamRequests // the request in flight, for the stream's end
}

// h1conns tracks the streams serveH1 serves, for the drain.
type h1conns struct {
	mu       sync.Mutex
	conns    map[*h1conn]struct{}
	draining atomic.Bool
}

func (t *h1conns) add(hc *h1conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining.Load() {
		return false
	}
	if t.conns == nil {
		t.conns = map[*h1conn]struct{}{}
	}
	t.conns[hc] = struct{}{}
	return true
}

func (t *h1conns) remove(hc *h1conn) {
	t.mu.Lock()
	delete(t.conns, hc)
	t.mu.Unlock()
}

// drain makes every stream close once its current request is answered
// (with "Connection: close"), and the idle ones now.
func (t *h1conns) drain() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.draining.Store(true)
	for hc := range t.conns {
		if hc.idle.Load() {
			_ = hc.c.SetReadDeadline(time.Unix(1, 0))
		}
	}
}

// serveH1 serves the HTTP/1.1 requests of one HBONE stream until the
// client ends it, an error, or a drain; see the comment above.
func (p *Proxy) serveH1(ctx context.Context, st *stream, c net.Conn, ln *streamListener) {
	hc := &h1conn{p: p, st: st, c: c}
	if !p.h1s.add(hc) {
		return
	}
	defer p.h1s.remove(hc)
	hc.br = h1Readers.Get().(*bufio.Reader)
	hc.br.Reset(c)
	hc.bw = h1Writers.Get().(*bufio.Writer)
	hc.bw.Reset(c)
	defer func() {
		hc.br.Reset(nil)
		h1Readers.Put(hc.br)
		hc.bw.Reset(nil)
		h1Writers.Put(hc.bw)
	}()
	if a := c.RemoteAddr(); a != nil {
		hc.remote = a.String()
	}
	// Each request's context (reqCtx) has the stream's values; the stream's
	// end cancels the request in flight through one hook for the stream.
	vals := context.WithValue(context.WithoutCancel(ctx), streamKey{}, st)
	stopHook := context.AfterFunc(ctx, func() { hc.reqs.streamEnded(ctx) })
	defer stopHook()
	for {
		head, handoff, ok := hc.readHead()
		if handoff {
			hc.handoff(ctx, ln)
			return
		}
		if !ok {
			return
		}
		var req *http.Request
		var rc *reqCtx
		if pr := hc.parseHead(head); pr != nil {
			req, rc = &pr.req, &pr.ctx
		} else {
			// Not the simplest form: net/http's parser and checks.
			var err error
			if req, err = http.ReadRequest(hc.br); err != nil {
				hc.badRequest("")
				return
			}
			if why := checkRequest(req); why != "" {
				hc.badRequest(why)
				return
			}
		}
		req.RemoteAddr = hc.remote
		if !hc.serve(ctx, vals, req, rc) {
			return
		}
	}
}

// readHead waits for the next request's head to be whole in the buffer
// (the idle timeout before its first byte, the head timeout after).
// head: the head, as one string (the fast parser slices it); handoff:
// the request is one for net/http; !ok: the stream is over.
func (hc *h1conn) readHead() (head string, handoff, ok bool) {
	c, br := hc.c, hc.br
	armed, headArmed := false, false // a read deadline is set; the head's
	defer func() {
		if armed {
			_ = c.SetReadDeadline(time.Time{})
		}
	}()
	if br.Buffered() == 0 {
		// The deadline first, then idle, then the drain check: a drain
		// either sees this stream idle (and its poke comes after this
		// deadline) or is seen here.
		_ = c.SetReadDeadline(time.Now().Add(h1ServerIdle))
		armed = true
		hc.idle.Store(true)
		if hc.p.h1s.draining.Load() {
			hc.idle.Store(false)
			return "", false, false
		}
		_, err := br.Peek(1)
		hc.idle.Store(false)
		if err != nil {
			return "", false, false
		}
	}
	for {
		b, _ := br.Peek(br.Buffered())
		if end := headEnd(b); end > 0 {
			head = string(b[:end])
			switch headKind(head) {
			case headPlain:
				return head, false, true
			case headBad:
				hc.badRequest("")
				return "", false, false
			}
			return "", true, true
		}
		if br.Buffered() == br.Size() {
			return "", true, true // too long for us: net/http's limits apply
		}
		if !headArmed {
			_ = c.SetReadDeadline(time.Now().Add(h1HeadTimeout))
			armed, headArmed = true, true
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			// The head never completed: let net/http answer what came.
			return "", br.Buffered() > 0, br.Buffered() > 0
		}
	}
}

// headEnd is the length of the request head at the start of b (through
// its empty line, CRLF or bare LF), or 0.
func headEnd(b []byte) int {
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if b[i+1] == '\n' {
			return i + 2
		}
		if b[i+1] == '\r' && i+2 < len(b) && b[i+2] == '\n' {
			return i + 3
		}
	}
	return 0
}

type headClass uint8

const (
	headPlain   headClass = iota // serveH1 serves it
	headHandoff                  // net/http does
	headBad                      // no request line: 400
)

// headKind classifies a request head. serveH1 serves an HTTP/1.1 request
// line with an origin-form target (so not CONNECT, not the h2c preface,
// not a proxy's absolute form), one Host header and no Upgrade, Expect or
// Transfer-Encoding header. A first line that is not "method target
// HTTP/x" is refused here as net/http refuses it (which, on a stream's
// first bytes with h2c enabled, would wait for 24 of them first).
func headKind(head string) headClass {
	line, rest, _ := strings.Cut(head, "\n")
	line = strings.TrimSuffix(line, "\r")
	method, target, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(target, " ")
	if !ok1 || !ok2 || method == "" || target == "" || strings.Contains(proto, " ") || !strings.HasPrefix(proto, "HTTP/") {
		return headBad
	}
	if proto != "HTTP/1.1" || !strings.HasPrefix(target, "/") {
		return headHandoff
	}
	hosts := 0
	for rest != "" {
		line, rest, _ = strings.Cut(rest, "\n")
		name, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch len(name) {
		case len("Host"):
			if strings.EqualFold(name, "Host") {
				hosts++
			}
		case len("Upgrade"), len("Expect"), len("Transfer-Encoding"):
			if strings.EqualFold(name, "Upgrade") || strings.EqualFold(name, "Expect") || strings.EqualFold(name, "Transfer-Encoding") {
				return headHandoff
			}
		}
	}
	if hosts != 1 {
		return headHandoff
	}
	return headPlain
}

// checkRequest is net/http's server's checks of a parsed request (whose
// head had one Host header, http.ReadRequest took it to req.Host): "" or
// the 400 answer's reason.
func checkRequest(req *http.Request) string {
	if !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "invalid header value"
			}
		}
	}
	return ""
}

// badRequest answers 400 as net/http does and ends the stream.
func (hc *h1conn) badRequest(why string) {
	msg := "400 Bad Request"
	if why != "" {
		msg += ": " + why
	}
	_, _ = hc.bw.WriteString("HTTP/1.1 " + msg + "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" + msg)
	_ = hc.bw.Flush()
}

// handoff gives the stream, with what was read of it, to net/http.
func (hc *h1conn) handoff(ctx context.Context, ln *streamListener) {
	read := make([]byte, hc.br.Buffered())
	_, _ = io.ReadFull(hc.br, read)
	if ln == nil {
		return
	}
	ln.serve(ctx, hc.st, &prefixConn{Conn: hc.c, prefix: read})
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *prefixConn) CloseWrite() error { return closeWrite(c.Conn) }

// serve runs the handler for one request and finishes its answer; false:
// the stream is not to carry another request.
// rc, if not nil, is the request's context, not yet in use (parseHead
// makes it with the request).
func (hc *h1conn) serve(stream, vals context.Context, req *http.Request, rc *reqCtx) (keep bool) {
	if rc == nil {
		rc = newReqCtx(vals)
	} else {
		rc.vals = vals
	}
	hc.reqs.start(stream, rc)
	defer hc.reqs.end(rc)
	req = req.WithContext(rc)
	body := req.Body
	w := &hc.w
	header, pending := w.header, w.pending[:0] // the last request's, reused
	if header == nil {
		header = make(http.Header, 8)
	}
	clear(header)
	*w = h1writer{hc: hc, req: req, header: header, pending: pending, clen: -1,
		head: req.Method == http.MethodHead, closeAfter: req.Close || hc.p.h1s.draining.Load()}
	if !hc.run(w, req) {
		return false
	}
	w.finish()
	if w.err != nil || w.closeAfter || hc.p.h1s.draining.Load() {
		return false
	}
	// The next request starts after this one's body.
	if b, ok := body.(*lengthBody); ok {
		return b.drain(h1MaxDrain)
	}
	if body != nil && body != http.NoBody {
		n, err := io.CopyN(io.Discard, body, h1MaxDrain+1)
		if err != io.EOF || n > h1MaxDrain {
			return false
		}
	}
	return true
}

// run calls the handler; false: it panicked, the stream is to be closed
// as it is (a response cut short).
func (hc *h1conn) run(w *h1writer, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				hc.p.log.Error("http handler panicked", zap.Any("panic", v), zap.String("stack", string(buf)))
			}
			_ = hc.bw.Flush()
		}
	}()
	hc.p.handler.ServeHTTP(w, req)
	return true
}

// h1writer is the http.ResponseWriter of serveH1's requests.
type h1writer struct {
	hc     *h1conn
	req    *http.Request
	header http.Header
	head   bool // a HEAD request: no body is sent

	code      int   // the final status, once WriteHeader(>= 200)
	wroteHead bool  // the head is in the write buffer
	noBody    bool  // 1xx, 204, 304 (or HEAD): no body, no framing
	chunked   bool  // the body goes in chunks
	clen      int64 // the handler's Content-Length, or -1
	written   int64 // body bytes the handler wrote
	pending   []byte
	trailers  []string // declared in the Trailer header
	// closeAfter: the stream carries no further request (and the answer
	// says so if its head is not out yet); err: a write failed.
	closeAfter bool
	err        error
}

func (w *h1writer) Header() http.Header { return w.header }

// adoptHeader makes h, an endpoint's answer's header that nothing else
// uses any more, this answer's header, in place of the empty one (which
// forward would otherwise fill with a map assignment per name); the next
// request of the stream reuses it as it would have the old one. false:
// the header is not empty, the final head is out, or h has a name without
// values (which a copy leaves out).
func (w *h1writer) adoptHeader(h http.Header) bool {
	if w.code != 0 || len(w.header) != 0 {
		return false
	}
	for _, vv := range h {
		if len(vv) == 0 {
			return false
		}
	}
	w.header = h
	return true
}

func (w *h1writer) WriteHeader(code int) {
	if w.code != 0 {
		return // net/http logs a superfluous WriteHeader and ignores it
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: now, with the headers set so far (which stay).
		bw := w.hc.bw
		writeStatusLine(bw, code)
		_ = w.header.WriteSubset(bw, noBodyHeaders)
		_, _ = bw.WriteString("\r\n")
		if err := bw.Flush(); err != nil {
			w.fail(err)
		}
		return
	}
	w.code = code
	w.noBody = code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.clen = n
		} else {
			w.header.Del("Content-Length") // as net/http: a bad one is dropped
		}
	}
}

var noBodyHeaders = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func (w *h1writer) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		return 0, http.ErrBodyNotAllowed
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.head {
		return len(p), nil
	}
	if !w.wroteHead {
		if w.clen < 0 && len(w.pending)+len(p) <= h1Pending {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.writeHead(false)
	}
	w.writeBody(p)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

func (w *h1writer) Flush() {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.wroteHead {
		w.writeHead(false)
	}
	if w.err == nil {
		if err := w.hc.bw.Flush(); err != nil {
			w.fail(err)
		}
	}
}

// finish completes the answer after the handler returned.
func (w *h1writer) finish() {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.wroteHead {
		w.writeHead(true)
	}
	bw := w.hc.bw
	if w.chunked && w.err == nil {
		_, _ = bw.WriteString("0\r\n")
		w.writeTrailers()
		_, _ = bw.WriteString("\r\n")
	}
	if w.clen >= 0 && w.written < w.clen && !w.noBody && !w.head {
		w.closeAfter = true // the client waits for bytes that will not come
	}
	if w.err == nil {
		if err := bw.Flush(); err != nil {
			w.fail(err)
		}
	}
}

func (w *h1writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.closeAfter = true
}

// writeHead writes the status line and headers, deciding the framing;
// final: the handler returned, so the body is what is pending.
func (w *h1writer) writeHead(final bool) {
	w.wroteHead = true
	h := w.header
	if v, ok := h["Connection"]; ok && httpguts.HeaderValuesContainsToken(v, "close") {
		w.closeAfter = true
	}
	for _, v := range h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(name))
			}
		}
	}
	delete(h, "Transfer-Encoding")
	bodyOK := !w.noBody
	var extra [4]string
	lines := extra[:0]
	switch {
	case !bodyOK:
		if w.code != http.StatusNotModified {
			delete(h, "Content-Length")
		}
	case w.clen >= 0:
	case w.head:
		if final && w.written > 0 {
			lines = append(lines, "Content-Length: "+strconv.FormatInt(w.written, 10))
		}
	case final && len(w.trailers) == 0:
		lines = append(lines, "Content-Length: "+strconv.Itoa(len(w.pending)))
	default:
		w.chunked = true
		lines = append(lines, "Transfer-Encoding: chunked")
	}
	if bodyOK && len(w.pending) > 0 {
		if _, ok := h["Content-Type"]; !ok && h.Get("Content-Encoding") == "" {
			lines = append(lines, "Content-Type: "+http.DetectContentType(w.pending))
		}
	}
	if _, ok := h["Date"]; !ok {
		lines = append(lines, "Date: "+httpDate())
	}
	if w.closeAfter && !httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		lines = append(lines, "Connection: close")
	}
	bw := w.hc.bw
	writeStatusLine(bw, w.code)
	writeHeader(bw, h, isTrailerPrefixed)
	for _, l := range lines {
		_, _ = bw.WriteString(l)
		_, _ = bw.WriteString("\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	if len(w.pending) > 0 && !w.head {
		p := w.pending
		w.pending = nil
		w.writeBody(p)
	}
}

func (w *h1writer) writeBody(p []byte) {
	if len(p) == 0 || w.err != nil {
		return
	}
	bw := w.hc.bw
	if w.chunked {
		var size [20]byte
		_, _ = bw.Write(strconv.AppendInt(size[:0], int64(len(p)), 16))
		_, _ = bw.WriteString("\r\n")
	}
	if _, err := bw.Write(p); err != nil {
		w.fail(err)
		return
	}
	if w.chunked {
		_, _ = bw.WriteString("\r\n")
	}
}

// writeTrailers writes the declared trailers that have values and the
// http.TrailerPrefix ones, sanitised as headers are.
func (w *h1writer) writeTrailers() {
	var t http.Header
	for _, k := range w.trailers {
		if vv := w.header[k]; len(vv) > 0 {
			if t == nil {
				t = http.Header{}
			}
			t[k] = vv
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && len(vv) > 0 {
			if t == nil {
				t = http.Header{}
			}
			t[http.CanonicalHeaderKey(name)] = vv
		}
	}
	if t != nil {
		_ = t.Write(w.hc.bw)
	}
}

func writeStatusLine(bw *bufio.Writer, code int) {
	if code >= 0 && code < len(statusLines) && statusLines[code] != "" {
		_, _ = bw.WriteString(statusLines[code])
		return
	}
	var b [64]byte
	line := append(b[:0], "HTTP/1.1 "...)
	line = strconv.AppendInt(line, int64(code), 10)
	line = append(line, ' ')
	if text := http.StatusText(code); text != "" {
		line = append(line, text...)
	} else {
		line = append(line, "status code "...)
		line = strconv.AppendInt(line, int64(code), 10)
	}
	line = append(line, "\r\n"...)
	_, _ = bw.Write(line)
}

// isTrailerPrefixed: a name the handler set for a trailer
// (http.TrailerPrefix), which the head leaves out.
func isTrailerPrefixed(k string) bool { return strings.HasPrefix(k, http.TrailerPrefix) }

// statusLines are the status lines of the codes net/http has a text for,
// made once: building one per answer cost an allocation (its buffer
// escapes through bufio.Writer.Write).
var statusLines = func() (t [600]string) {
	for code := range t {
		if text := http.StatusText(code); text != "" {
			t[code] = "HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n"
		}
	}
	return t
}()

// httpDate is the Date header's value, formatted once a second.
func httpDate() string {
	now := time.Now()
	sec := now.Unix()
	if d := dateCache.Load(); d != nil && d.sec == sec {
		return d.val
	}
	d := &cachedDate{sec: sec, val: now.UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.val
}

type cachedDate struct {
	sec int64
	val string
}

var dateCache atomic.Pointer[cachedDate]

// parseHead parses the request head at the start of the buffer when it
// is in the strictest form (headKind said plain; every header a valid
// token name and value on one line; at most one Content-Length, of
// digits; no Trailer header), with one string for the whole head and
// one array for the header values, and consumes it; nil: it declined and
// consumed nothing, http.ReadRequest is to parse it. A test holds it to
// http.ReadRequest's results.
func (hc *h1conn) parseHead(head string) *parsedRequest {
	pr := parseRequest(head)
	if pr == nil {
		return nil
	}
	req := &pr.req
	_, _ = hc.br.Discard(len(head))
	if req.ContentLength > 0 {
		pr.body.br, pr.body.left = hc.br, req.ContentLength
		req.Body = &pr.body
	} else {
		req.Body = http.NoBody
	}
	return pr
}

// parseRequest is parseHead's parser: the head s into a request, its
// URL, its header values, its context (to be set up by serve) and
// serveHTTP's exchange, in one allocation; nil: not in the form it takes.
func parseRequest(s string) *parsedRequest {
	line, rest := cutLine(s)
	method, line, _ := strings.Cut(line, " ")
	target, proto, _ := strings.Cut(line, " ")
	if proto != "HTTP/1.1" || len(target) == 0 || target[0] != '/' || !validMethod(method) {
		return nil
	}
	// The request, its URL, its header values and the state serveHTTP
	// keeps for it in one allocation.
	pr := &parsedRequest{}
	pr.ctx.x = &pr.x
	h, clen, closing, ok := parseHeaderLines(rest, true, pr.vals[:])
	if !ok {
		return nil
	}
	if !parsePlainTarget(target, &pr.url) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return nil
		}
		pr.url = *u
	}
	host := h["Host"][0]
	delete(h, "Host")
	if clen < 0 {
		clen = 0
	}
	pr.req = http.Request{Method: method, URL: &pr.url, Proto: proto, ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: host, RequestURI: target, ContentLength: clen, Close: closing}
	return pr
}

// parsedRequest is a request parseRequest made, its URL, its context and
// its body (parseHead's).
type parsedRequest struct {
	req  http.Request
	url  url.URL
	ctx  reqCtx
	body lengthBody
	vals [headerVals]string
	x    exchange // serveHTTP's state (takeExchange)
}

// headerVals is how many header values a parsed head holds with it
// (parseHeaderLines' spare); more take an allocation of their own.
const headerVals = 12

// parsePlainTarget parses an origin-form target ("/" path ["?" query])
// whose path has no escapes and nothing its default encoding would escape
// into u, as url.ParseRequestURI would (Path, RawQuery, ForceQuery, no
// RawPath); false: it is not of that form (u untouched), ParseRequestURI
// is to parse it. A test holds the two to the same URLs.
func parsePlainTarget(target string, u *url.URL) bool {
	path, query, hasQuery := strings.Cut(target, "?")
	if len(path) == 0 || path[0] != '/' {
		return false
	}
	for i := 0; i < len(path); i++ {
		if !plainPathByte[path[i]] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < 0x21 || c == 0x7f || c == '?' {
			return false // control bytes (refused), a space, a second '?'
		}
	}
	*u = url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	return true
}

// plainPathByte: the bytes a path keeps as they are in its default
// encoding (unreserved, and the sub-delimiters and separators
// url.URL.EscapedPath leaves).
var plainPathByte = func() (t [256]bool) {
	for c := range t {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~$&+,/:;=@", byte(c)) >= 0
	}
	return t
}()

// parseHeaderLines parses header lines up to the empty one: each a valid
// name and value on one line, at most one Content-Length (digits; -1
// when none), no Trailer, Transfer-Encoding, Upgrade or Expect; for a
// request exactly one valid Host. Pragma: no-cache implies Cache-Control
// as net/http has it. !ok: not in this form.
//
// The values go into spare when it has room for them.
func parseHeaderLines(rest string, request bool, spare []string) (h http.Header, clen int64, closing, ok bool) {
	var vals []string
	if n := strings.Count(rest, "\n"); n <= len(spare) {
		vals = spare[:n]
	} else {
		vals = make([]string, n)
	}
	h = make(http.Header, len(vals))
	hosts, clen := 0, int64(-1)
	var line string
	for {
		line, rest = cutLine(rest)
		if line == "" {
			break
		}
		name, value, found := strings.Cut(line, ":")
		if !found || !httpguts.ValidHeaderFieldName(name) {
			return nil, 0, false, false // also a folded line (leading space)
		}
		value = textproto.TrimString(value)
		if !httpguts.ValidHeaderFieldValue(value) {
			return nil, 0, false, false
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		switch key {
		case "Host":
			if hosts++; !request || hosts > 1 || !httpguts.ValidHostHeader(value) {
				return nil, 0, false, false
			}
		case "Content-Length":
			n, err := strconv.ParseUint(value, 10, 63)
			if clen >= 0 || err != nil || value[0] == '+' {
				return nil, 0, false, false
			}
			clen = int64(n)
		case "Connection":
			closing = closing || httpguts.HeaderValuesContainsToken([]string{value}, "close")
		case "Trailer", "Transfer-Encoding", "Upgrade", "Expect":
			return nil, 0, false, false
		}
		if have, found := h[key]; found {
			h[key] = append(have, value)
			continue
		}
		vals[0] = value
		h[key] = vals[:1:1]
		vals = vals[1:]
	}
	if request && hosts != 1 {
		return nil, 0, false, false
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		if _, found := h["Cache-Control"]; !found {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	return h, clen, closing, true
}

// cutLine splits off the first line (CRLF or LF).
func cutLine(s string) (line, rest string) {
	line, rest, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r"), rest
}

// validMethod: a method is a token.
func validMethod(m string) bool {
	return m != "" && httpguts.ValidHeaderFieldName(m)
}

// lengthBody is the body of a request or answer parsed in place: its
// Content-Length bytes from the stream's reader. Safe for concurrent use
// (a transport may still read it while the loop drains it).
type lengthBody struct {
	mu     sync.Mutex
	br     *bufio.Reader
	left   int64
	closed bool
}

var errBodyClosed = errors.New("http: invalid Read on closed Body")

func (b *lengthBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	} else if b.left == 0 {
		err = io.EOF
	}
	return n, err
}

// Close makes later reads fail; what is left is drained by the loop.
func (b *lengthBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// drain reads what is left of the body, up to max bytes; true: all of it.
func (b *lengthBody) drain(max int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left > max {
		return false
	}
	n, _ := b.br.Discard(int(b.left))
	b.left -= int64(n)
	return b.left == 0
}

// parseAnswer parses an answer whose head is whole in br when it is in
// the simplest form (HTTP/1.1, a 2xx-5xx status other than 204 and 304,
// to a request other than HEAD; one Content-Length of digits; no
// Transfer-Encoding or Trailer; every header a valid name and value on
// one line), with one string for the head and one array for the values,
// and consumes the head; nil: it declined and consumed nothing,
// http.ReadResponse is to read it. A test holds it to http.ReadResponse.
//
// The answer (h1Answer) is allocated once the status line is taken: the
// response, its body readers and its header values in one allocation.
func parseAnswer(br *bufio.Reader, req *http.Request) *h1Answer {
	if req.Method == http.MethodHead {
		return nil
	}
	b, _ := br.Peek(br.Buffered())
	end := headEnd(b)
	if end == 0 {
		return nil
	}
	s := string(b[:end])
	line, rest := cutLine(s)
	proto, status, _ := strings.Cut(line, " ")
	codeText, _, _ := strings.Cut(status, " ")
	if proto != "HTTP/1.1" || len(codeText) != 3 {
		return nil
	}
	code, err := strconv.Atoi(codeText)
	if err != nil || code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil
	}
	a := &h1Answer{}
	h, clen, closing, ok := parseHeaderLines(rest, false, a.vals[:])
	if !ok || clen < 0 {
		return nil
	}
	if closing {
		delete(h, "Connection") // as http.ReadResponse
	}
	_, _ = br.Discard(end)
	a.resp = http.Response{Status: status, StatusCode: code, Proto: proto, ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: clen, Close: closing, Request: req}
	if clen > 0 {
		a.raw.br, a.raw.left = br, clen
		a.resp.Body = &a.raw
	} else {
		a.resp.Body = http.NoBody
	}
	return a
}

// h1Answer is an answer parseAnswer parsed: the response, its body as
// read from the connection, the h1Pool's wrapper of that body, and its
// header values.
type h1Answer struct {
	resp http.Response
	raw  lengthBody
	body h1Body
	vals [headerVals]string
}
