package hbone_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"

	"github.com/ambient-mesh/mesh/pkg/hbone"
)

func init() {
	// Istio's package logs every stream at info.
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.WarnLevel)
	}
}

// interopSize is the transfer each way: 1 GiB, 64 MiB with -short.
func interopSize() int64 {
	if testing.Short() {
		return 64 << 20
	}
	return 1 << 30
}

// pattern is a deterministic byte stream: a 1 MiB random block whose
// first 8 bytes carry the block number, so reordered or repeated blocks
// change the hash.
type pattern struct {
	block []byte
	n     uint64
	off   int
}

func newPattern(seed uint64) *pattern {
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	p := &pattern{block: b}
	binary.LittleEndian.PutUint64(p.block, 0)
	return p
}

func (p *pattern) Read(b []byte) (int, error) {
	n := copy(b, p.block[p.off:])
	p.off += n
	if p.off == len(p.block) {
		p.off = 0
		p.n++
		binary.LittleEndian.PutUint64(p.block, p.n)
	}
	return n, nil
}

var (
	expectedMu   sync.Mutex
	expectedHash = map[[2]uint64][]byte{}
)

// expected returns the SHA-256 of the first size bytes of pattern seed.
func expected(seed uint64, size int64) []byte {
	expectedMu.Lock()
	defer expectedMu.Unlock()
	k := [2]uint64{seed, uint64(size)}
	if h, ok := expectedHash[k]; ok {
		return h
	}
	h := sha256.New()
	_, _ = io.CopyN(h, newPattern(seed), size)
	expectedHash[k] = h.Sum(nil)
	return expectedHash[k]
}

// exchange sends size bytes of pattern sendSeed on c while hashing size
// bytes read from it; it returns the hash of what was read.
func exchange(c io.ReadWriter, sendSeed uint64, size int64) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(c, io.LimitReader(newPattern(sendSeed), size), make([]byte, 256<<10))
		errc <- err
	}()
	h := sha256.New()
	n, rerr := io.CopyBuffer(h, io.LimitReader(c, size), make([]byte, 256<<10))
	werr := <-errc
	if rerr == nil && n != size {
		rerr = fmt.Errorf("read %d of %d bytes", n, size)
	}
	return h.Sum(nil), errors.Join(rerr, werr)
}

// hashUpstream accepts one connection and runs exchange on it with seed 2.
func hashUpstream(t *testing.T, size int64) (string, <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		h, err := exchange(c, 2, size)
		if err != nil {
			t.Errorf("upstream exchange: %v", err)
		}
		got <- h
	}()
	return ln.Addr().String(), got
}

func checkHashes(t *testing.T, size int64, clientGot, upstreamGot []byte) {
	t.Helper()
	if want := expected(2, size); !bytes.Equal(clientGot, want) {
		t.Errorf("upstream->client hash %x, want %x", clientGot, want)
	}
	if want := expected(1, size); !bytes.Equal(upstreamGot, want) {
		t.Errorf("client->upstream hash %x, want %x", upstreamGot, want)
	}
}

// TestInteropIstioDialerOurServer: Istio's dialer against our server.
func TestInteropIstioDialerOurServer(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	size := interopSize()
	upAddr, upGot := hashUpstream(t, size)
	s := startServer(t, m, hbone.Hooks{})
	d := istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: s.addr.String(),
		TLS:          hbone.ClientTLSConfig(m.client, m.ca.Bundle(), []spiffeid.ID{m.srvID}, hbone.ALPNH2),
	})
	conn, err := d.DialContext(t.Context(), "tcp", upAddr)
	if err != nil {
		t.Fatalf("istio Dial via our server: %v", err)
	}
	got, err := exchange(conn, 1, size)
	_ = conn.Close()
	if err != nil {
		t.Fatalf("client exchange: %v", err)
	}
	checkHashes(t, size, got, <-upGot)
}

// TestInteropOurClientIstioServer: our client against Istio's server
// (its http.Server behind our TLS listener, as Istio's README shows).
func TestInteropOurClientIstioServer(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	size := interopSize()
	upAddr, upGot := hashUpstream(t, size)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(tcp, hbone.ServerTLSConfig(m.server, m.ca.Bundle(), m.ca.TrustDomain, hbone.ALPNH2))
	srv := istiohbone.NewServer()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("istio Serve: %v", err)
		}
	}()

	c := newClient(t, m)
	conn, err := c.Dial(t.Context(), &hbone.Request{
		Source:       m.client,
		Destinations: []spiffeid.ID{m.srvID},
		Address:      netipAddrPort(t, tcp.Addr().String()),
		Authority:    upAddr,
	})
	if err != nil {
		t.Fatalf("Dial via istio server: %v", err)
	}
	got, err := exchange(conn, 1, size)
	_ = conn.Close()
	if err != nil {
		t.Fatalf("client exchange: %v", err)
	}
	checkHashes(t, size, got, <-upGot)
	_ = c.Close()
}
