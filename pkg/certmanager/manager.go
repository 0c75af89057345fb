// Package certmanager is ztunnel's certificate manager: it holds one
// workload certificate per SPIFFE identity of the pods on the node, fetches
// them from the mesh CA (CreateCertificate) with priorities, refreshes them at
// half life, and hands out the tls.Configs HBONE clients and servers use.
//
// It is data-plane code: it imports no Kubernetes packages (an architecture
// test enforces this). ztunnel (cmd/ztunnel and the proxy packages) imports it:
//
//	conn, _ := certmanager.DialCA("istiod.istio-system.svc:15012", roots, "istiod.istio-system.svc")
//	m, _ := certmanager.New(certmanager.Config{
//		Fetcher: certmanager.NewCAClient(conn, certmanager.FileToken(tokenPath),
//			certmanager.CAClientOptions{Impersonate: true}),
//	})
//	go m.Start(ctx)
//	go m.WatchRootsFile(ctx, "/var/run/secrets/istio/root-cert.pem", 0)
//	m.SetLocalIdentities(idsOfPodsOnThisNode) // on every pod change
//	inbound := m.ServerTLSConfig(podID)       // or hbone.ServerConfig{SVID: m.SVIDSource(podID), Bundle: m}
//	outbound := m.ClientTLSConfig(srcID, certmanager.AuthorizeServer(dstIDs...))
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
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
)

// Priority orders pending fetches: a connection waiting on a certificate
// (RealTime) goes before warm-up of a new local identity (Warmup), which goes
// before a scheduled refresh (Background).
type Priority int

// Priorities, lowest first.
const (
	Background Priority = iota
	Warmup
	RealTime
)

func (p Priority) String() string {
	switch p {
	case Background:
		return "background"
	case Warmup:
		return "warmup"
	case RealTime:
		return "realtime"
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

// Fetcher obtains a signed chain for a CSR; *CAClient is the real one.
type Fetcher interface {
	// Fetch returns the chain for id, leaf first and root last.
	Fetch(ctx context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error)
}

// Certificate is one identity's key and chain.
type Certificate struct {
	ID spiffeid.ID
	// TLS holds the leaf, the intermediates (not the root) and the key.
	TLS  *tls.Certificate
	Leaf *x509.Certificate
	// Root anchors the chain the CA returned.
	Root *x509.Certificate
	// RefreshAt is the half life: not_before + (not_after - not_before)/2.
	RefreshAt time.Time

	svid *x509svid.SVID
}

// SVID is the certificate as go-spiffe's X509-SVID (leaf and intermediates),
// for hbone.Request.Source.
func (c *Certificate) SVID() *x509svid.SVID { return c.svid }

// ValidAt reports whether the certificate may be used at t.
func (c *Certificate) ValidAt(t time.Time) bool {
	return c != nil && !t.Before(c.Leaf.NotBefore) && t.Before(c.Leaf.NotAfter)
}

// Config configures a Manager.
type Config struct {
	// Fetcher talks to the CA (required).
	Fetcher Fetcher
	// TrustDomain of the mesh; default cluster.local.
	TrustDomain string
	// TTL requested for each certificate; default 24 h.
	TTL time.Duration
	// MaxConcurrent fetches; default 8.
	MaxConcurrent int
	// MinBackoff and MaxBackoff bound the retry delay after failed fetches
	// (doubling, ±20 % jitter); defaults 500 ms and 150 s.
	MinBackoff, MaxBackoff time.Duration
	// FetchTimeout bounds one CreateCertificate call; default 30 s.
	FetchTimeout time.Duration
	// Roots is the mesh trust bundle (root-cert.pem); SetRoots replaces it.
	// Roots of the chains the CA returns are trusted as well.
	Roots  []*x509.Certificate
	Logger *zap.Logger
}

// Manager holds the node's workload certificates.
//
// Concurrency: mu guards entries, inflight and roots. One scheduler goroutine
// (Start) picks due entries and starts at most MaxConcurrent fetch goroutines;
// a fetch goroutine writes its result back under mu and only if its entry is
// still in the map (a forgotten identity's late result is dropped). Each entry's
// changed channel is closed and replaced on every state change, which is how
// Fetch callers wait. The trust bundle is rebuilt under mu on each change and
// read lock-free by handshakes.
type Manager struct {
	cfg  Config
	td   spiffeid.TrustDomain
	log  *zap.Logger
	kick chan struct{}

	mu       sync.Mutex
	entries  map[spiffeid.ID]*entry
	inflight int
	roots    []*x509.Certificate
	bundle   *x509bundle.Bundle
}

type entry struct {
	id       spiffeid.ID
	cert     *Certificate
	prio     Priority
	due      time.Time // next fetch; zero when none is scheduled
	fetching bool
	failures int
	attempts int
	lastErr  error
	changed  chan struct{}
}

// New builds a Manager; call Start to run its fetches.
func New(cfg Config) (*Manager, error) {
	if cfg.Fetcher == nil {
		return nil, errors.New("certmanager: no Fetcher")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	if cfg.TTL == 0 {
		cfg.TTL = 24 * time.Hour
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = 8
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 150 * time.Second
	}
	if cfg.FetchTimeout == 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("certmanager: trust domain %q: %w", cfg.TrustDomain, err)
	}
	m := &Manager{
		cfg:     cfg,
		td:      td,
		log:     cfg.Logger.Named("certmanager"),
		kick:    make(chan struct{}, 1),
		entries: map[spiffeid.ID]*entry{},
		roots:   cfg.Roots,
	}
	m.rebuildBundleLocked()
	return m, nil
}

// TrustDomain is the mesh trust domain.
func (m *Manager) TrustDomain() spiffeid.TrustDomain { return m.td }

// Start runs the scheduler until ctx ends, then waits for fetches in flight.
func (m *Manager) Start(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		now := time.Now()
		for m.inflight < m.cfg.MaxConcurrent {
			e := m.pickLocked(now)
			if e == nil {
				break
			}
			e.fetching = true
			m.inflight++
			wg.Add(1)
			go func(e *entry, prio Priority) {
				defer wg.Done()
				m.fetch(ctx, e, prio)
			}(e, e.prio)
		}
		next := time.Hour
		if m.inflight < m.cfg.MaxConcurrent {
			for _, e := range m.entries {
				if !e.fetching && !e.due.IsZero() {
					next = min(next, e.due.Sub(now))
				}
			}
		}
		m.mu.Unlock()
		timer.Reset(max(next, 0))
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
		case <-timer.C:
		}
	}
}

