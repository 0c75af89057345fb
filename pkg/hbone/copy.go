package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Copy buffers start small so that idle streams stay cheap, and grow to a
// large pooled buffer once a read fills the small one (a bulk transfer).
const (
	smallBuf = 4 << 10
	largeBuf = 256 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

// copyHalf copies src to dst until src ends, flushing after each write when
// flush is set, then calls closeWrite (the half-close) if src ended cleanly.
// It returns the bytes copied and the first error other than io.EOF.
func copyHalf(dst io.Writer, src io.Reader, flush func(), closeWrite func() error) (int64, error) {
	small := smallPool.Get().(*[]byte)
	buf := *small
	var large *[]byte
	defer func() {
		smallPool.Put(small)
		if large != nil {
			largePool.Put(large)
		}
	}()
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
			if nw != nr {
				return n, io.ErrShortWrite
			}
			if flush != nil {
				flush()
			}
			if nr == len(buf) && large == nil {
				large = largePool.Get().(*[]byte)
				buf = *large
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if closeWrite != nil {
					return n, closeWrite()
				}
				return n, nil
			}
			return n, rerr
		}
	}
}

// closeWriter half-closes c when it can (TCP, TLS, our Conn), else closes it.
func closeWriter(c io.Closer) func() error {
	return func() error {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		return c.Close()
	}
}

// isClosedErr reports errors that only say the other side already went away.
func isClosedErr(err error) bool {
	return err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF)
}
