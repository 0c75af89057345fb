package ztunnel

import (
	"io"
	"net"
	"sync"
)

type closeWriter interface{ CloseWrite() error }

// pipe copies a->b and b->a until both directions end, propagating each
// direction's end as a half-close (CloseWrite) when the writer side
// supports it; an error on either direction closes both connections. It
// returns the bytes copied each way and closes both connections.
func pipe(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		bToA = copyHalf(a, b)
	}()
	aToB = copyHalf(b, a)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return aToB, bToA
}

func copyHalf(dst, src net.Conn) int64 {
	n, err := io.Copy(dst, src)
	if err != nil {
		_ = dst.Close()
		_ = src.Close()
		return n
	}
	if cw, ok := dst.(closeWriter); ok {
		if cw.CloseWrite() == nil {
			return n
		}
	}
	_ = dst.Close()
	return n
}
