package ztunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap/zaptest"

	"github.com/ambient-mesh/mesh/pkg/certmanager"
)

// signer is a CA in memory that signs CSRs (certmanager.Fetcher), so the
// production certificate path runs: CSR per pod identity, fetch at
// RealTime priority on first use, the bundle from the manager.
type signer struct {
	key  *ecdsa.PrivateKey
	root *x509.Certificate
}

func newSigner(t testing.TB) *signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{key: key, root: root}
}

func (s *signer) Fetch(_ context.Context, _ spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil {
		return nil, errors.New("no PEM CSR")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl),
		URIs: csr.URIs, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.root, csr.PublicKey, s.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, s.root}, nil
}

func TestPodsWithCertManager(t *testing.T) {
	sg := newSigner(t)
	mgr, err := certmanager.New(certmanager.Config{Fetcher: sg, Roots: []*x509.Certificate{sg.root}, Logger: zaptest.NewLogger(t).Named("certs")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("certmanager Start: %v", err)
		}
	})
	m := newMesh(t, true, zaptest.NewLogger(t), CertManager(mgr))
	app := startEcho(t, m.b)
	c, r := dialFromApp(t, m.a, netip.AddrPortFrom(svcVIP, 80))
	expectEcho(t, c, r, podA)
	if app.accepted.Load() != 1 {
		t.Errorf("app accepted %d connections, want 1", app.accepted.Load())
	}
	var ids []string
	for _, id := range mgr.Identities() {
		ids = append(ids, id.String())
	}
	slices.Sort(ids)
	if want := []string{"spiffe://cluster.local/ns/a/sa/client", "spiffe://cluster.local/ns/b/sa/server"}; !slices.Equal(ids, want) {
		t.Errorf("certificates fetched for %v, want %v (each pod's own identity)", ids, want)
	}
}
