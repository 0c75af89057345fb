package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Key names of Istio's plug-in CA Secret layout (`cacerts`) and of the
// self-signed root Secret (`istio-ca-secret`).
const (
	CACertKey    = "ca-cert.pem"
	CAKeyKey     = "ca-key.pem"
	CertChainKey = "cert-chain.pem"
	RootCertKey  = "root-cert.pem"
)

// Keys is the CA's signing material. A Keys value is immutable once built:
// rotation builds a new one and swaps it into the CA.
type Keys struct {
	// Cert is the signing certificate (ca-cert.pem), a root or an intermediate.
	Cert *x509.Certificate
	// Key is Cert's private key (ca-key.pem).
	Key crypto.Signer
	// Chain runs from Cert up to and including the root that anchors it.
	Chain []*x509.Certificate
	// Roots is the trust bundle published to the mesh (root-cert.pem). During a
	// root rotation it holds the new root and the previous ones.
	Roots []*x509.Certificate
	// Source names the Secret the keys came from.
	Source string
}

// ParseKeys builds Keys from Istio's plug-in layout. certChainPEM may be empty
// (self-signed root) or hold Cert's issuers, with or without Cert itself.
func ParseKeys(caCertPEM, caKeyPEM, certChainPEM, rootCertPEM []byte) (*Keys, error) {
	certs, err := parseCerts(caCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertKey, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate", CACertKey)
	}
	cert := certs[0]
	key, err := parseKey(caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyKey, err)
	}
	if !publicKeyEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s", CAKeyKey, CACertKey)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s: not a CA certificate (basicConstraints CA and keyCertSign are required)", CACertKey)
	}
	roots, err := parseCerts(rootCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", RootCertKey, err)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%s: no certificate", RootCertKey)
	}
	extra, err := parseCerts(certChainPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CertChainKey, err)
	}
	chain := []*x509.Certificate{cert}
	for _, c := range append(certs[1:], extra...) {
		if !containsCert(chain, c) {
			chain = append(chain, c)
		}
	}
	if top := chain[len(chain)-1]; !isSelfSigned(top) {
		root := issuerIn(top, roots)
		if root == nil {
			return nil, fmt.Errorf("%s: no root issued %q", RootCertKey, top.Subject)
		}
		chain = append(chain, root)
	}
	anchor := chain[len(chain)-1]
	if !containsCert(roots, anchor) {
		return nil, fmt.Errorf("%s does not contain the root %q that anchors %s", RootCertKey, anchor.Subject, CACertKey)
	}
	pool := x509.NewCertPool()
	pool.AddCert(anchor)
	inter := x509.NewCertPool()
	for i := 1; i < len(chain)-1; i++ {
		inter.AddCert(chain[i])
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s does not chain to %s: %w", CACertKey, RootCertKey, err)
	}
	return &Keys{Cert: cert, Key: key, Chain: chain, Roots: roots}, nil
}

// Root is the root that anchors the signing chain.
func (k *Keys) Root() *x509.Certificate { return k.Chain[len(k.Chain)-1] }

// RootsPEM is the trust bundle in PEM, the current anchor first.
func (k *Keys) RootsPEM() []byte {
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: k.Root().Raw})
	for _, r := range k.Roots {
		if !r.Equal(k.Root()) {
			_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
		}
	}
	return b.Bytes()
}

// ValidRoots is the bundle without roots that expired before now.
func (k *Keys) ValidRoots(now time.Time) []*x509.Certificate {
	var out []*x509.Certificate
	for _, r := range k.Roots {
		if now.Before(r.NotAfter) {
			out = append(out, r)
		}
	}
	return out
}

func (k *Keys) equal(o *Keys) bool {
	if k == nil || o == nil {
		return k == o
	}
	return k.Cert.Equal(o.Cert) && bytes.Equal(k.RootsPEM(), o.RootsPEM()) && len(k.Chain) == len(o.Chain)
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
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
	if len(bytes.TrimSpace(b)) != 0 && len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key")
		}
		var (
			k   any
			err error
		)
		switch blk.Type {
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", blk.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		return s, nil
	}
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	switch a := a.(type) {
	case *ecdsa.PublicKey:
		return a.Equal(b)
	case *rsa.PublicKey:
		return a.Equal(b)
	case ed25519.PublicKey:
		return a.Equal(b)
	}
	return false
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func issuerIn(c *x509.Certificate, roots []*x509.Certificate) *x509.Certificate {
	for _, r := range roots {
		if bytes.Equal(c.RawIssuer, r.RawSubject) && c.CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return nil
}
