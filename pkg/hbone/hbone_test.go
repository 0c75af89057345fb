package hbone_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/hbone"
)

func TestRoundTripHeadersAndIdentity(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) { testRoundTrip(t, p) })
	}
}

func testRoundTrip(t *testing.T, proto hbone.Protocol) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	var got hbone.Inbound
	var mu sync.Mutex
	s := startServer(t, m, hbone.Hooks{
		Authorize: func(ctx context.Context, in *hbone.Inbound) error {
			mu.Lock()
			got = *in
			mu.Unlock()
			in.ResponseHeader = http.Header{"Baggage": {"k8s.namespace.name=server-ns"}}
			return nil
		},
	})
	c := newClient(t, m)
	req := request(m, s, up.addr, proto)
	req.Forwarded = `for="10.0.0.1:1234"`
	req.Baggage = "k8s.namespace.name=client-ns"
	req.Traceparent = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-00"
	conn, err := c.Dial(t.Context(), req)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()
	msg := []byte("hello through the tunnel")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(back, msg) {
		t.Errorf("echo = %q, want %q", back, msg)
	}
	if conn.PeerID != m.srvID {
		t.Errorf("PeerID = %v, want %v", conn.PeerID, m.srvID)
	}
	if b := conn.Header.Get("Baggage"); b != "k8s.namespace.name=server-ns" {
		t.Errorf("response baggage = %q", b)
	}
	mu.Lock()
	defer mu.Unlock()
	if got.Peer != m.clientID {
		t.Errorf("hook Peer = %v, want %v", got.Peer, m.clientID)
	}
	if got.Target != up.addr || got.TargetAddr.String() != up.addr {
		t.Errorf("hook Target = %q / %v, want %q", got.Target, got.TargetAddr, up.addr)
	}
	if got.Forwarded != req.Forwarded || got.Baggage != req.Baggage || got.Traceparent != req.Traceparent {
		t.Errorf("hook headers = %q %q %q", got.Forwarded, got.Baggage, got.Traceparent)
	}
	if got.Protocol != proto {
		t.Errorf("Protocol = %v", got.Protocol)
	}
}

func TestPoolReuseAndSpill(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			leakCheck(t)
			m := newMesh(t)
			up := startEcho(t)
			s := startServer(t, m, hbone.Hooks{})
			c := newClient(t, m, func(cc *hbone.ClientConfig) { cc.MaxStreamsPerConn = 4 })
			req := request(m, s, up.addr, p)
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					_ = c.Close()
				}
			}()
			for i := range 5 {
				conn, err := c.Dial(t.Context(), req)
				if err != nil {
					t.Fatalf("Dial %d: %v", i, err)
				}
				conns = append(conns, conn)
			}
			if pc, ps := c.PoolStats(req); pc != 2 || ps != 5 {
				t.Errorf("PoolStats = %d conns %d streams, want 2, 5 (4 streams per conn)", pc, ps)
			}
			if p == hbone.H2 {
				if n := s.ln.n.Load(); n != 2 {
					t.Errorf("tunnel connections = %d, want 2", n)
				}
			}
			// A different key (other expected identities) gets its own connection.
			req2 := *req
			req2.Destinations = append(req2.Destinations, m.clientID)
			conn, err := c.Dial(t.Context(), &req2)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			if pc, _ := c.PoolStats(&req2); pc != 1 {
				t.Errorf("second key: %d pooled conns, want 1", pc)
			}
			// Closing streams frees slots: the next Dial reuses a connection.
			for _, c := range conns[:5] {
				_ = c.Close()
			}
			eventually(t, "stream slots freed", func() bool { _, ps := c.PoolStats(req); return ps == 0 })
			conn, err = c.Dial(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			if pc, _ := c.PoolStats(req); pc != 2 {
				t.Errorf("after reuse: %d pooled conns, want still 2", pc)
			}
		})
	}
}

func TestConcurrentDialsDeduplicated(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) { testDedup(t, p) })
	}
}

