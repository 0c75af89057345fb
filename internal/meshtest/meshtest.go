// Package meshtest issues throw-away mesh certificates for tests: a root CA
// per trust domain and ECDSA P-256 leaf SVIDs carrying one SPIFFE URI SAN, the
// shape istiod's CA issues. It is imported only by tests (pkg/hbone and any
// other package that needs mTLS peers on loopback) and by the benchmark
// drivers under hack/bench; never use it in a binary the mesh ships.
package meshtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a self-signed mesh root for one trust domain. It is safe for
// concurrent use: its fields are written only by NewCA.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	key         crypto.Signer
}

// NewCA makes a root certificate for the trust domain td (e.g. "cluster.local").
func NewCA(td string) (*CA, error) {
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("meshtest: trust domain %q: %w", td, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("meshtest: generate root key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{td}, CommonName: "meshtest root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{trust.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("meshtest: sign root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("meshtest: parse root: %w", err)
	}
	return &CA{TrustDomain: trust, Cert: cert, key: key}, nil
}

// Bundle returns the CA as a go-spiffe trust bundle (an x509bundle.Source).
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
}

// Pool returns the CA as an x509.CertPool, for code that is not SPIFFE-aware.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// ID returns spiffe://<trust domain>/ns/<ns>/sa/<sa>, the Istio identity form.
func (ca *CA) ID(ns, sa string) spiffeid.ID {
	id, err := spiffeid.FromSegments(ca.TrustDomain, "ns", ns, "sa", sa)
	if err != nil {
		panic(fmt.Sprintf("meshtest: identity ns=%q sa=%q: %v", ns, sa, err))
	}
	return id
}

// SVID issues a 24 h leaf for the workload ns/sa of this trust domain.
func (ca *CA) SVID(ns, sa string) (*x509svid.SVID, error) {
	return ca.Issue(ca.ID(ns, sa).URL())
}

// Issue signs a leaf whose URI SANs are exactly uris (tests use it for
// certificates with no, several or foreign URI SANs).
func (ca *CA) Issue(uris ...*url.URL) (*x509svid.SVID, error) {
	return ca.IssueWithIPs(nil, uris...)
}

// IssueWithIPs is Issue with IP address SANs too, for a peer that is
// reached by its address and checked by hostname (a plain TLS client).
func (ca *CA) IssueWithIPs(ips []net.IP, uris ...*url.URL) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("meshtest: generate leaf key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         uris,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("meshtest: sign leaf: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("meshtest: parse leaf: %w", err)
	}
	svid := &x509svid.SVID{Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
	if len(uris) == 1 {
		if id, err := spiffeid.FromURI(uris[0]); err == nil {
			svid.ID = id
		}
	}
	return svid, nil
}

// TLSCertificate converts an SVID into a tls.Certificate (leaf first).
func TLSCertificate(s *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, x := range s.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(fmt.Sprintf("meshtest: serial: %v", err))
	}
	return n
}