// pickLocked returns the due entry to fetch next: highest priority, then
// earliest due time. O(n) in identities, which is the pods of one node.
func (m *Manager) pickLocked(now time.Time) *entry {
	var best *entry
	for _, e := range m.entries {
		if e.fetching || e.due.IsZero() || e.due.After(now) {
			continue
		}
		if best == nil || e.prio > best.prio || (e.prio == best.prio && e.due.Before(best.due)) {
			best = e
		}
	}
	return best
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Manager) fetch(ctx context.Context, e *entry, prio Priority) {
	fctx, cancel := context.WithTimeout(ctx, m.cfg.FetchTimeout)
	cert, err := m.request(fctx, e.id)
	cancel()

	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.poke()
	m.inflight--
	e.fetching = false
	e.attempts++
	if m.entries[e.id] != e {
		return // forgotten while in flight
	}
	now := time.Now()
	if err != nil {
		e.failures++
		e.lastErr = err
		delay := m.backoff(e.failures)
		e.due = now.Add(delay)
		if e.cert != nil && !e.cert.ValidAt(now) {
			e.cert = nil
		}
		m.log.Warn("certificate fetch failed", zap.Stringer("identity", e.id), zap.Stringer("priority", prio),
			zap.Int("failures", e.failures), zap.Duration("retry_in", delay), zap.Bool("kept_valid_cert", e.cert != nil), zap.Error(err))
	} else {
		e.cert = cert
		e.failures = 0
		e.lastErr = nil
		e.prio = Background
		e.due = cert.RefreshAt
		m.rebuildBundleLocked()
		m.log.Info("certificate fetched", zap.Stringer("identity", e.id), zap.Stringer("priority", prio),
			zap.String("serial", cert.Leaf.SerialNumber.Text(16)), zap.Time("expiry", cert.Leaf.NotAfter), zap.Time("refresh_at", cert.RefreshAt))
	}
	close(e.changed)
	e.changed = make(chan struct{})
}

// backoff is MinBackoff·2^(failures-1), capped at MaxBackoff, ±20 % jitter.
func (m *Manager) backoff(failures int) time.Duration {
	d := float64(m.cfg.MinBackoff) * math.Pow(2, float64(failures-1))
	d = math.Min(d, float64(m.cfg.MaxBackoff))
	d *= 1 + 0.2*(2*mrand.Float64()-1)
	return time.Duration(d)
}

// request generates a key and CSR, asks the CA, and checks what it returned.
func (m *Manager) request(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", id, err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("create csr for %s: %w", id, err)
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	chain, err := m.cfg.Fetcher.Fetch(ctx, id, csr, m.cfg.TTL)
	if err != nil {
		return nil, fmt.Errorf("fetch certificate for %s: %w", id, err)
	}
	return buildCertificate(id, key, chain)
}

func buildCertificate(id spiffeid.ID, key *ecdsa.PrivateKey, chain []*x509.Certificate) (*Certificate, error) {
	if len(chain) < 2 {
		return nil, fmt.Errorf("ca returned %d certificates for %s, want leaf..root", len(chain), id)
	}
	leaf, root := chain[0], chain[len(chain)-1]
	got, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("ca returned a leaf without a SPIFFE ID for %s: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("ca returned a leaf for %s, want %s", got, id)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("ca returned a leaf for %s that does not match the requested key", id)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("ca returned a chain for %s that does not verify: %w", id, err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain[:len(chain)-1] {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return &Certificate{
		ID:        id,
		TLS:       tc,
		Leaf:      leaf,
		Root:      root,
		RefreshAt: leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2),
		svid:      &x509svid.SVID{ID: id, Certificates: chain[:len(chain)-1], PrivateKey: key},
	}, nil
}

