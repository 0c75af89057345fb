package xds

import (
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// coalescingCreds wraps TLS transport credentials so that each write gRPC
// makes reaches the socket as one write: crypto/tls writes every record
// (at most 16 KiB) to the connection by itself, so a full push of 1.7 MB
// was ~110 write system calls per client, and as many wake-ups and reads
// on the client's side. Here the records of one gRPC write are gathered
// under the TLS connection and written together. The bytes on the wire are
// the same.
type coalescingCreds struct {
	credentials.TransportCredentials
}

func (c coalescingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	under := &gatherConn{Conn: raw}
	conn, info, err := c.TransportCredentials.ServerHandshake(under)
	if err != nil {
		return nil, nil, err
	}
	return &flushConn{Conn: conn, under: under}, info, nil
}

func (c coalescingCreds) Clone() credentials.TransportCredentials {
	return coalescingCreds{c.TransportCredentials.Clone()}
}

// gatherConn is the raw connection under TLS: while a flushConn write is
// in progress (held > 0) the records TLS writes are gathered in buf.
// Writes TLS makes at other times (handshake, alerts, key updates from the
// read side) go straight through, after anything gathered, in order: mu
// serializes them.
type gatherConn struct {
	net.Conn

	mu   sync.Mutex
	held int     // guarded by mu
	buf  *[]byte // from gatherPool while holding; guarded by mu
}

// gatherPool holds the buffers of writes in progress: a connection keeps
// none between writes.
var gatherPool = sync.Pool{New: func() any { b := make([]byte, 0, writeBufferSize+writeBufferSize/8); return &b }}

func (g *gatherConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held > 0 {
		if g.buf == nil {
			g.buf = gatherPool.Get().(*[]byte)
		}
		*g.buf = append(*g.buf, p...)
		return len(p), nil
	}
	return g.Conn.Write(p)
}

func (g *gatherConn) hold() {
	g.mu.Lock()
	g.held++
	g.mu.Unlock()
}

// release ends a hold and writes what was gathered once no hold is left.
func (g *gatherConn) release() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held--
	if g.held > 0 || g.buf == nil {
		return nil
	}
	_, err := g.Conn.Write(*g.buf)
	*g.buf = (*g.buf)[:0]
	gatherPool.Put(g.buf)
	g.buf = nil
	return err
}

// flushConn is the TLS connection gRPC writes to.
type flushConn struct {
	net.Conn // the *tls.Conn
	under    *gatherConn
}

func (f *flushConn) Write(p []byte) (int, error) {
	f.under.hold()
	n, err := f.Conn.Write(p)
	if ferr := f.under.release(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}
