package ztunnel

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambient-mesh/mesh/pkg/certmanager"
)

// Certs supplies each pod's own workload certificate and the mesh trust
// bundle. *certmanager.Manager is the real one (CertManager adapts it);
// StaticCerts stands in for it in tests.
type Certs interface {
	// SVID returns id's current certificate, fetching it if none is held.
	SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)
	x509bundle.Source
}

// CertManager adapts a certmanager.Manager (whose Start must be running).
func CertManager(m *certmanager.Manager) Certs { return cmCerts{m} }

type cmCerts struct{ *certmanager.Manager }

func (c cmCerts) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	cert, err := c.Manager.Fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	return cert.SVID(), nil
}

// StaticCerts is a fixed set of certificates: the fake beside Certs.
// Safe for concurrent use.
type StaticCerts struct {
	Bundle x509bundle.Source
	mu     sync.Mutex
	svids  map[spiffeid.ID]*x509svid.SVID
}

// Add makes s the certificate for its identity.
func (c *StaticCerts) Add(s *x509svid.SVID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.svids == nil {
		c.svids = map[spiffeid.ID]*x509svid.SVID{}
	}
	c.svids[s.ID] = s
}

// SVID implements Certs.
func (c *StaticCerts) SVID(_ context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.svids[id]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("no certificate for %s", id)
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (c *StaticCerts) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return c.Bundle.GetX509BundleForTrustDomain(td)
}

// svidSource is the x509svid.Source the HBONE server presents for one pod:
// each handshake asks Certs for the current certificate.
type svidSource struct {
	certs   Certs
	id      spiffeid.ID
	timeout time.Duration
}

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.certs.SVID(ctx, s.id)
}
