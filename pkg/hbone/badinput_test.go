package hbone_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-mesh/mesh/internal/meshtest"
	"github.com/ambient-mesh/mesh/pkg/hbone"
)

// rawH2 opens an HTTP/2 connection with valid mesh credentials but no
// client-side validation, to send what our Client refuses to.
func rawH2(t *testing.T, m *mesh, s *server) *http2.ClientConn {
	t.Helper()
	cfg := hbone.ClientTLSConfig(m.client, m.ca.Bundle(), []spiffeid.ID{m.srvID}, hbone.ALPNH2)
	tc, err := tls.Dial("tcp", s.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func rawStatus(t *testing.T, cc *http2.ClientConn, method, authority string) int {
	t.Helper()
	req := &http.Request{Method: method, URL: &url.URL{Scheme: "https", Host: authority, Path: "/"}, Host: authority, Header: http.Header{}}
	if method == http.MethodConnect {
		req.URL.Path, req.URL.Scheme = "", ""
	}
	resp, err := cc.RoundTrip(req.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("%s %s: %v", method, authority, err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestBadRequests(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	s := startServer(t, m, hbone.Hooks{})
	cc := rawH2(t, m, s)
	for _, tc := range []struct {
		name, method, authority string
		want                    int
	}{
		{"get", http.MethodGet, up.addr, http.StatusBadRequest},
		{"post", http.MethodPost, up.addr, http.StatusBadRequest},
		{"no port", http.MethodConnect, "127.0.0.1", http.StatusBadRequest},
		{"port zero", http.MethodConnect, "127.0.0.1:0", http.StatusBadRequest},
		{"port too big", http.MethodConnect, "127.0.0.1:70000", http.StatusBadRequest},
		{"port not a number", http.MethodConnect, "svc.ns:http", http.StatusBadRequest},
		{"empty label", http.MethodConnect, "a..b:80", http.StatusBadRequest},
		{"ok control", http.MethodConnect, up.addr, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawStatus(t, cc, tc.method, tc.authority); got != tc.want {
				t.Errorf("%s %q: status %d, want %d", tc.method, tc.authority, got, tc.want)
			}
		})
	}
	// Our client refuses a malformed authority before sending anything.
	c := newClient(t, m)
	_, err := c.Dial(t.Context(), request(m, s, "a..b:80"))
	if !errors.Is(err, hbone.ErrBadRequest) {
		t.Errorf("Dial(malformed authority) = %v, want ErrBadRequest", err)
	}
}

func TestHookStatuses(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) { xTestHookStatuses(t, p) })
	}
}

func xTestHookStatuses(t *testing.T, proto hbone.Protocol) {
	leakCheck(t)
	m := newMesh(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	_ = closed.Close()
	s := startServer(t, m, hbone.Hooks{
		Authorize: func(ctx context.Context, in *hbone.Inbound) error {
			if strings.HasPrefix(in.Host, "deny") {
				return errors.New("policy denies")
			}
			return nil
		},
	})
	c := newClient(t, m)
	for _, tc := range []struct {
		name, authority string
		status          int
		cause           error
	}{
		{"authorization denied", "deny.example:80", http.StatusUnauthorized, hbone.ErrUnauthorized},
		{"server dial failure", deadAddr, http.StatusServiceUnavailable, hbone.ErrUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Dial(t.Context(), request(m, s, tc.authority, proto))
			if !isStatus(err, tc.status) || !errors.Is(err, tc.cause) {
				t.Errorf("Dial(%s) = %v, want status %d (%v)", tc.authority, err, tc.status, tc.cause)
			}
		})
	}
}

func TestTLSRejections(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	s := startServer(t, m, hbone.Hooks{})
	other, err := meshtest.NewCA("other.local")
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, err := other.SVID("client-ns", "client-sa")
	if err != nil {
		t.Fatal(err)
	}
	// Same root, but a SPIFFE ID in another trust domain.
	foreignTD, err := m.ca.Issue(&url.URL{Scheme: "spiffe", Host: "other.local", Path: "/ns/a/sa/b"})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("no client certificate", func(t *testing.T) {
		cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13}
		expectTLSFailure(t, s, cfg, "certificate required")
	})
	t.Run("TLS 1.2 offered", func(t *testing.T) {
		cert := meshtest.TLSCertificate(m.client)
		cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		expectTLSFailure(t, s, cfg, "protocol version")
	})
	for _, tc := range []struct {
		name string
		req  func(*hbone.Request)
		want string
	}{
		{"client from another CA", func(r *hbone.Request) { r.Source = foreignCA }, ""},
		{"client in another trust domain", func(r *hbone.Request) { r.Source = foreignTD }, ""},
		{"server SAN mismatch", func(r *hbone.Request) {
			r.Destinations = []spiffeid.ID{m.ca.ID("server-ns", "someone-else")}
		}, "unexpected ID"},
	} {
		for _, proto := range protocols {
			t.Run(tc.name+"/"+proto.String(), func(t *testing.T) {
				c := newClient(t, m)
				req := request(m, s, up.addr, proto)
				tc.req(req)
				conn, err := c.Dial(t.Context(), req)
				if err == nil {
					_ = conn.Close()
					t.Fatal("Dial succeeded, want a TLS failure")
				}
				var he *hbone.Error
				if !errors.As(err, &he) || he.Status != 0 {
					t.Errorf("err = %v, want *hbone.Error without HTTP status", err)
				}
				if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
					t.Errorf("err = %v, want it to mention %q", err, tc.want)
				}
			})
		}
	}
}

