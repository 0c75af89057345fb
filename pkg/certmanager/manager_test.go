package certmanager

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeCA signs CSRs in memory. block, when set, holds each call until a
// value arrives; fail makes calls fail.
type fakeCA struct {
	key  *ecdsa.PrivateKey
	root *x509.Certificate

	mu       sync.Mutex
	ttl      time.Duration // overrides the requested TTL when set
	fail     bool
	calls    []spiffeid.ID
	times    []time.Time
	inflight int
	peak     int
	block    chan struct{}
	started  chan spiffeid.ID
}

func newFakeCA(t *testing.T) *fakeCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &fakeCA{key: key, root: root}
}

func (f *fakeCA) Fetch(ctx context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	f.mu.Lock()
	f.calls = append(f.calls, id)
	f.times = append(f.times, time.Now())
	f.inflight++
	f.peak = max(f.peak, f.inflight)
	block, started, fail := f.block, f.started, f.fail
	if f.ttl != 0 {
		ttl = f.ttl
	}
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.inflight--; f.mu.Unlock() }()
	if started != nil {
		started <- id
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail {
		return nil, errors.New("ca unavailable")
	}
	blk, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), NotBefore: now, NotAfter: now.Add(ttl),
		URIs: csr.URIs, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.root, csr.PublicKey, f.key)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return []*x509.Certificate{leaf, f.root}, nil
}

func (f *fakeCA) set(fn func(f *fakeCA)) { f.mu.Lock(); fn(f); f.mu.Unlock() }

func (f *fakeCA) snapshot() (calls []spiffeid.ID, times []time.Time, peak int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]spiffeid.ID(nil), f.calls...), append([]time.Time(nil), f.times...), f.peak
}

func id(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	v, err := spiffeid.FromSegments(spiffeid.RequireTrustDomainFromString("cluster.local"), "ns", ns, "sa", sa)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func start(t *testing.T, cfg Config) *Manager {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// eventually polls cond (bounded) instead of sleeping for a fixed time.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFetchCoalescesAndValidates(t *testing.T) {
	ca := newFakeCA(t)
	m := start(t, Config{Fetcher: ca})
	app := id(t, "demo", "app")
	var wg sync.WaitGroup
	certs := make([]*Certificate, 10)
	for i := range certs {
		wg.Go(func() {
			c, err := m.Fetch(t.Context(), app)
			if err != nil {
				t.Errorf("Fetch: %v", err)
			}
			certs[i] = c
		})
	}
	wg.Wait()
	calls, _, _ := ca.snapshot()
	if len(calls) != 1 {
		t.Errorf("%d CA calls for 10 concurrent Fetches of one identity, want 1", len(calls))
	}
	for _, c := range certs {
		if c == nil || c != certs[0] {
			t.Fatalf("concurrent Fetches returned different certificates")
		}
	}
	if got, _ := x509svidID(certs[0]); got != app {
		t.Errorf("leaf identity %s, want %s", got, app)
	}
	if life := certs[0].Leaf.NotAfter.Sub(certs[0].Leaf.NotBefore); life != 24*time.Hour {
		t.Errorf("requested lifetime %s, want the 24h default", life)
	}
	if want := certs[0].Leaf.NotBefore.Add(12 * time.Hour); !certs[0].RefreshAt.Equal(want) {
		t.Errorf("RefreshAt %s, want half life %s", certs[0].RefreshAt, want)
	}
}

func x509svidID(c *Certificate) (spiffeid.ID, error) {
	return spiffeid.FromURI(c.Leaf.URIs[0])
}

// swappingCA signs a CSR of its own for another identity, as a broken or
// malicious CA might.
type swappingCA struct {
	*fakeCA
	other spiffeid.ID
}

func (w swappingCA) Fetch(ctx context.Context, _ spiffeid.ID, _ []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{w.other.URL()}}, key)
	if err != nil {
		return nil, err
	}
	return w.fakeCA.Fetch(ctx, w.other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), ttl)
}

func TestRejectsLeafForAnotherIdentity(t *testing.T) {
	m := start(t, Config{Fetcher: swappingCA{newFakeCA(t), id(t, "demo", "other")}})
	_, err := m.Fetch(t.Context(), id(t, "demo", "app"))
	if err == nil || !strings.Contains(err.Error(), "ca returned a leaf for spiffe://cluster.local/ns/demo/sa/other") {
		t.Errorf("Fetch = %v, want a refusal of the other identity's leaf", err)
	}
}

