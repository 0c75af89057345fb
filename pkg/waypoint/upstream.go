package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"
)

// h1Pool is the waypoint's HTTP/1.1 client for the common upstream
// request: replayable (no body or a buffered one), no upgrade, no Expect,
// no trailers, keep-alive. It writes the request and reads the response
// on the caller's goroutine over a pooled keep-alive HBONE stream to the
// endpoint, where http.Transport hands each request to a connection's
// writer goroutine and its response back from a reader goroutine (four
// goroutine switches per request). Anything else goes through the
// http.Transport (Proxy.h1), whose behaviour this one follows: the same
// request serialisation (Request.Write) and response parsing
// (http.ReadResponse), 1xx responses passed to the reverse proxy's
// httptrace hook, idle connections reused most recent first, at most
// h1MaxIdlePerHost per endpoint and h1MaxIdle in all, closed after
// h1IdleTimeout, and a request that fails on a reused connection before
// anything was sent (or, idempotent, before any response byte came back)
// retried on another one, as the Transport does.
//
// Concurrency: mu guards idle, n, closed and the sweep timer; an h1Conn
// belongs to one request at a time.
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
	idleAt time.Time
	// Bytes written to and read from conn (through bw and br), to tell a
	// connection the endpoint closed while idle from a failed request.
	written, read int64
}

func (pc *h1Conn) Read(b []byte) (int, error) {
	n, err := pc.conn.Read(b)
	pc.read += int64(n)
	return n, err
}

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
			_ = pc.conn.Close()
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
		if len(cs) == 1 {
			delete(pl.idle, host)
		} else {
			pl.idle[host] = cs[:len(cs)-1]
		}
		pl.n--
		if now.Sub(pc.idleAt) < h1IdleTimeout {
			return pc
		}
		stale = append(stale, pc)
	}
}

// put keeps pc for the next request to its host, or closes it.
func (pl *h1Pool) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	pl.mu.Lock()
	if pl.closed || pl.n >= h1MaxIdle || len(pl.idle[pc.host]) >= h1MaxIdlePerHost {
		pl.mu.Unlock()
		_ = pc.conn.Close()
		return
	}
	if pl.idle == nil {
		pl.idle = map[string][]*h1Conn{}
	}
	pl.idle[pc.host] = append(pl.idle[pc.host], pc)
	pl.n++
	if pl.sweep == nil {
		pl.sweep = time.AfterFunc(h1IdleTimeout, pl.closeExpired)
	}
	pl.mu.Unlock()
}

// closeExpired is the sweep timer: it closes the connections idle for
// h1IdleTimeout and runs again while any is left.
func (pl *h1Pool) closeExpired() {
	now := time.Now()
	var expired []*h1Conn
	pl.mu.Lock()
	for host, cs := range pl.idle {
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
		_ = pc.conn.Close()
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
			_ = pc.conn.Close()
		}
	}
}

// roundTrip sends req (its URL.Host is the endpoint; body is its buffered
// body) and returns the response, whose body must be closed.
func (pl *h1Pool) roundTrip(req *http.Request, body []byte) (*http.Response, error) {
	ctx := req.Context()
	for try := 0; ; try++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if try > 0 && len(body) > 0 {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		pc := pl.get(req.URL.Host)
		reused := pc != nil
		if pc == nil {
			c, err := pl.dial(ctx, req.URL.Host)
			if err != nil {
				return nil, err
			}
			pc = &h1Conn{conn: c, host: req.URL.Host}
			pc.br = bufio.NewReader(pc)
			pc.bw = bufio.NewWriter(pc)
		}
		resp, retry, err := pl.exchange(ctx, pc, req)
		if err == nil {
			return resp, nil
		}
		_ = pc.conn.Close()
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
func (pl *h1Pool) exchange(ctx context.Context, pc *h1Conn, req *http.Request) (resp *http.Response, retry bool, err error) {
	stop := context.AfterFunc(ctx, func() { _ = pc.conn.Close() }) // unblocks the I/O below
	written, read := pc.written, pc.read
	if err = req.Write(pc.bw); err == nil {
		err = pc.bw.Flush()
	}
	if err != nil {
		stop()
		pc.bw.Reset(pc)
		return nil, pc.written == written, err
	}
	for n1xx := 0; ; {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			stop()
			return nil, pc.read == read && idempotent(req), err
		}
		code := resp.StatusCode
		if code < 100 || code >= 200 || code == http.StatusSwitchingProtocols {
			break
		}
		if n1xx++; n1xx > h1Max1xx {
			stop()
			return nil, false, errors.New("net/http: too many 1xx informational responses")
		}
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				stop()
				return nil, false, err
			}
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// As http.Transport: the body is the connection, which the
		// caller now owns.
		stop()
		resp.Body = &switchedBody{br: pc.br, conn: pc.conn}
		return resp, false, nil
	}
	reuse := !resp.Close && !req.Close
	if resp.Body == http.NoBody || resp.Body == nil {
		if !stop() || !reuse {
			_ = pc.conn.Close()
		} else {
			pl.put(pc)
		}
		return resp, false, nil
	}
	resp.Body = &h1Body{rc: resp.Body, pc: pc, pl: pl, stop: stop, reuse: reuse}
	return resp, false, nil
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
	pl    *h1Pool
	stop  func() bool
	reuse bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
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
	if b.stop() && complete && b.reuse {
		b.pl.put(b.pc)
		return
	}
	_ = b.pc.conn.Close()
}

// switchedBody is the body of a 101 answer: the connection itself.
type switchedBody struct {
	br   *bufio.Reader
	conn net.Conn
}

func (b *switchedBody) Read(p []byte) (int, error)  { return b.br.Read(p) }
func (b *switchedBody) Write(p []byte) (int, error) { return b.conn.Write(p) }
func (b *switchedBody) Close() error                { return b.conn.Close() }
