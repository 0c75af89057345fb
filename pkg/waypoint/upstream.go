package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
)

// h1Pool is the waypoint's HTTP/1.1 client for the common upstream
// request: replayable (no body or a buffered one), no upgrade, no Expect,
// no trailers, keep-alive. The caller's goroutine writes the request and
// reads the response over a pooled keep-alive HBONE stream to the
// endpoint. An HTTP/2 HBONE stream tells without blocking whether the
// endpoint ended it or sent bytes while it was idle (hbone.Conn.Readable),
// so such a connection is dropped when next taken from the pool, and no
// goroutine waits on idle connections. Other connections (HTTP/3) get one
// watcher goroutine each that waits for the first bytes of each answer
// (and, while the connection is idle, notices the endpoint closing it, as
// http.Transport's reader does). http.Transport instead hands each request
// to a writer goroutine and each response back from its reader, five
// goroutine switches per request to our one (three with a watcher).
// Anything else goes through the http.Transport (Proxy.h1), whose
// behaviour this one follows: the same request serialisation
// (Request.Write) and response parsing (http.ReadResponse), 1xx responses
// passed to the caller's relay (forward's), idle connections reused
// most recent first, at most h1MaxIdlePerHost per endpoint and h1MaxIdle
// in all, closed after h1IdleTimeout, and a request that fails on a reused
// connection before anything was sent (or, idempotent, before any
// response byte came back) retried on another one.
//
// Concurrency: mu guards idle, n, closed and the sweep timer; an h1Conn
// belongs to one request at a time, and its watcher, if any, reads only
// between the request being written and its answer arriving, or while it
// is idle.
type h1Pool struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)

	mu     sync.Mutex
	idle   map[string][]*h1Conn // by endpoint host:port, oldest first
	n      int                  // idle connections in all
	sweep  *time.Timer
	closed bool
}

const (
	h1MaxIdlePerHost = 256
	h1MaxIdle        = 1024
	h1IdleTimeout    = 90 * time.Second
	h1Max1xx         = 5 // as http.Transport: more 1xx answers than this fail the request
)

// h1Conn is one upstream HTTP/1.1 connection.
type h1Conn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	host   string
	pl     *h1Pool
	idleAt time.Time // under pl.mu
	// Bytes written to and read from conn (through bw and br), to tell a
	// connection the endpoint closed while idle from a failed request.
	written   int64
	read      atomic.Int64 // also counted by the watcher, while the request may look
	headLimit int64        // while reading an answer's head: the most read may reach

	// ready, when the connection can tell without blocking that it has
	// something to read (an HTTP/2 HBONE stream), replaces the watcher:
	// the request reads its answer itself, and an idle connection the
	// endpoint closed or wrote to is dropped when next taken.
	ready readabler
	// The watcher's, otherwise (nil with ready).
	avail  chan error    // the watcher: an answer is there (nil) or the connection failed
	resume chan struct{} // to the watcher: the answer was read, wait for the next one
	// While armed, the connection closes if the request's context ends
	// (arm): through the slot of armedOn, a serveH1 request's context, or
	// context.AfterFunc, which stopCtx undoes. closer (made once per
	// connection) closes conn.
	armedOn *reqCtx
	stopCtx func() bool
	closer  *hook

	mu    sync.Mutex
	busy  bool // checked out by a request
	dead  bool
	kill1 sync.Once
}

// readabler is a connection that tells without blocking whether a Read
// would return at once (hbone.Conn).
type readabler interface {
	Readable() (readable, known bool)
}

func (pl *h1Pool) newConn(c net.Conn, host string) *h1Conn {
	pc := &h1Conn{conn: c, host: host, pl: pl, busy: true}
	pc.closer = &hook{f: func() { _ = pc.conn.Close() }}
	pc.br = bufio.NewReader(pc)
	pc.bw = bufio.NewWriter(pc)
	if r, ok := c.(readabler); ok {
		if _, known := r.Readable(); known {
			pc.ready = r
			return pc
		}
	}
	pc.avail, pc.resume = make(chan error, 1), make(chan struct{}, 1)
	go pc.watch()
	return pc
}