// Fetch returns id's certificate, fetching it at RealTime priority when the
// manager holds no valid one. It waits for at most one fetch attempt: when
// that attempt (or the previous one, if a retry is backing off) failed, it
// returns the error at once. Start must be running.
func (m *Manager) Fetch(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	m.mu.Lock()
	e := m.entryLocked(id, RealTime)
	startAttempts := e.attempts
	for {
		now := time.Now()
		if e.cert.ValidAt(now) {
			c := e.cert
			m.mu.Unlock()
			return c, nil
		}
		if e.lastErr != nil && (e.attempts != startAttempts || (!e.fetching && e.due.After(now))) {
			err := e.lastErr
			m.mu.Unlock()
			return nil, err
		}
		if !e.fetching {
			e.prio = RealTime
			e.due = now
			m.poke()
		}
		ch := e.changed
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for certificate of %s: %w", id, ctx.Err())
		case <-ch:
		}
		m.mu.Lock()
		if cur := m.entries[id]; cur != e {
			m.mu.Unlock()
			return nil, fmt.Errorf("certificate of %s: identity forgotten (no local pods)", id)
		}
	}
}

// SVIDSource is an x509svid.Source for id (hbone.ServerConfig.SVID): each
// handshake gets the current certificate, waiting up to FetchTimeout for a
// RealTime fetch when none is held (the interface carries no context).
func (m *Manager) SVIDSource(id spiffeid.ID) x509svid.Source { return svidSource{m, id} }

type svidSource struct {
	m  *Manager
	id spiffeid.ID
}

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) {
	if c, ok := s.m.Current(s.id); ok {
		return c.svid, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.m.cfg.FetchTimeout)
	defer cancel()
	c, err := s.m.Fetch(ctx, s.id)
	if err != nil {
		return nil, err
	}
	return c.svid, nil
}

// Current returns id's certificate if one is held and valid, without fetching.
func (m *Manager) Current(id spiffeid.ID) (*Certificate, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[id]; e != nil && e.cert.ValidAt(time.Now()) {
		return e.cert, true
	}
	return nil, false
}

func (m *Manager) entryLocked(id spiffeid.ID, prio Priority) *entry {
	e := m.entries[id]
	if e == nil {
		e = &entry{id: id, prio: prio, due: time.Now(), changed: make(chan struct{})}
		m.entries[id] = e
		m.poke()
	}
	return e
}

// SetLocalIdentities declares the identities of the pods on this node: new
// ones are fetched at Warmup priority, and identities not listed are
// forgotten (their certificates dropped, their waiters released, a fetch in
// flight discarded).
func (m *Manager) SetLocalIdentities(ids []spiffeid.ID) {
	keep := make(map[spiffeid.ID]bool, len(ids))
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		keep[id] = true
		m.entryLocked(id, Warmup)
	}
	forgot := 0
	for id, e := range m.entries {
		if !keep[id] {
			delete(m.entries, id)
			close(e.changed)
			forgot++
		}
	}
	if forgot > 0 {
		m.rebuildBundleLocked()
		m.log.Info("forgot identities without local pods", zap.Int("count", forgot))
	}
}

// Identities lists the identities the manager tracks.
func (m *Manager) Identities() []spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]spiffeid.ID, 0, len(m.entries))
	for id := range m.entries {
		out = append(out, id)
	}
	return out
}

// SetRoots replaces the configured trust bundle (root-cert.pem of the
// istio-ca-root-cert ConfigMap; during a root rotation it holds old and new
// roots so peers with either are trusted).
func (m *Manager) SetRoots(roots []*x509.Certificate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.roots = roots
	m.rebuildBundleLocked()
}

// SetRootsPEM parses a PEM bundle and calls SetRoots.
func (m *Manager) SetRootsPEM(b []byte) error {
	roots, err := ParseCertificates(b)
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	if len(roots) == 0 {
		return errors.New("trust bundle: no certificates")
	}
	m.SetRoots(roots)
	return nil
}

func (m *Manager) rebuildBundleLocked() {
	b := x509bundle.New(m.td)
	for _, r := range m.roots {
		b.AddX509Authority(r)
	}
	for _, e := range m.entries {
		if e.cert != nil {
			b.AddX509Authority(e.cert.Root)
		}
	}
	m.bundle = b
}

// GetX509BundleForTrustDomain makes the Manager an x509bundle.Source for
// go-spiffe's verifiers.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	m.mu.Lock()
	b := m.bundle
	m.mu.Unlock()
	if td != m.td {
		return nil, fmt.Errorf("no bundle for trust domain %q (mesh trust domain is %q)", td, m.td)
	}
	return b, nil
}

// ParseCertificates decodes every CERTIFICATE block of a PEM buffer.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
}
