package hbone

import (
	"io"
	"sync"
)

// pipeBuffer is the capacity of a bufPipe: how much a writer may run ahead
// of the HTTP/2 transport before Write blocks.
const pipeBuffer = 256 << 10

var pipePool = sync.Pool{New: func() any { b := make([]byte, pipeBuffer); return &b }}

// bufPipe connects Conn.Write to the HTTP/2 transport's request-body
// reader. Unlike io.Pipe it buffers, so a writer and the transport do not
// hand off every frame-sized chunk to each other (two goroutine switches
// per 16 KiB under io.Pipe). The buffer is taken from a pool when data
// arrives and returned when drained, so idle streams hold none.
//
// All fields are guarded by mu; cond signals both readers and writers.
type bufPipe struct {
	mu    sync.Mutex
	cond  sync.Cond
	buf   *[]byte // nil while empty
	r, w  int     // unread data is (*buf)[r:w]
	ext   []byte  // unread part of a lent Write; read after buf, which is then nil
	werr  error   // set by CloseWrite/CloseWithError: reads drain then return it
	rerr  error   // set by the reader's Close: writes fail with it
	abort bool    // werr applies immediately, not after draining
}

func newBufPipe() *bufPipe {
	p := &bufPipe{}
	p.cond.L = &p.mu
	return p
}

// lendMin is the size from which Write lends its slice to the reader
// instead of copying it into the buffer: the transport then copies
// straight from the caller's memory into its frames (one copy fewer per
// byte of a bulk transfer). Smaller writes are buffered so that they
// return at once.
const lendMin = 64 << 10

func (p *bufPipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(b) >= lendMin {
		return p.lend(b)
	}
	n := 0
	for len(b) > 0 {
		switch {
		case p.rerr != nil:
			return n, p.rerr
		case p.werr != nil:
			return n, io.ErrClosedPipe
		case p.ext != nil: // another Write's lent slice goes first
			p.cond.Wait()
			continue
		}
		if p.buf == nil {
			p.buf = pipePool.Get().(*[]byte)
			p.r, p.w = 0, 0
		}
		if p.w == len(*p.buf) && p.r > 0 { // compact
			p.w = copy(*p.buf, (*p.buf)[p.r:p.w])
			p.r = 0
		}
		if p.w == len(*p.buf) {
			p.cond.Wait()
			continue
		}
		k := copy((*p.buf)[p.w:], b)
		p.w += k
		n += k
		b = b[k:]
		p.cond.Broadcast()
	}
	return n, nil
}

// lend waits until buffered bytes are read, offers b itself to the reader,
// and returns once the reader consumed it (or the pipe closed). Caller
// holds p.mu.
func (p *bufPipe) lend(b []byte) (int, error) {
	for {
		switch {
		case p.rerr != nil:
			return 0, p.rerr
		case p.werr != nil:
			return 0, io.ErrClosedPipe
		}
		if p.buf == nil && p.ext == nil {
			break
		}
		p.cond.Wait()
	}
	p.ext = b
	p.cond.Broadcast()
	for len(p.ext) > 0 && p.rerr == nil && p.werr == nil {
		p.cond.Wait()
	}
	n := len(b) - len(p.ext)
	p.ext = nil
	p.cond.Broadcast()
	switch {
	case n == len(b):
		return n, nil
	case p.rerr != nil:
		return n, p.rerr
	default:
		return n, io.ErrClosedPipe
	}
}

func (p *bufPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.rerr != nil {
			return 0, io.ErrClosedPipe
		}
		if p.abort {
			return 0, p.werr
		}
		if p.buf != nil && p.w > p.r {
			k := copy(b, (*p.buf)[p.r:p.w])
			p.r += k
			if p.r == p.w {
				pipePool.Put(p.buf)
				p.buf = nil
			}
			p.cond.Broadcast()
			return k, nil
		}
		if len(p.ext) > 0 {
			k := copy(b, p.ext)
			p.ext = p.ext[k:]
			if len(p.ext) == 0 {
				p.cond.Broadcast()
			}
			return k, nil
		}
		if p.werr != nil {
			return 0, p.werr
		}
		p.cond.Wait()
	}
}

// CloseWrite ends the data: reads drain what is buffered, then see EOF.
func (p *bufPipe) CloseWrite() error { return p.closeWrite(io.EOF, false) }

// CloseWithError aborts: reads fail with err at once.
func (p *bufPipe) CloseWithError(err error) error { return p.closeWrite(err, true) }

func (p *bufPipe) closeWrite(err error, abort bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.werr == nil {
		p.werr = err
	}
	p.abort = p.abort || abort
	p.cond.Broadcast()
	return nil
}

// Close is the reader's close: writes fail from now on.
func (p *bufPipe) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rerr == nil {
		p.rerr = io.ErrClosedPipe
	}
	if p.buf != nil {
		pipePool.Put(p.buf)
		p.buf = nil
	}
	p.cond.Broadcast()
	return nil
}