// unusable tells whether an idle connection got bytes or its end (only
// known without the watcher: the watcher marks it dead itself).
func (pc *h1Conn) unusable() bool {
	if pc.ready == nil {
		return false
	}
	r, _ := pc.ready.Readable()
	return r
}

// watch waits for each answer's first byte and hands the reading over to
// the request; a connection that gets bytes or EOF while idle is closed.
func (pc *h1Conn) watch() {
	for {
		_, err := pc.br.Peek(1)
		pc.mu.Lock()
		if !pc.busy {
			// Closed (or unsolicited bytes) while idle: unusable.
			pc.dead = true
			pc.mu.Unlock()
			pc.pl.remove(pc)
			pc.kill()
			return
		}
		pc.mu.Unlock()
		pc.avail <- err
		if err != nil {
			return
		}
		if _, ok := <-pc.resume; !ok {
			return
		}
	}
}

// kill closes the connection and ends its watcher.
func (pc *h1Conn) kill() {
	pc.kill1.Do(func() {
		_ = pc.conn.Close()
		if pc.resume != nil {
			close(pc.resume)
		}
	})
}

// release returns a connection whose answer was read to its end to the
// pool, or closes it.
func (pc *h1Conn) release(reuse bool) {
	if !reuse || !pc.pl.put(pc) {
		pc.kill()
		return
	}
	if pc.resume != nil {
		pc.resume <- struct{}{}
	}
}

func (pc *h1Conn) Read(b []byte) (int, error) {
	if pc.headLimit > 0 {
		read := pc.read.Load()
		if read >= pc.headLimit {
			return 0, errHeadTooLarge
		}
		b = b[:min(int64(len(b)), pc.headLimit-read)]
	}
	n, err := pc.conn.Read(b)
	pc.read.Add(int64(n))
	return n, err
}

// h1MaxHead bounds an answer's head as http.Transport's default
// MaxResponseHeaderBytes does.
const h1MaxHead = 10 << 20

var errHeadTooLarge = errors.New("net/http: server response headers exceeded 10485760 bytes; aborted")

func (pc *h1Conn) Write(b []byte) (int, error) {
	n, err := pc.conn.Write(b)
	pc.written += int64(n)
	return n, err
}

// usesH1Pool tells whether out (one try of c) can go through the h1Pool.
func usesH1Pool(out *http.Request, c *call) bool {
	if c.h2 || c.body == nil || out.Close || len(out.Trailer) > 0 {
		return false
	}
	_, upgrade := out.Header["Upgrade"]
	_, expect := out.Header["Expect"]
	return !upgrade && !expect
}

func (pl *h1Pool) get(host string) *h1Conn {
	now := time.Now()
	var stale []*h1Conn
	defer func() {
		for _, pc := range stale {
			pc.kill()
		}
	}()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for {
		cs := pl.idle[host]
		if len(cs) == 0 {
			return nil
		}
		pc := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		pl.idle[host] = cs[:len(cs)-1] // kept when empty: the next put reuses it
		pl.n--
		if now.Sub(pc.idleAt) >= h1IdleTimeout || pc.unusable() {
			stale = append(stale, pc)
			continue
		}
		pc.mu.Lock()
		ok := !pc.dead
		pc.busy = ok
		pc.mu.Unlock()
		if ok {
			return pc
		}
	}
}

// put makes pc idle in the pool; false: the pool is full or closed.
func (pl *h1Pool) put(pc *h1Conn) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed || pl.n >= h1MaxIdle || len(pl.idle[pc.host]) >= h1MaxIdlePerHost {
		return false
	}
	pc.mu.Lock()
	pc.busy = false
	pc.mu.Unlock()
	pc.idleAt = time.Now()
	if pl.idle == nil {
		pl.idle = map[string][]*h1Conn{}
	}
	pl.idle[pc.host] = append(pl.idle[pc.host], pc)
	pl.n++
	if pl.sweep == nil {
		pl.sweep = time.AfterFunc(h1IdleTimeout, pl.closeExpired)
	}
	return true
}

