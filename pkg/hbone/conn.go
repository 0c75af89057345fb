package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	// readable, if set, tells without blocking whether a Read would
	// return at once (HTTP/2).
	readable func() bool
	done     func() // returns the stream slot to the pool

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

// WriteTo copies what the peer sends to w until the peer half-closes;
// on HTTP/2 received frames go to w without an intermediate buffer.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := c.r.(io.WriterTo); ok {
		n, err := wt.WriteTo(w)
		if err != nil && c.expired.Load() {
			err = os.ErrDeadlineExceeded
		}
		return n, err
	}
	return io.Copy(w, struct{ io.Reader }{c})
}

// ReadFrom sends what r yields until r ends (it does not half-close); on
// HTTP/2 it reads straight into frame buffers.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.w.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		if err != nil && c.expired.Load() {
			err = os.ErrDeadlineExceeded
		}
		return n, err
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err != nil && c.expired.Load() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

// Readable tells, without blocking, whether a Read would return at once:
// bytes have arrived, the peer ended or reset the stream, or the tunnel
// connection is gone. known is false where the transport cannot tell
// (HTTP/3). A pool of idle streams uses it to drop the ones the peer
// closed or wrote to, without a goroutine waiting on each.
func (c *Conn) Readable() (readable, known bool) {
	if c.readable == nil {
		return false, false
	}
	return c.readable() || c.expired.Load(), true
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

// h2Conn is a pooled HTTP/2 connection on our engine.
type h2Conn struct {
	m             *mux
	peer          spiffeid.ID
	local, remote net.Addr
}

func (h *h2Conn) reserve(limit int) bool {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.goneAway || len(m.streams)+m.reserved >= min(limit, int(min(m.peerMaxStr, 1<<30))) {
		return false
	}
	m.reserved++
	return true
}

func (h *h2Conn) usable() bool {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	return !h.m.closed && !h.m.goneAway
}

func (h *h2Conn) streams() int { return h.m.active() }

func (h *h2Conn) idleSince() (time.Time, bool) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.streams)+m.reserved > 0 {
		return time.Time{}, false
	}
	return m.lastUsed, true
}

func (h *h2Conn) close() error { return h.m.close() }

func (h *h2Conn) open(ctx, life context.Context, req *Request) (*Conn, error) {
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
	m := h.m
	str, err := m.openStream(req.Authority, hdr)
	m.mu.Lock()
	m.reserved--
	m.mu.Unlock()
	if err != nil {
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: err}
	}
	select {
	case <-str.respReady:
	case <-ctx.Done():
		str.Reset()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: ctx.Err()}
	case <-life.Done():
		str.Reset()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: ErrClosed}
	}
	m.mu.Lock()
	resp, rerr := str.resp, str.reset
	m.mu.Unlock()
	if resp == nil {
		str.Reset()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: rerr}
	}
	if resp.status != "200" {
		_ = str.Close()
		code, _ := strconv.Atoi(resp.status)
		return nil, statusError(code, req)
	}
	c := streamConn(str, h.peer, h.local, h.remote)
	c.Header = resp.header
	return c, nil
}

// streamConn wraps an HTTP/2 stream as a Conn.
func streamConn(str *h2stream, peer spiffeid.ID, local, remote net.Addr) *Conn {
	return &Conn{
		r:          str,
		w:          str,
		closeWrite: str.CloseWrite,
		abort:      func(error) { str.Reset() },
		graceful:   func() { _ = str.Close() },
		setRD:      str.SetReadDeadline,
		setWD:      str.SetWriteDeadline,
		readable:   str.readable,
		done:       func() {},
		PeerID:     peer,
		local:      local,
		remote:     remote,
	}
}

// Linger bounds how long a closed HTTP/3 Conn keeps sending what was
// written before it (for a peer that stopped reading).
const Linger = 10 * time.Second
