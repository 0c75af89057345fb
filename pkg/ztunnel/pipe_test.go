package ztunnel

import (
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of one loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*net.TCPConn{c, s} {
		x.SetDeadline(time.Now().Add(5 * time.Second))
		t.Cleanup(func() { x.Close() })
	}
	return c, s
}

// The app half-closes after its request; the upstream still answers after
// reading EOF, and the answer reaches the app: half-close is propagated,
// not turned into a full close.
func TestPipeHalfClose(t *testing.T) {
	app, proxyIn := tcpPair(t)
	proxyOut, upstream := tcpPair(t)
	type counts struct{ aToB, bToA int64 }
	done := make(chan counts, 1)
	go func() {
		a, b := pipe(proxyIn, proxyOut)
		done <- counts{a, b}
	}()
	if _, err := io.WriteString(app, "request"); err != nil {
		t.Fatal(err)
	}
	if err := app.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	req, err := io.ReadAll(upstream)
	if err != nil || string(req) != "request" {
		t.Fatalf("upstream read %q, %v; want the request then EOF", req, err)
	}
	if _, err := io.WriteString(upstream, "response after EOF"); err != nil {
		t.Fatal(err)
	}
	upstream.Close()
	resp, err := io.ReadAll(app)
	if err != nil || string(resp) != "response after EOF" {
		t.Fatalf("app read %q, %v", resp, err)
	}
	if got := <-done; got.aToB != 7 || got.bToA != 18 {
		t.Errorf("pipe counted %d/%d bytes, want 7/18", got.aToB, got.bToA)
	}
}