// expectTLSFailure handshakes with cfg and expects the server to refuse
// (in TLS 1.3 the client learns on its first read).
func expectTLSFailure(t *testing.T, s *server, cfg *tls.Config, want string) {
	t.Helper()
	tc, err := tls.Dial("tcp", s.addr.String(), cfg)
	if err == nil {
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = tc.Read(make([]byte, 1))
		_ = tc.Close()
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want one mentioning %q", err, want)
	}
}

func TestOversizedHeaders(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	s := startServer(t, m, hbone.Hooks{})
	c := newClient(t, m)
	req := request(m, s, up.addr)
	req.Baggage = strings.Repeat("k=v,", 32<<10) // 128 KiB
	if conn, err := c.Dial(t.Context(), req); err == nil {
		_ = conn.Close()
		t.Fatal("Dial with 128 KiB of headers succeeded")
	}

	// A peer that ignores our advertised limit gets 431 when the block is
	// small on the wire (hpack indexing) and a PROTOCOL_ERROR GOAWAY when it
	// floods CONTINUATION frames (x/net's CONTINUATION-flood defence).
	pad := strings.Repeat("x", 4000)
	var indexed, flood []hpack.HeaderField
	for range 20 { // 20 x 4 KB decoded, ~4 KB encoded
		indexed = append(indexed, hpack.HeaderField{Name: "x-pad", Value: pad})
	}
	for i := range 200 { // 200 x 512 B, all literal
		flood = append(flood, hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: pad[:512]})
	}
	if status, code := rawHeaders(t, m, s, up.addr, indexed); status != "431" {
		t.Errorf("indexed oversized headers: status %q goaway %v, want 431", status, code)
	}
	if status, code := rawHeaders(t, m, s, up.addr, flood); code != http2.ErrCodeProtocol {
		t.Errorf("flooded oversized headers: status %q goaway %v, want GOAWAY PROTOCOL_ERROR", status, code)
	}
	// The server is still healthy.
	req.Baggage = "ok=1"
	conn, err := c.Dial(t.Context(), req)
	if err != nil {
		t.Fatalf("Dial after oversized headers: %v", err)
	}
	_ = conn.Close()
}

// rawHeaders sends one CONNECT with extra header fields, framed by hand,
// and returns the response :status or the GOAWAY code.
func rawHeaders(t *testing.T, m *mesh, s *server, authority string, extra []hpack.HeaderField) (string, http2.ErrCode) {
	t.Helper()
	cfg := hbone.ClientTLSConfig(m.client, m.ca.Bundle(), []spiffeid.ID{m.srvID}, hbone.ALPNH2)
	tc, err := tls.Dial("tcp", s.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	_ = enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for _, f := range extra {
		_ = enc.WriteField(f)
	}
	block := hb.Bytes()
	const chunk = 16 << 10
	first := min(chunk, len(block))
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:first], EndHeaders: first == len(block)}); err != nil {
		t.Fatal(err)
	}
	for rest := block[first:]; len(rest) > 0; {
		n := min(chunk, len(rest))
		if err := fr.WriteContinuation(1, n == len(rest), rest[:n]); err != nil {
			break // the server may have hung up already
		}
		rest = rest[n:]
	}
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading response: %v", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return "", f.ErrCode
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			return fields[0].Value, 0
		}
	}
}

// pipeUpstream makes the server's upstream one end of a net.Pipe the test holds.
func pipeUpstream(ends chan<- net.Conn) hbone.Hooks {
	return hbone.Hooks{DialUpstream: func(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
		a, b := net.Pipe()
		ends <- b
		return a, nil
	}}
}

func TestStreamResetMidCopy(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) { xTestStreamResetMidCopy(t, p) })
	}
}

