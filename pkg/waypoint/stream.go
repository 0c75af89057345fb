package waypoint

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"

	"github.com/ambient-mesh/mesh/pkg/hbone"
)

type streamKey struct{}

// streamConn is the HTTP server's end of one HBONE stream; st says which
// Service port it carries.
type streamConn struct {
	net.Conn
	st *stream
}

// CloseWrite keeps the half-close of the socket pair visible to net/http.
func (c *streamConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
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

// push connects a new stream to the HTTP server and returns the end the
// HBONE server copies to and from.
func (l *streamListener) push(st *stream) (net.Conn, error) {
	select {
	case <-l.done:
		return nil, refuse(st.in, http.StatusServiceUnavailable, "waypoint draining")
	default:
	}
	outer, inner, err := socketPair()
	if err != nil {
		return nil, &hbone.Error{Status: http.StatusServiceUnavailable, Op: "admit", Peer: st.in.Target, Err: err}
	}
	select {
	case l.conns <- &streamConn{Conn: inner, st: st}:
		return outer, nil
	case <-l.done:
		_ = outer.Close()
		_ = inner.Close()
		return nil, refuse(st.in, http.StatusServiceUnavailable, "waypoint draining")
	}
}

// socketPair is a connected pair of unix stream sockets: kernel-buffered
// both ways, with deadlines and half-close, which net/http's server needs
// from its connections.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	a, errA := fileConn(fds[0])
	b, errB := fileConn(fds[1])
	if err := errors.Join(errA, errB); err != nil {
		if a != nil {
			_ = a.Close()
		}
		if b != nil {
			_ = b.Close()
		}
		return nil, nil, err
	}
	return a, b, nil
}

func fileConn(fd int) (net.Conn, error) {
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "waypoint-stream")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("socketpair conn: %w", err)
	}
	return c, nil
}