func TestRefreshAtHalfLife(t *testing.T) {
	ca := newFakeCA(t)
	ca.ttl = 2 * time.Second
	m := start(t, Config{Fetcher: ca})
	app := id(t, "demo", "app")
	first, err := m.Fetch(t.Context(), app)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a refresh", func() bool { c, _, _ := ca.snapshot(); return len(c) >= 2 })
	_, times, _ := ca.snapshot()
	if times[1].Before(first.RefreshAt) {
		t.Errorf("refreshed at %s, before the half life %s", times[1].Format(time.StampMicro), first.RefreshAt.Format(time.StampMicro))
	}
	eventually(t, 5*time.Second, "the refreshed certificate", func() bool {
		c, ok := m.Current(app)
		return ok && c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0
	})
}

func TestFailedRefreshKeepsValidCertAndBacksOff(t *testing.T) {
	ca := newFakeCA(t)
	ca.ttl = 6 * time.Second // whole seconds: x509 validity has second granularity
	m := start(t, Config{Fetcher: ca, MinBackoff: 40 * time.Millisecond, MaxBackoff: 160 * time.Millisecond})
	app := id(t, "demo", "app")
	first, err := m.Fetch(t.Context(), app)
	if err != nil {
		t.Fatal(err)
	}
	ca.set(func(f *fakeCA) { f.fail = true })
	// Refresh starts at 3 s; retries at +40, +80, +160, +160 ms (±20 %).
	eventually(t, 8*time.Second, "five failed refreshes", func() bool { c, _, _ := ca.snapshot(); return len(c) >= 6 })
	if c, ok := m.Current(app); !ok || c != first {
		t.Fatalf("the still-valid certificate was dropped after failed refreshes")
	}
	got, err := m.Fetch(t.Context(), app)
	if err != nil || got != first {
		t.Fatalf("Fetch during failing refreshes = %v, %v; want the held certificate", got, err)
	}
	_, times, _ := ca.snapshot()
	want := []time.Duration{40, 80, 160, 160}
	for i, w := range want {
		gap := times[i+2].Sub(times[i+1])
		if lo := w * time.Millisecond * 8 / 10; gap < lo {
			t.Errorf("retry %d came %s after the previous one, want at least %s", i+1, gap, lo)
		}
	}
	// Once the certificate expires it is dropped and Fetch reports the error.
	eventually(t, 8*time.Second, "expiry", func() bool { _, ok := m.Current(app); return !ok })
	if _, err := m.Fetch(t.Context(), app); err == nil || !strings.Contains(err.Error(), "ca unavailable") {
		t.Errorf("Fetch after expiry with a failing CA = %v, want the CA error", err)
	}
	ca.set(func(f *fakeCA) { f.fail = false })
	eventually(t, 5*time.Second, "recovery", func() bool { _, ok := m.Current(app); return ok })
}