// remove drops pc from the idle connections.
func (pl *h1Pool) remove(pc *h1Conn) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	cs := pl.idle[pc.host]
	for i, c := range cs {
		if c == pc {
			cs = append(cs[:i], cs[i+1:]...)
			cs = cs[:len(cs):len(cs)]
			pl.n--
			if len(cs) == 0 {
				delete(pl.idle, pc.host)
			} else {
				pl.idle[pc.host] = cs
			}
			return
		}
	}
}

// closeExpired is the sweep timer: it closes the connections idle for
// h1IdleTimeout and runs again while any is left.
func (pl *h1Pool) closeExpired() {
	now := time.Now()
	var expired []*h1Conn
	pl.mu.Lock()
	for host, cs := range pl.idle {
		if len(cs) == 0 {
			delete(pl.idle, host)
			continue
		}
		i := 0
		for i < len(cs) && now.Sub(cs[i].idleAt) >= h1IdleTimeout {
			i++
		}
		if i == 0 {
			continue
		}
		expired = append(expired, cs[:i]...)
		pl.n -= i
		if i == len(cs) {
			delete(pl.idle, host)
		} else {
			pl.idle[host] = append(cs[:0:0], cs[i:]...)
		}
	}
	pl.sweep = nil
	if pl.n > 0 && !pl.closed {
		pl.sweep = time.AfterFunc(h1IdleTimeout/2, pl.closeExpired)
	}
	pl.mu.Unlock()
	for _, pc := range expired {
		pc.kill()
	}
}

// closeIdle closes the idle connections; with stop, later ones are closed
// instead of pooled.
func (pl *h1Pool) closeIdle(stop bool) {
	pl.mu.Lock()
	idle := pl.idle
	pl.idle, pl.n = nil, 0
	if pl.sweep != nil {
		pl.sweep.Stop()
		pl.sweep = nil
	}
	pl.closed = pl.closed || stop
	pl.mu.Unlock()
	for _, cs := range idle {
		for _, pc := range cs {
			pc.kill()
		}
	}
}

// roundTrip sends req (its URL.Host is the endpoint; body is its buffered
// body) and returns the response, whose body must be closed.
//
// on1xx, if not nil, gets the endpoint's 1xx answers (the caller's relay;
// http.Transport takes it from the context's client trace instead).
func (pl *h1Pool) roundTrip(req *http.Request, body []byte, on1xx relay1xx) (*http.Response, error) {
	ctx := req.Context()
	for try := 0; ; try++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pc := pl.get(req.URL.Host)
		reused := pc != nil
		if pc == nil {
			c, err := pl.dial(ctx, req.URL.Host)
			if err != nil {
				return nil, err
			}
			pc = pl.newConn(c, req.URL.Host)
		}
		resp, retry, err := pl.exchange(ctx, pc, req, body, on1xx)
		if err == nil {
			return resp, nil
		}
		pc.kill()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !reused || !retry {
			return nil, err
		}
	}
}

