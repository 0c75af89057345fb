package waypoint

import (
	"context"
	"net"
	"sync"
)

type streamKey struct{}

// streamConn is the HTTP server's end of one HBONE stream; st says which
// Service port it carries.
type streamConn struct {
	net.Conn
	st   *stream
	once sync.Once
	done chan struct{} // closed by Close: the HTTP server is done with it
}

func (c *streamConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

// CloseWrite keeps the half-close of the socket pair visible to net/http.
func (c *streamConn) CloseWrite() error { return closeWrite(c.Conn) }

// closeWrite half-closes c when it can, else closes it.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// streamListener hands accepted HBONE streams to the HTTP server.
//
// Concurrency: conns is unbuffered; push and Accept meet on it until done
// is closed (by Close, once).
type streamListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newStreamListener(addr net.Addr) *streamListener {
	return &streamListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return l.addr }

// serve hands one HBONE stream (the hbone Takeover) to the HTTP server
// and returns once the server closed it, the stream was reset (ctx) or
// the listener closed.
func (l *streamListener) serve(ctx context.Context, st *stream, c net.Conn) {
	sc := &streamConn{Conn: c, st: st, done: make(chan struct{})}
	select {
	case l.conns <- sc:
	case <-l.done:
		return
	case <-ctx.Done():
		return
	}
	select {
	case <-sc.done:
	case <-ctx.Done():
		_ = sc.Close()
	}
}