func xTestStreamResetMidCopy(t *testing.T, proto hbone.Protocol) {
	leakCheck(t)
	m := newMesh(t)
	ends := make(chan net.Conn, 2)
	s := startServer(t, m, pipeUpstream(ends))
	c := newClient(t, m)

	t.Run("client resets", func(t *testing.T) {
		conn, err := c.Dial(t.Context(), request(m, s, "10.0.0.1:80", proto))
		if err != nil {
			t.Fatal(err)
		}
		up := <-ends
		defer up.Close()
		if _, err := conn.Write([]byte("partial")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 7)
		if _, err := io.ReadFull(up, buf); err != nil {
			t.Fatal(err)
		}
		_ = conn.Close() // RST_STREAM mid-copy
		_ = up.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := up.Read(buf); err == nil || errors.Is(err, errDeadline) {
			t.Errorf("upstream read after client reset = %v, want closed", err)
		}
	})
	t.Run("upstream resets", func(t *testing.T) {
		conn, err := c.Dial(t.Context(), request(m, s, "10.0.0.1:80", proto))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		up := <-ends
		if _, err := up.Write([]byte("some")); err != nil {
			t.Fatal(err)
		}
		_ = up.Close()
		got, err := io.ReadAll(conn)
		if string(got) != "some" {
			t.Errorf("read %q (%v), want the bytes sent before the reset", got, err)
		}
		// The send side is gone too: writes fail eventually.
		var werr error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if _, werr = conn.Write([]byte("x")); werr != nil {
				break
			}
			time.Sleep(time.Millisecond) // let the peer's reset arrive
		}
		if werr == nil {
			t.Error("writes still succeed after the upstream reset")
		}
	})
}

var errDeadline = errors.New("i/o timeout")

func TestPeerHalfClose(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) { xTestPeerHalfClose(t, p) })
	}
}

func xTestPeerHalfClose(t *testing.T, proto hbone.Protocol) {
	leakCheck(t)
	m := newMesh(t)
	ends := make(chan net.Conn, 1)
	s := startServer(t, m, hbone.Hooks{DialUpstream: func(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", in.Target)
	}})
	// Upstream: read to EOF, then answer, proving the FIN arrived while
	// the send direction stayed open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		ends <- c
		b, _ := io.ReadAll(c)
		_, _ = io.WriteString(c, "got "+string(b))
		_ = c.Close()
	}()
	c := newClient(t, m)
	conn, err := c.Dial(t.Context(), request(m, s, ln.Addr().String(), proto))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "request"); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "got request" {
		t.Errorf("reply = %q, %v; want %q", got, err, "got request")
	}
	(<-ends).Close()
}

func TestSlowReaderBounded(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) { xTestSlowReaderBounded(t, p) })
	}
}

func xTestSlowReaderBounded(t *testing.T, proto hbone.Protocol) {
	leakCheck(t)
	m := newMesh(t)
	ends := make(chan net.Conn, 1)
	s := startServer(t, m, pipeUpstream(ends))
	c := newClient(t, m)
	conn, err := c.Dial(t.Context(), request(m, s, "10.0.0.1:80", proto))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	up := <-ends
	defer up.Close()
	const total = 64 << 20
	var written atomic.Int64
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		chunk := make([]byte, 64<<10)
		for written.Load() < total {
			n, err := up.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
		_ = up.Close()
	}()
	// The reader does not read: the upstream must stall once the stream
	// window (4 MiB) and the copy buffers are full.
	const bound = hbone.StreamWindow + 2<<20
	stalled := func() bool {
		a := written.Load()
		time.Sleep(50 * time.Millisecond)
		return a > 0 && written.Load() == a
	}
	eventually(t, "upstream writer stalls", stalled)
	if w := written.Load(); w > bound {
		t.Errorf("upstream wrote %d bytes with no reader, want ≤ %d", w, bound)
	}
	n, err := io.Copy(io.Discard, conn)
	if err != nil || n != total {
		t.Errorf("reader got %d bytes (%v), want %d", n, err, total)
	}
	<-writerDone
}

// TestServerSettings checks the HTTP/2 settings the server announces.
func TestServerSettings(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	s := startServer(t, m, hbone.Hooks{})
	cfg := hbone.ClientTLSConfig(m.client, m.ca.Bundle(), []spiffeid.ID{m.srvID}, hbone.ALPNH2)
	tc, err := tls.Dial("tcp", s.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	got := map[http2.SettingID]uint32{}
	var connWindow uint32
	for connWindow == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { got[s.ID] = s.Val; return nil })
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWindow = 65535 + f.Increment
			}
		}
	}
	want := map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: hbone.MaxConcurrentIn,
		http2.SettingInitialWindowSize:    hbone.StreamWindow,
		http2.SettingMaxFrameSize:         hbone.ServerReadFrameSize,
	}
	for id, v := range want {
		if got[id] != v {
			t.Errorf("SETTINGS %v = %d, want %d", id, got[id], v)
		}
	}
	if hl := got[http2.SettingMaxHeaderListSize]; hl < hbone.ServerHeaderLimit {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d, want ≥ %d", hl, hbone.ServerHeaderLimit)
	}
	if connWindow != hbone.ConnectionWindow {
		t.Errorf("connection window = %d, want %d", connWindow, hbone.ConnectionWindow)
	}
}
