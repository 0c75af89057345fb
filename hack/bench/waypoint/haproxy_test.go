package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/testenv"
)

// TestHAProxyPeers runs the bench's HAProxy peers on loopback in front of
// an echo server: the plaintext peer and the TLS peer (through its
// terminator) relay a 1 KB POST, the TLS peer over TLS 1.3 with the
// cipher and client certificate the bench configures, and it refuses a
// client without a certificate.
func TestHAProxyPeers(t *testing.T) {
	const bin = "/usr/sbin/haproxy"
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "no HAProxy at %s: run hack/install-deps.sh (Debian package haproxy)", bin)
	}
	var served atomic.Int64
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.TLS != nil {
			http.Error(w, "the terminator must forward plaintext", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(r.Body) // all of it before answering (HTTP/1.1)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = w.Write(body)
	})}
	lns := listeners(t, 4)
	go func() { _ = backend.Serve(lns[0]) }()
	t.Cleanup(func() { _ = backend.Close() })
	at := peerAddrs{plain: lns[1].Addr().String(), tls: lns[2].Addr().String(), term: lns[3].Addr().String()}
	for _, ln := range lns[1:] {
		_ = ln.Close() // for HAProxy to bind
	}

	dir := t.TempDir()
	if err := writeCerts(dir, net.IPv4(127, 0, 0, 1)); err != nil {
		t.Fatal(err)
	}
	b := &bench{haproxyBin: bin, haproxyDir: dir}
	t.Cleanup(b.stopHAProxies)
	plain, tlsCfg, term := haproxyConfigs(dir, lns[0].Addr().String(), at)
	for _, c := range []struct{ name, cfg string }{{"terminator", term}, {"haproxy", plain}, {"haproxy-tls", tlsCfg}} {
		if _, err := b.startHAProxy(c.name, c.cfg, false); err != nil {
			t.Fatal(err)
		}
	}

	read := func(name string) []byte {
		v, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(read("ca.pem")) {
		t.Fatal("ca.pem holds no certificate")
	}
	cert, err := tls.X509KeyPair(read("tls.crt"), read("tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	var state atomic.Pointer[tls.ConnectionState]
	client := func(certs []tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs, VerifyConnection: func(cs tls.ConnectionState) error {
				state.Store(&cs)
				return nil
			}},
		}}
	}
	payload := bytes.Repeat([]byte("x"), 1024)
	post := func(c *http.Client, url string) ([]byte, error) {
		// HAProxy binds once it has started: try for a few seconds.
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			var res *http.Response
			if res, err = c.Post(url, "application/octet-stream", bytes.NewReader(payload)); err != nil {
				if strings.Contains(err.Error(), "connection refused") {
					continue
				}
				return nil, err
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err == nil && res.StatusCode != http.StatusOK {
				t.Fatalf("%s: %s: %s", url, res.Status, body)
			}
			return body, err
		}
		return nil, err
	}

	for _, url := range []string{"http://" + at.plain + "/echo", "https://" + at.tls + "/echo"} {
		before := served.Load()
		body, err := post(client([]tls.Certificate{cert}), url)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		if !bytes.Equal(body, payload) {
			t.Fatalf("%s echoed %d bytes, want the 1024 sent", url, len(body))
		}
		if served.Load() != before+1 {
			t.Fatalf("%s: the backend served %d requests, want 1", url, served.Load()-before)
		}
	}
	cs := state.Load()
	if cs == nil || cs.Version != tls.VersionTLS13 || cs.CipherSuite != tls.TLS_AES_128_GCM_SHA256 {
		t.Fatalf("TLS peer's connection state %+v: want TLS 1.3 with TLS_AES_128_GCM_SHA256", cs)
	}
	// In TLS 1.3 the server checks the client's certificate after the
	// client's handshake ended: the refusal shows on the request.
	if _, err := post(client(nil), "https://"+at.tls+"/echo"); err == nil {
		t.Fatal("the TLS peer served a client without a certificate")
	}
}

// listeners opens n loopback listeners at once, so their ports differ.
func listeners(t *testing.T, n int) []net.Listener {
	t.Helper()
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		lns = append(lns, ln)
	}
	return lns
}