func testDedup(t *testing.T, proto hbone.Protocol) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	s := startServer(t, m, hbone.Hooks{})
	c := newClient(t, m)
	req := request(m, s, up.addr, proto)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make(chan net.Conn, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Dial(t.Context(), req)
			if err != nil {
				errs <- err
				return
			}
			conns <- conn
		}()
	}
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Errorf("Dial: %v", err)
	}
	if pc, ps := c.PoolStats(req); pc != 1 || ps != n {
		t.Errorf("PoolStats = %d conns %d streams, want 1 conn for %d concurrent dials", pc, ps, n)
	}
	for conn := range conns {
		_ = conn.Close()
	}
	if got := s.ln.n.Load(); proto == hbone.H2 && got != 1 {
		t.Errorf("tunnel connections = %d, want 1 for %d concurrent dials", got, n)
	}
}

func TestIdleRelease(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	s := startServer(t, m, hbone.Hooks{})
	c := newClient(t, m, func(cc *hbone.ClientConfig) { cc.IdleRelease = 100 * time.Millisecond })
	req := request(m, s, up.addr)
	conn, err := c.Dial(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if pc, _ := c.PoolStats(req); pc != 1 {
		t.Fatalf("pooled conns = %d, want 1", pc)
	}
	_ = conn.CloseWrite()
	_, _ = io.Copy(io.Discard, conn)
	_ = conn.Close()
	eventually(t, "idle connection released", func() bool { pc, _ := c.PoolStats(req); return pc == 0 })
}

func TestGoAwayConnectionSkipped(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s1 := serveOn(t, m, ln, nil, hbone.Hooks{})
	c := newClient(t, m)
	req := request(m, s1, up.addr)
	held, err := c.Dial(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	// Drain s1: it sends GOAWAY but waits for the held stream.
	s1.cancel()
	eventually(t, "GOAWAY seen by the pool", func() bool { pc, _ := c.PoolStats(req); return pc == 0 })
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s2 := serveOn(t, m, ln2, nil, hbone.Hooks{})
	conn, err := c.Dial(t.Context(), req)
	if err != nil {
		t.Fatalf("Dial after GOAWAY: %v", err)
	}
	if s2.ln.n.Load() != 1 {
		t.Errorf("new server accepted %d connections, want 1", s2.ln.n.Load())
	}
	// The held stream still works during the drain.
	if _, err := held.Write([]byte("x")); err != nil {
		t.Errorf("write on draining stream: %v", err)
	}
	_ = held.CloseWrite()
	if b, err := io.ReadAll(held); err != nil || string(b) != "x" {
		t.Errorf("draining stream echo = %q, %v", b, err)
	}
	_ = held.Close()
	_ = conn.Close()
	if err := <-s1.done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	s1.done <- nil // for the cleanup's stop
}

func TestConnectTimeoutMentionsPort(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	// A listener that never accepts: TCP connects, TLS never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &server{}
	s.addr = netipAddrPort(t, ln.Addr().String())
	c := newClient(t, m, func(cc *hbone.ClientConfig) { cc.ConnectTimeout = 200 * time.Millisecond })
	_, err = c.Dial(t.Context(), request(m, s, "127.0.0.1:80"))
	if !errors.Is(err, hbone.ErrConnectTimeout) {
		t.Fatalf("err = %v, want ErrConnectTimeout", err)
	}
	if !strings.Contains(err.Error(), "15008") {
		t.Errorf("error %q does not mention port 15008", err)
	}
}

func TestDialContextCancelled(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	s := startServer(t, m, hbone.Hooks{
		DialUpstream: func(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
			entered <- struct{}{}
			select {
			case <-ctx.Done():
			case <-release:
			}
			return nil, errors.New("gave up")
		},
	})
	defer close(release)
	c := newClient(t, m)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-entered; cancel() }()
	_, err := c.Dial(ctx, request(m, s, "127.0.0.1:9"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// TestDrainForceCloses: on shutdown the server sends GOAWAY, waits for open
// streams up to DrainTimeout, then closes them, and Serve returns nil.
func TestDrainForceCloses(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			leakCheck(t)
			m := newMesh(t)
			up := startEcho(t)
			s := startServer(t, m, hbone.Hooks{}, func(c *hbone.ServerConfig) { c.DrainTimeout = 200 * time.Millisecond })
			c := newClient(t, m)
			conn, err := c.Dial(t.Context(), request(m, s, up.addr, p))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			s.stop(t) // returns only after the held stream is force-closed
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("drain took %v with a 200ms DrainTimeout", d)
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(conn); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("held stream still open after drain: %v", err)
			}
			s.cancel = func() {}
			s.done <- nil
			if s.doneH3 != nil {
				s.doneH3 <- nil
			}
		})
	}
}