func TestBackoffBounds(t *testing.T) {
	m, err := New(Config{Fetcher: newFakeCA(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{{1, 500 * time.Millisecond}, {2, time.Second}, {5, 8 * time.Second}, {9, 128 * time.Second}, {10, 150 * time.Second}, {40, 150 * time.Second}} {
		for range 50 {
			got := m.backoff(tc.failures)
			if lo, hi := tc.want*8/10, tc.want*12/10; got < lo || got > hi {
				t.Fatalf("backoff(%d) = %s, want %s ±20%%", tc.failures, got, tc.want)
			}
		}
	}
}

func TestAtMostEightFetches(t *testing.T) {
	ca := newFakeCA(t)
	ca.block = make(chan struct{})
	m := start(t, Config{Fetcher: ca})
	var ids []spiffeid.ID
	for i := range 20 {
		ids = append(ids, id(t, "demo", "sa"+string(rune('a'+i))))
	}
	m.SetLocalIdentities(ids)
	eventually(t, 5*time.Second, "8 fetches in flight", func() bool { _, _, p := ca.snapshot(); return p == 8 })
	close(ca.block)
	eventually(t, 10*time.Second, "all 20 certificates", func() bool {
		for _, i := range ids {
			if _, ok := m.Current(i); !ok {
				return false
			}
		}
		return true
	})
	if _, _, peak := ca.snapshot(); peak != 8 {
		t.Errorf("peak concurrent fetches %d, want 8", peak)
	}
}

func TestRealTimeGoesFirst(t *testing.T) {
	ca := newFakeCA(t)
	ca.block = make(chan struct{})
	ca.started = make(chan spiffeid.ID, 100)
	m := start(t, Config{Fetcher: ca, MaxConcurrent: 1})
	var warm []spiffeid.ID
	for i := range 5 {
		warm = append(warm, id(t, "demo", "warm"+string(rune('a'+i))))
	}
	m.SetLocalIdentities(warm)
	first := <-ca.started // one warm-up fetch holds the only slot
	urgent := id(t, "demo", "urgent")
	got := make(chan error, 1)
	go func() { _, err := m.Fetch(t.Context(), urgent); got <- err }()
	eventually(t, 5*time.Second, "the urgent request queued", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		e := m.entries[urgent]
		return e != nil && e.prio == RealTime
	})
	ca.block <- struct{}{} // release the first warm-up fetch
	if next := <-ca.started; next != urgent {
		t.Errorf("after %s the CA was asked for %s, want the RealTime %s first", first, next, urgent)
	}
	close(ca.block)
	if err := <-got; err != nil {
		t.Errorf("urgent Fetch: %v", err)
	}
}

func TestForgetIdentities(t *testing.T) {
	ca := newFakeCA(t)
	m := start(t, Config{Fetcher: ca})
	a, b := id(t, "demo", "a"), id(t, "demo", "b")
	m.SetLocalIdentities([]spiffeid.ID{a, b})
	eventually(t, 5*time.Second, "warm-up of a and b", func() bool {
		_, okA := m.Current(a)
		_, okB := m.Current(b)
		return okA && okB
	})
	m.SetLocalIdentities([]spiffeid.ID{b})
	if _, ok := m.Current(a); ok {
		t.Errorf("identity a still held after its pods left the node")
	}
	if got := m.Identities(); len(got) != 1 || got[0] != b {
		t.Errorf("Identities = %v, want [%s]", got, b)
	}
}

func TestTLSConfigsHandshake(t *testing.T) {
	ca := newFakeCA(t)
	m := start(t, Config{Fetcher: ca})
	client, server, other := id(t, "demo", "client"), id(t, "demo", "server"), id(t, "demo", "other")
	for _, tc := range []struct {
		name    string
		expect  spiffeid.ID
		wantErr bool
	}{
		{name: "expected server identity", expect: server},
		{name: "unexpected server identity", expect: other, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := handshake(t, m.ServerTLSConfig(server), m.ClientTLSConfig(client, AuthorizeServer(tc.expect)), client)
			if (err != nil) != tc.wantErr {
				t.Errorf("handshake err = %v, want error %v", err, tc.wantErr)
			}
		})
	}
	t.Run("client from another mesh", func(t *testing.T) {
		stranger := start(t, Config{Fetcher: newFakeCA(t)})
		if err := handshake(t, m.ServerTLSConfig(server), stranger.ClientTLSConfig(client, AuthorizeServer(server)), client); err == nil {
			t.Errorf("a client whose root the server does not trust completed the handshake")
		}
	})
}

// handshake runs one TLS connection over loopback and checks what the server saw.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config, wantClient spiffeid.ID) error {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srvCfg)
		if err := tc.HandshakeContext(t.Context()); err != nil {
			srvErr <- err
			return
		}
		st := tc.ConnectionState()
		if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != "h2" {
			srvErr <- errors.New("not TLS 1.3 with ALPN h2")
			return
		}
		if got, _ := spiffeid.FromURI(st.PeerCertificates[0].URIs[0]); got != wantClient {
			srvErr <- errors.New("server saw client " + got.String())
			return
		}
		_, err = io.Copy(c.(io.Writer), io.LimitReader(tc, 0))
		srvErr <- err
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cerr := tls.Client(c, cliCfg).HandshakeContext(t.Context())
	c.Close()
	serr := <-srvErr
	return errors.Join(cerr, serr)
}

// TestNoKubernetesImports enforces DESIGN.md §3: the data plane's certificate
// manager never links Kubernetes client libraries.
func TestNoKubernetesImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/controller-runtime") {
			t.Errorf("certmanager depends on %s; the data plane must not import Kubernetes packages", p)
		}
	}
}
