package hbone

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// batchConn is the client's TLS connection as the HTTP/2 transport sees
// it. The transport writes every frame on its own and flushes: a 16 KiB
// DATA frame is 16393 bytes, which crypto/tls sends as two records (16384
// + 9 bytes), each sealed and written with its own syscall, and read and
// opened on its own by the peer. batchConn hands frames larger than
// batchMin to a writer goroutine, which writes what has queued in one
// tls.Conn.Write, cut at full-record boundaries while more is queued: a
// bulk upload goes out as full 16 KiB records. Small writes (headers,
// WINDOW_UPDATE, PING, small DATA) made while nothing is queued are
// written inline, so request/response latency is unchanged.
//
// Writes return before the data is sent (as with a socket's buffer); a
// write error is returned by the next Write and closes the connection.
// Queued bytes are bounded by batchMax.
//
// Invariants (mu guards the fields): busy is set while one goroutine (the
// inline writer or the writer goroutine) writes to the tls.Conn, so bytes
// go out in order; q holds bytes accepted but not yet written, and is
// non-empty only while busy; the writer goroutine runs from the first
// queued write until Close.
type batchConn struct {
	*tls.Conn
	mu      sync.Mutex
	cond    sync.Cond
	q       []byte // queued bytes, from batchPool while non-empty
	busy    bool
	err     error // sticky write error
	closed  bool
	started bool
	done    chan struct{} // closed when the writer goroutine exits
}

const (
	recordSize = 16 << 10 // crypto/tls's maximum record payload
	batchMin   = 8 << 10  // writes this large are queued, not written inline
	batchMax   = 128 << 10
)

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, batchMax+recordSize+64); return &b }}

func newBatchConn(tc *tls.Conn) *batchConn {
	b := &batchConn{Conn: tc, done: make(chan struct{})}
	b.cond.L = &b.mu
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	if !b.busy && len(b.q) == 0 && len(p) < batchMin {
		b.busy = true
		b.mu.Unlock()
		n, err := b.Conn.Write(p)
		b.mu.Lock()
		b.busy = false
		if err != nil && b.err == nil {
			b.err = err
		}
		b.cond.Broadcast()
		b.mu.Unlock()
		return n, err
	}
	for len(b.q) > 0 && len(b.q)+len(p) > batchMax && b.err == nil {
		b.cond.Wait()
	}
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	if b.q == nil {
		b.q = getBatch()
	}
	b.q = append(b.q, p...)
	if !b.started {
		b.started = true
		go b.writer()
	}
	b.cond.Broadcast()
	b.mu.Unlock()
	return len(p), nil
}

// writer sends queued bytes until Close. While more than one record is
// queued it writes whole records only and keeps the tail, which the frames
// arriving meanwhile usually complete; a tail that nothing joined goes out
// on its own in the next round, so nothing waits for a timer.
func (b *batchConn) writer() {
	defer close(b.done)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for (len(b.q) == 0 || b.busy) && !b.closed && b.err == nil {
			b.cond.Wait()
		}
		if b.closed || b.err != nil {
			return
		}
		out := b.q
		n := len(out)
		if n > recordSize {
			n -= n % recordSize
		}
		b.q = nil
		if n < len(out) {
			b.q = append(getBatch(), out[n:]...)
		}
		b.busy = true
		b.cond.Broadcast() // room in q
		b.mu.Unlock()
		_, err := b.Conn.Write(out[:n])
		putBatch(out)
		b.mu.Lock()
		b.busy = false
		if err != nil && b.err == nil {
			b.err = err
		}
		b.cond.Broadcast()
	}
}

// Close stops the writer (bytes still queued are dropped, as the transport
// closes only connections it gave up on or that are idle) and closes the
// TLS connection, forcing the socket shut if close_notify blocks.
func (b *batchConn) Close() error {
	b.mu.Lock()
	b.closed = true
	if b.err == nil {
		b.err = net.ErrClosed
	}
	started := b.started
	b.cond.Broadcast()
	b.mu.Unlock()
	t := time.AfterFunc(250*time.Millisecond, func() { _ = b.Conn.NetConn().Close() })
	err := b.Conn.Close()
	t.Stop()
	if started {
		<-b.done
	}
	b.mu.Lock()
	if b.q != nil {
		putBatch(b.q)
		b.q = nil
	}
	b.mu.Unlock()
	return err
}

func getBatch() []byte { return (*batchPool.Get().(*[]byte))[:0] }

func putBatch(b []byte) {
	b = b[:0]
	batchPool.Put(&b)
}
