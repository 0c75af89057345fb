package hbone

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
)

func TestBufPipe(t *testing.T) {
	t.Run("drains then EOF", func(t *testing.T) {
		p := newBufPipe()
		data := bytes.Repeat([]byte("abcdefgh"), pipeBuffer/4) // 2x the buffer: Write must block and resume
		go func() {
			_, _ = p.Write(data)
			_ = p.CloseWrite()
		}()
		got, err := io.ReadAll(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(data))
		}
	})
	t.Run("abort is immediate", func(t *testing.T) {
		p := newBufPipe()
		_, _ = p.Write([]byte("pending"))
		boom := errors.New("boom")
		_ = p.CloseWithError(boom)
		if _, err := p.Read(make([]byte, 8)); !errors.Is(err, boom) {
			t.Fatalf("Read after abort = %v, want %v", err, boom)
		}
	})
	t.Run("reader close fails writes", func(t *testing.T) {
		p := newBufPipe()
		_ = p.Close()
		if _, err := p.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("Write after reader Close = %v, want ErrClosedPipe", err)
		}
		if p.buf != nil {
			t.Error("buffer not returned to the pool")
		}
	})
	t.Run("idle pipe holds no buffer", func(t *testing.T) {
		p := newBufPipe()
		_, _ = p.Write([]byte("x"))
		_, _ = p.Read(make([]byte, 1))
		if p.buf != nil {
			t.Error("drained pipe still holds its buffer")
		}
	})
}

func TestBufPipeLend(t *testing.T) {
	t.Run("small then lent then small, in order", func(t *testing.T) {
		p := newBufPipe()
		big := bytes.Repeat([]byte("0123456789abcdef"), lendMin/8)
		want := append(append([]byte("head"), big...), "tail"...)
		go func() {
			_, _ = p.Write([]byte("head"))
			if n, err := p.Write(big); n != len(big) || err != nil {
				t.Errorf("lent Write = %d, %v", n, err)
			}
			_, _ = p.Write([]byte("tail"))
			_ = p.CloseWrite()
		}()
		got, err := io.ReadAll(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(want))
		}
		if p.ext != nil || p.buf != nil {
			t.Error("drained pipe still holds a slice")
		}
	})
	t.Run("reader close ends a lent write", func(t *testing.T) {
		p := newBufPipe()
		done := make(chan error)
		go func() {
			n, err := p.Write(make([]byte, 2*lendMin))
			if n != 1024 {
				t.Errorf("lent Write wrote %d, want 1024", n)
			}
			done <- err
		}()
		if n, err := io.ReadFull(p, make([]byte, 1024)); n != 1024 || err != nil {
			t.Fatal(n, err)
		}
		_ = p.Close()
		if err := <-done; !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("lent Write after reader Close = %v, want ErrClosedPipe", err)
		}
	})
	t.Run("abort ends a lent write", func(t *testing.T) {
		p := newBufPipe()
		done := make(chan error)
		go func() { _, err := p.Write(make([]byte, lendMin)); done <- err }()
		for {
			p.mu.Lock()
			lent := p.ext != nil
			p.mu.Unlock()
			if lent {
				break
			}
			runtime.Gosched()
		}
		boom := errors.New("boom")
		_ = p.CloseWithError(boom)
		if err := <-done; err == nil {
			t.Fatal("lent Write after abort succeeded")
		}
		if _, err := p.Read(make([]byte, 8)); !errors.Is(err, boom) {
			t.Fatalf("Read after abort = %v, want %v", err, boom)
		}
	})
}