// exchange runs one request on pc. On error pc is to be closed; retry
// tells whether the request may be sent again on another connection.
//
// The request's context ending closes the connection, which unblocks
// whatever I/O waits on it; that hook (arm: a slot of a serveH1
// request's context, else context.AfterFunc) is set only around I/O that
// may block: a write larger than the buffer or with a body, and reads of
// bytes not buffered yet.
func (pl *h1Pool) exchange(ctx context.Context, pc *h1Conn, req *http.Request, body []byte, on1xx relay1xx) (resp *http.Response, retry bool, err error) {
	if (req.Body != nil && req.Body != http.NoBody) || !smallRequest(req) {
		pc.arm(ctx)
	}
	written, read := pc.written, pc.read.Load()
	if !writeRequest(pc.bw, req, body) {
		if len(body) > 0 {
			// The buffered body as a reader net/http knows is in
			// memory: the request goes out in one write (for any other
			// reader Request.Write flushes the head first, a second TLS
			// record and system call).
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		err = req.Write(pc.bw)
	}
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil {
		pc.disarm()
		pc.bw.Reset(pc)
		return nil, pc.written == written, err
	}
	if pc.ready != nil {
		// No watcher: this request reads its answer, and the end of its
		// context must unblock that read.
		pc.arm(ctx)
		_, err = pc.br.Peek(1)
	} else if pc.armed() {
		err = <-pc.avail // the watcher saw the answer's first byte, or the end
	} else {
		select {
		case err = <-pc.avail:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
	if err != nil {
		pc.disarm()
		return nil, pc.read.Load() == read && idempotent(req), err
	}
	var ans *h1Answer
	for n1xx := 0; ; {
		if !pc.armed() && !headerBuffered(pc.br) {
			pc.arm(ctx)
		}
		if ans = parseAnswer(pc.br, req); ans != nil {
			resp = &ans.resp
		} else {
			pc.headLimit = pc.read.Load() + h1MaxHead
			resp, err = http.ReadResponse(pc.br, req)
			pc.headLimit = 0
		}
		if err != nil {
			pc.disarm()
			return nil, pc.read.Load() == read && idempotent(req), err
		}
		code := resp.StatusCode
		if code < 100 || code >= 200 || code == http.StatusSwitchingProtocols {
			break
		}
		if n1xx++; n1xx > h1Max1xx {
			pc.disarm()
			return nil, false, errors.New("net/http: too many 1xx informational responses")
		}
		if on1xx != nil {
			if err := on1xx.got1xx(code, textproto.MIMEHeader(resp.Header)); err != nil {
				pc.disarm()
				return nil, false, err
			}
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// As http.Transport: the body is the connection, which the
		// caller now owns.
		pc.disarm()
		resp.Body = &switchedBody{br: pc.br, pc: pc}
		// Upgrades do not come here (usesH1Pool): the reverse proxy
		// refuses this answer without closing it, so the request's end
		// does.
		context.AfterFunc(ctx, pc.kill)
		return resp, false, nil
	}
	reuse := !resp.Close && !req.Close
	if resp.Body == http.NoBody || resp.Body == nil {
		pc.release(pc.disarm() && reuse)
		return resp, false, nil
	}
	var hb *h1Body
	if ans != nil {
		hb = &ans.body // allocated with the answer
	} else {
		hb = new(h1Body)
	}
	*hb = h1Body{rc: resp.Body, pc: pc, ctx: ctx, left: resp.ContentLength, reuse: reuse}
	resp.Body = hb
	return resp, false, nil
}

// armed tells whether arm is in force.
func (pc *h1Conn) armed() bool { return pc.armedOn != nil || pc.stopCtx != nil }

// arm closes pc's connection when ctx ends, until disarm.
func (pc *h1Conn) arm(ctx context.Context) {
	if pc.armed() {
		return
	}
	if rc, ok := ctx.(*reqCtx); ok {
		taken, ended := rc.armSlot(pc.closer)
		if ended {
			go pc.closer.f()
		}
		if ended || !taken {
			pc.armedOn = rc // disarm reports an ended one
			return
		}
	}
	pc.stopCtx = context.AfterFunc(ctx, pc.closer.f)
}

// disarm undoes arm; false: ctx ended and closed the connection.
func (pc *h1Conn) disarm() bool {
	if rc := pc.armedOn; rc != nil {
		pc.armedOn = nil
		return rc.disarmSlot(pc.closer)
	}
	if pc.stopCtx == nil {
		return true
	}
	ok := pc.stopCtx()
	pc.stopCtx = nil
	return ok
}

// smallRequest tells whether req's head surely fits the connection's
// write buffer (so writing it cannot block on the endpoint).
func smallRequest(req *http.Request) bool {
	n := len(req.Method) + len(req.Host) + len(req.URL.Path) + len(req.URL.RawPath) + len(req.URL.RawQuery) + 64
	for k, vs := range req.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n < 2048
}

// headerBuffered tells whether a whole response head is in br already.
func headerBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\r\n\r\n"))
}

// idempotent is http.Transport's test for retrying a request whose
// connection failed before any answer.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := req.Header["Idempotency-Key"]
	_, b := req.Header["X-Idempotency-Key"]
	return a || b
}

// h1Body is a response body on an h1Conn: read to its end, the
// connection goes back to the pool; closed before, or broken, it is
// closed.
type h1Body struct {
	rc    io.ReadCloser
	pc    *h1Conn
	ctx   context.Context
	left  int64 // body bytes still to come; -1: unknown
	reuse bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if !b.pc.armed() && (b.left < 0 || int64(b.pc.br.Buffered()) < b.left) {
		b.pc.arm(b.ctx) // this read may wait for the endpoint
	}
	n, err := b.rc.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *h1Body) finish(complete bool) {
	b.done = true
	_ = b.rc.Close()
	b.pc.release(b.pc.disarm() && complete && b.reuse)
}

// switchedBody is the body of a 101 answer: the connection itself.
type switchedBody struct {
	br *bufio.Reader
	pc *h1Conn
}

func (b *switchedBody) Read(p []byte) (int, error)  { return b.br.Read(p) }
func (b *switchedBody) Write(p []byte) (int, error) { return b.pc.conn.Write(p) }
func (b *switchedBody) Close() error                { b.pc.kill(); return nil }

// writeRequest writes req, whose body is body, as Request.Write would,
// byte for byte, without its per-request state (a transfer writer, a
// buffered writer check, Fprintf): for a request with a plain ASCII host
// (no IDNA, no zone), an origin-form URL, no Transfer-Encoding and no
// trailers. false: it wrote nothing, Request.Write is to. A test holds
// the two to the same bytes.
func writeRequest(bw *bufio.Writer, req *http.Request, body []byte) bool {
	host := req.Host
	if host == "" && req.URL != nil {
		host = req.URL.Host
	}
	if host == "" || req.URL == nil || req.URL.Opaque != "" || req.Method == http.MethodConnect ||
		len(req.TransferEncoding) > 0 || len(req.Trailer) > 0 || !httpguts.ValidHostHeader(host) {
		return false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c >= utf8.RuneSelf || c == '%' {
			return false // punycode or a zone: Request.Write's business
		}
	}
	uri := req.URL.RequestURI()
	for i := 0; i < len(uri); i++ {
		if c := uri[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	ua := "Go-http-client/1.1"
	if v, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(v) > 0 {
			ua = textproto.TrimString(newlineToSpace.Replace(v[0]))
		}
	}
	_, _ = bw.WriteString(method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(uri)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	if ua != "" {
		_, _ = bw.WriteString("User-Agent: ")
		_, _ = bw.WriteString(ua)
		_, _ = bw.WriteString("\r\n")
	}
	if req.Close && !httpguts.HeaderValuesContainsToken([]string{req.Header.Get("Connection")}, "close") {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	if len(body) > 0 || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		var n [20]byte
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.Write(strconv.AppendInt(n[:0], int64(len(body)), 10))
		_, _ = bw.WriteString("\r\n")
	}
	writeHeader(bw, req.Header, requestExcluded)
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(body)
	return true
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// requestExcluded tells the headers Request.Write writes itself.
func requestExcluded(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// writeHeader writes h as http.Header.WriteSubset does, byte for byte:
// sorted by name, names that are not tokens left out, CR and LF in values
// made spaces, values trimmed; skip, if not nil, tells names not to
// write. Without WriteSubset's sorter pool and exclude map it costs a
// third less (a test holds the two to the same bytes).
func writeHeader(bw *bufio.Writer, h http.Header, skip func(string) bool) {
	type field struct {
		name   string
		values []string
	}
	var buf [16]field
	fs := buf[:0]
	for k, vv := range h {
		if skip == nil || !skip(k) {
			fs = append(fs, field{k, vv})
		}
	}
	slices.SortFunc(fs, func(a, b field) int { return strings.Compare(a.name, b.name) })
	for _, f := range fs {
		if !httpguts.ValidHeaderFieldName(f.name) {
			continue
		}
		for _, v := range f.values {
			if strings.IndexByte(v, '\n') >= 0 || strings.IndexByte(v, '\r') >= 0 { // ContainsAny costs more
				v = newlineToSpace.Replace(v)
			}
			_, _ = bw.WriteString(f.name)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(textproto.TrimString(v))
			_, _ = bw.WriteString("\r\n")
		}
	}
}
