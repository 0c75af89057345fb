package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// Conn is one established HBONE stream. It is a net.Conn with CloseWrite
// (half-close: END_STREAM on HTTP/2, FIN on HTTP/3).
//
// Read and Write may be called concurrently with each other and with
// Close. Deadlines on HTTP/2 streams are terminal: when one passes, the
// stream is reset and later calls fail with os.ErrDeadlineExceeded.
type Conn struct {
	r          io.Reader
	w          io.Writer
	closeWrite func() error
	abort      func(err error) // resets both directions; idempotent
	// graceful, if set, closes the send side and resets the receive side
	// once what was written is sent (Close of a TCP socket).
	graceful func()
	// setRD/setWD, if set, are native deadlines (HTTP/3): not terminal.
	setRD, setWD func(time.Time) error
	done         func() // returns the stream slot to the pool

	// PeerID is the identity the tunnel peer presented.
	PeerID spiffeid.ID
	// Header holds the 200 response's headers (e.g. the destination baggage).
	Header http.Header

	local, remote net.Addr
	closeOnce     sync.Once
	expired       atomic.Bool
	dmu           sync.Mutex // guards the deadline timers
	rTimer        *time.Timer
	wTimer        *time.Timer
}

var _ net.Conn = (*Conn)(nil)

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if err != nil && c.expired.Load() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err != nil && c.expired.Load() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

// CloseWrite ends the send direction; reads continue until the peer ends.
func (c *Conn) CloseWrite() error { return c.closeWrite() }

// Close ends the stream like closing a TCP socket: bytes already written
// are still delivered (END_STREAM/FIN follows them), the receive side is
// reset, and the stream's pool slot is freed once the send side finishes
// (at most Linger later).
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.graceful != nil && !c.expired.Load() {
			c.graceful()
		} else {
			c.abort(net.ErrClosed)
		}
		c.dmu.Lock()
		if c.rTimer != nil {
			c.rTimer.Stop()
		}
		if c.wTimer != nil {
			c.wTimer.Stop()
		}
		c.dmu.Unlock()
		c.done()
	})
	return nil
}

func (c *Conn) LocalAddr() net.Addr  { return c.local }
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.setRD != nil {
		return c.setRD(t)
	}
	c.setTimer(&c.rTimer, t)
	return nil
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.setWD != nil {
		return c.setWD(t)
	}
	c.setTimer(&c.wTimer, t)
	return nil
}

func (c *Conn) setTimer(tp **time.Timer, t time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if *tp != nil {
		(*tp).Stop()
		*tp = nil
	}
	if t.IsZero() {
		return
	}
	fire := func() {
		c.expired.Store(true)
		c.abort(os.ErrDeadlineExceeded)
	}
	if d := time.Until(t); d > 0 {
		*tp = time.AfterFunc(d, fire)
	} else {
		fire()
	}
}

// statusError builds the client-side error for a non-200 answer.
func statusError(status int, req *Request) error {
	var cause error
	switch status {
	case http.StatusBadRequest:
		cause = ErrBadRequest
	case http.StatusUnauthorized:
		cause = ErrUnauthorized
	case http.StatusServiceUnavailable:
		cause = ErrUpstream
	default:
		cause = ErrProtocol
	}
	return &Error{Status: status, Op: "connect", Peer: req.Authority + " via " + req.Address.String(), Err: cause}
}

// h2Conn is a pooled HTTP/2 connection. The ClientConn counts its own
// streams; lastUsed (unix nanos) is ours, for idle release.
type h2Conn struct {
	cc            *http2.ClientConn
	peer          spiffeid.ID
	addr          string
	local, remote net.Addr
	created       time.Time
	lastUsed      atomic.Int64
}

func (h *h2Conn) reserve(max int) bool {
	st := h.cc.State()
	if st.Closed || st.Closing || st.StreamsActive+st.StreamsReserved+st.StreamsPending >= max {
		return false
	}
	return h.cc.ReserveNewRequest()
}

func (h *h2Conn) usable() bool {
	st := h.cc.State()
	return !st.Closed && !st.Closing
}

func (h *h2Conn) streams() int {
	st := h.cc.State()
	return st.StreamsActive + st.StreamsReserved + st.StreamsPending
}

func (h *h2Conn) idleSince() (time.Time, bool) {
	if h.streams() > 0 {
		return time.Time{}, false
	}
	if u := h.lastUsed.Load(); u != 0 {
		return time.Unix(0, u), true
	}
	return h.created, true
}

func (h *h2Conn) close() error { return h.cc.Close() }

func (h *h2Conn) open(ctx, life context.Context, req *Request) (*Conn, error) {
	h.lastUsed.Store(time.Now().UnixNano())
	sctx, cancel := context.WithCancel(life)
	stop := context.AfterFunc(ctx, cancel)
	pipe := newBufPipe()
	sent := make(chan struct{})
	hdr := make(http.Header, 3)
	if req.Forwarded != "" {
		hdr["Forwarded"] = []string{req.Forwarded}
	}
	if req.Baggage != "" {
		hdr["Baggage"] = []string{req.Baggage}
	}
	if req.Traceparent != "" {
		hdr["Traceparent"] = []string{req.Traceparent}
	}
	hreq := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: req.Authority},
		Host:          req.Authority,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        hdr,
		Body:          &reqBody{bufPipe: pipe, sent: sent},
		ContentLength: -1,
	}).WithContext(sctx)
	resp, err := h.cc.RoundTrip(hreq)
	if !stop() {
		// ctx ended while the CONNECT was in flight.
		if err == nil {
			_ = resp.Body.Close()
		}
		_ = pipe.CloseWrite()
		cancel()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: ctx.Err()}
	}
	if err != nil {
		_ = pipe.CloseWrite()
		cancel()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		_ = resp.Body.Close()
		_ = pipe.CloseWrite()
		cancel()
		return nil, statusError(resp.StatusCode, req)
	}
	var abortOnce sync.Once
	body := resp.Body
	abort := func(err error) {
		abortOnce.Do(func() {
			_ = pipe.CloseWithError(err)
			_ = body.Close()
			cancel()
		})
	}
	return &Conn{
		r:          body,
		w:          pipe,
		closeWrite: pipe.CloseWrite,
		abort:      abort,
		graceful: func() {
			_ = pipe.CloseWrite()
			go func() {
				t := time.NewTimer(Linger)
				defer t.Stop()
				select {
				case <-sent:
				case <-t.C:
				case <-sctx.Done():
				}
				abort(net.ErrClosed)
			}()
		},
		done:   func() { h.lastUsed.Store(time.Now().UnixNano()) },
		PeerID: h.peer,
		Header: resp.Header,
		local:  h.local,
		remote: h.remote,
	}, nil
}

// Linger bounds how long a closed Conn keeps sending what was written
// before it (for a peer that stopped reading).
const Linger = 10 * time.Second

// reqBody is the HTTP/2 request body; the transport closes it once the
// body is fully sent (END_STREAM written) or the stream aborted.
type reqBody struct {
	*bufPipe
	once sync.Once
	sent chan struct{}
}

func (b *reqBody) Close() error {
	b.once.Do(func() { close(b.sent) })
	return b.bufPipe.Close()
}
