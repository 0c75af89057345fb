package hbone_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/ambient-mesh/mesh/internal/meshtest"
	"github.com/ambient-mesh/mesh/pkg/hbone"
)

// leakCheck registers goleak as the last cleanup of t.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

type mesh struct {
	ca              *meshtest.CA
	client, server  *x509svid.SVID
	clientID, srvID spiffeid.ID
}

func newMesh(t testing.TB) *mesh {
	t.Helper()
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.SVID("client-ns", "client-sa")
	if err != nil {
		t.Fatal(err)
	}
	sv, err := ca.SVID("server-ns", "server-sa")
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{ca: ca, client: cl, server: sv, clientID: cl.ID, srvID: sv.ID}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

type server struct {
	addr   netip.AddrPort
	ln     *countingListener
	cancel context.CancelFunc
	done   chan error // Serve's result
	doneH3 chan error // ServeH3's result, if started
}

// stop cancels Serve (and ServeH3) and waits for them to return.
func (s *server) stop(t testing.TB) {
	t.Helper()
	s.cancel()
	if err := <-s.done; err != nil {
		t.Errorf("Serve returned %v", err)
	}
	if s.doneH3 != nil {
		if err := <-s.doneH3; err != nil {
			t.Errorf("ServeH3 returned %v", err)
		}
	}
}

var protocols = []hbone.Protocol{hbone.H2, hbone.H3}

func startServer(t testing.TB, m *mesh, hooks hbone.Hooks, mut ...func(*hbone.ServerConfig)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// HTTP/3 on the same port number, over UDP.
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, m, ln, pc, hooks, mut...)
}

func serveOn(t testing.TB, m *mesh, ln net.Listener, pc net.PacketConn, hooks hbone.Hooks, mut ...func(*hbone.ServerConfig)) *server {
	t.Helper()
	cfg := hbone.ServerConfig{SVID: m.server, Bundle: m.ca.Bundle(), Hooks: hooks, DrainTimeout: 5 * time.Second}
	for _, f := range mut {
		f(&cfg)
	}
	srv, err := hbone.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{addr: netip.MustParseAddrPort(ln.Addr().String()), ln: &countingListener{Listener: ln}, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, s.ln) }()
	if pc != nil {
		s.doneH3 = make(chan error, 1)
		go func() { s.doneH3 <- srv.ServeH3(ctx, pc); _ = pc.Close() }()
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { s.stop(t) }) })
	return s
}

// echo is a TCP upstream that echoes each connection and half-closes when
// the client does.
type echo struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
}

func startEcho(t testing.TB) *echo {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echo{ln: ln, addr: ln.Addr().String()}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); e.wg.Wait() })
	return e
}

func newClient(t testing.TB, m *mesh, mut ...func(*hbone.ClientConfig)) *hbone.Client {
	t.Helper()
	cfg := hbone.ClientConfig{Bundle: m.ca.Bundle()}
	for _, f := range mut {
		f(&cfg)
	}
	c, err := hbone.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func request(m *mesh, s *server, authority string, proto ...hbone.Protocol) *hbone.Request {
	r := &hbone.Request{
		Source:       m.client,
		Destinations: []spiffeid.ID{m.srvID},
		Address:      s.addr,
		Authority:    authority,
	}
	if len(proto) > 0 {
		r.Protocol = proto[0]
	}
	return r
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isStatus(err error, status int) bool {
	var he *hbone.Error
	return errors.As(err, &he) && he.Status == status
}

func netipAddrPort(t testing.TB, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
