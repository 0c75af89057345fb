package hbone

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/ambient-mesh/mesh/internal/meshtest"
)

// TestBatchConn: a mix of inline (small) and queued (large) writes arrives
// intact and in order, and Close stops the writer goroutine.
func TestBatchConn(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.SVID("ns", "client")
	if err != nil {
		t.Fatal(err)
	}
	sv, err := ca.SVID("ns", "server")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var want bytes.Buffer
	rng := rand.New(rand.NewPCG(1, 2))
	var chunks [][]byte
	for range 400 {
		n := rng.IntN(3 * batchMin)
		if rng.IntN(4) == 0 {
			n = recordSize + 9 // an HTTP/2 DATA frame
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		chunks = append(chunks, b)
		want.Write(b)
	}
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		tc := tls.Server(c, ServerTLSConfig(sv, ca.Bundle(), ca.TrustDomain, ALPNH2))
		b, _ := io.ReadAll(io.LimitReader(tc, int64(want.Len())))
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, ClientTLSConfig(cl, ca.Bundle(), []spiffeid.ID{sv.ID}, ALPNH2))
	if err := tc.HandshakeContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	bc := newBatchConn(tc)
	for _, b := range chunks {
		// The caller may reuse its slice once Write returns.
		orig := bytes.Clone(b)
		if n, err := bc.Write(b); n != len(b) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		clear(b)
		copy(b, orig)
	}
	b := <-got
	if !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("peer read %d bytes, want %d (equal: false)", len(b), want.Len())
	}
	if err := bc.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	if _, err := bc.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
}