// TestSourceIPBindsAndKeys: SourceIP is the tunnel's local address, and
// each source IP gets its own pooled connection.
func TestSourceIPBindsAndKeys(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			leakCheck(t)
			m := newMesh(t)
			up := startEcho(t)
			seen := make(chan string, 4)
			s := startServer(t, m, hbone.Hooks{Authorize: func(ctx context.Context, in *hbone.Inbound) error {
				host, _, _ := net.SplitHostPort(in.RemoteAddr.String())
				seen <- host
				return nil
			}})
			c := newClient(t, m)
			for _, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.2"} {
				req := request(m, s, up.addr, p)
				req.SourceIP = netip.MustParseAddr(src)
				conn, err := c.Dial(t.Context(), req)
				if err != nil {
					t.Fatalf("Dial from %s: %v", src, err)
				}
				if got := <-seen; got != src {
					t.Errorf("server saw the tunnel from %s, want %s", got, src)
				}
				defer conn.Close()
			}
			for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
				req := request(m, s, up.addr, p)
				req.SourceIP = netip.MustParseAddr(src)
				if pc, ps := c.PoolStats(req); pc != 1 {
					t.Errorf("source %s: %d pooled conns (%d streams), want 1", src, pc, ps)
				}
			}
		})
	}
}

// TestDialHook: ClientConfig.Dial opens the tunnel's TCP connection, with
// the request's address and source IP.
func TestDialHook(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	s := startServer(t, m, hbone.Hooks{})
	var calls atomic.Int64
	var gotAddr string
	var gotLocal netip.Addr
	c := newClient(t, m, func(cfg *hbone.ClientConfig) {
		cfg.Dial = func(ctx context.Context, network, address string, local netip.Addr) (net.Conn, error) {
			calls.Add(1)
			gotAddr, gotLocal = address, local
			var d net.Dialer
			if local.IsValid() {
				d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
			}
			return d.DialContext(ctx, network, address)
		}
	})
	req := request(m, s, up.addr)
	req.SourceIP = netip.MustParseAddr("127.0.0.1")
	conn, err := c.Dial(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo = %q, %v", b, err)
	}
	if calls.Load() != 1 || gotAddr != s.addr.String() || gotLocal != req.SourceIP {
		t.Errorf("hook called %d times with %q, %v", calls.Load(), gotAddr, gotLocal)
	}
	// A failing hook is a dial error.
	c2 := newClient(t, m, func(cfg *hbone.ClientConfig) {
		cfg.Dial = func(context.Context, string, string, netip.Addr) (net.Conn, error) {
			return nil, errors.New("no netns")
		}
	})
	if _, err := c2.Dial(t.Context(), request(m, s, up.addr)); err == nil || !strings.Contains(err.Error(), "no netns") {
		t.Errorf("err = %v, want the hook's error", err)
	}
}

// TestReadable: an HTTP/2 Conn tells without blocking when a Read would
// return at once (bytes arrived, or the peer ended the stream), and
// HTTP/3 says it cannot tell.
func TestReadable(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			leakCheck(t)
			m := newMesh(t)
			up := startEcho(t)
			s := startServer(t, m, hbone.Hooks{})
			c := newClient(t, m)
			conn, err := c.Dial(t.Context(), request(m, s, up.addr, p))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			readable, known := conn.Readable()
			if p == hbone.H3 {
				if known || readable {
					t.Fatalf("HTTP/3 Readable = %v, %v; want unknown", readable, known)
				}
				return
			}
			if !known || readable {
				t.Fatalf("fresh stream: Readable = %v, %v; want false, known", readable, known)
			}
			if _, err := conn.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the echo to arrive", func() bool { r, _ := conn.Readable(); return r })
			buf := make([]byte, 4)
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q, %v", buf, err)
			}
			if r, _ := conn.Readable(); r {
				t.Fatal("Readable after everything was read")
			}
			if err := conn.CloseWrite(); err != nil { // the echo ends its side too
				t.Fatal(err)
			}
			eventually(t, "the peer's end to arrive", func() bool { r, _ := conn.Readable(); return r })
			if n, err := conn.Read(buf); n != 0 || err != io.EOF {
				t.Fatalf("Read after the peer's end = %d, %v; want EOF", n, err)
			}
		})
	}
}
