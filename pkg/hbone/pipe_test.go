package hbone

import (
	"bytes"
	"errors"
	"io"
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
