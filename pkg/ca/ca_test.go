package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

// pluginFiles is a root → intermediate pair in Istio's plug-in layout.
type pluginFiles struct {
	caCert, caKey, certChain, rootCert []byte
	root                               *x509.Certificate
}

func newPluginFiles(t *testing.T) pluginFiles {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{
		SerialNumber: bigOne(t), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * 365 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{
		SerialNumber: bigOne(t), Subject: pkix.Name{CommonName: "test intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * 300 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	keyPEM, err := encodeKey(interKey)
	if err != nil {
		t.Fatal(err)
	}
	return pluginFiles{
		caCert: encodeCerts(inter), caKey: keyPEM,
		certChain: encodeCerts(inter, root), rootCert: encodeCerts(root), root: root,
	}
}

func bigOne(t *testing.T) *big.Int {
	t.Helper()
	s, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func csrPEM(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func mustID(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPluginLayoutSignsLeafToRoot(t *testing.T) {
	f := newPluginFiles(t)
	keys, err := ParseKeys(f.caCert, f.caKey, f.certChain, f.rootCert)
	if err != nil {
		t.Fatalf("ParseKeys: %v", err)
	}
	if len(keys.Chain) != 2 || !keys.Root().Equal(f.root) {
		t.Fatalf("chain = %d certs ending in %v, want intermediate, root", len(keys.Chain), keys.Root().Subject)
	}
	c, err := New(keys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := mustID(t, "spiffe://cluster.local/ns/demo/sa/app")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	got, err := c.Sign(csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}), id, 0)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if len(got.Chain) != 3 {
		t.Fatalf("chain has %d elements, want leaf, intermediate, root", len(got.Chain))
	}
	var parsed []*x509.Certificate
	for i, p := range got.Chain {
		cs, err := parseCerts([]byte(p))
		if err != nil || len(cs) != 1 {
			t.Fatalf("chain[%d]: %d certs, %v; want exactly one PEM certificate per element", i, len(cs), err)
		}
		parsed = append(parsed, cs[0])
	}
	if !parsed[2].Equal(f.root) {
		t.Errorf("last chain element is %v, want the root", parsed[2].Subject)
	}
	leaf := parsed[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames) != 0 {
		t.Errorf("leaf SANs = %v %v, want exactly %s", leaf.URIs, leaf.DNSNames, id)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("leaf key %T, want ECDSA", leaf.PublicKey)
	}
	if ttl := leaf.NotAfter.Sub(time.Now()); ttl < 23*time.Hour || ttl > 24*time.Hour+time.Minute {
		t.Errorf("leaf lifetime from now = %s, want the default 24h", ttl)
	}
	roots := x509.NewCertPool()
	roots.AddCert(parsed[2])
	inter := x509.NewCertPool()
	inter.AddCert(parsed[1])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("leaf does not verify to the root: %v", err)
	}
}

func TestParseKeysRejects(t *testing.T) {
	f := newPluginFiles(t)
	other := newPluginFiles(t)
	for _, tc := range []struct {
		name                   string
		cert, key, chain, root []byte
	}{
		{"key of another cert", f.caCert, other.caKey, f.certChain, f.rootCert},
		{"root that did not sign", f.caCert, f.caKey, f.caCert, other.rootCert},
		{"empty root", f.caCert, f.caKey, f.certChain, nil},
		{"garbage cert", []byte("nope"), f.caKey, f.certChain, f.rootCert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseKeys(tc.cert, tc.key, tc.chain, tc.root); err == nil {
				t.Errorf("ParseKeys accepted it")
			}
		})
	}
}

func TestSignRules(t *testing.T) {
	f := newPluginFiles(t)
	keys, err := ParseKeys(f.caCert, f.caKey, f.certChain, f.rootCert)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := New(keys, Options{MaxTTL: 48 * time.Hour})
	id := mustID(t, "spiffe://cluster.local/ns/demo/sa/app")
	other := mustID(t, "spiffe://cluster.local/ns/demo/sa/other")
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}})
	tampered := func() []byte {
		blk, _ := pem.Decode(good)
		b := append([]byte(nil), blk.Bytes...)
		b[len(b)-5] ^= 0xff // inside the signature
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: b})
	}()
	for _, tc := range []struct {
		name     string
		csr      []byte
		ttl      time.Duration
		wantRule string
		wantCode codes.Code
		wantTTL  time.Duration
	}{
		{name: "ok default ttl", csr: good, wantTTL: 24 * time.Hour},
		{name: "ok requested ttl", csr: good, ttl: time.Hour, wantTTL: time.Hour},
		{name: "ttl clamped to max", csr: good, ttl: 1000 * time.Hour, wantTTL: 48 * time.Hour},
		{name: "negative ttl", csr: good, ttl: -time.Second, wantRule: "ttl", wantCode: codes.InvalidArgument},
		{name: "garbage", csr: []byte("hello"), wantRule: "csr.parse", wantCode: codes.InvalidArgument},
		{name: "pem of garbage", csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}), wantRule: "csr.parse", wantCode: codes.InvalidArgument},
		{name: "bad signature", csr: tampered, wantRule: "csr.signature", wantCode: codes.InvalidArgument},
		{name: "rsa key", csr: csrPEM(t, rsaKey, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}), wantRule: "csr.key", wantCode: codes.InvalidArgument},
		{name: "p384 key", csr: csrPEM(t, p384, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}), wantRule: "csr.key", wantCode: codes.InvalidArgument},
		{name: "extra dns san", csr: csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, DNSNames: []string{"evil.example"}}), wantRule: "csr.san", wantCode: codes.InvalidArgument},
		{name: "extra ip san", csr: csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), wantRule: "csr.san", wantCode: codes.InvalidArgument},
		{name: "two uri sans", csr: csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{id.URL(), other.URL()}}), wantRule: "csr.san", wantCode: codes.InvalidArgument},
		{name: "no san", csr: csrPEM(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}), wantRule: "csr.san", wantCode: codes.InvalidArgument},
		{name: "another identity", csr: csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{other.URL()}}), wantRule: "csr.identity", wantCode: codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Sign(tc.csr, id, tc.ttl)
			if tc.wantRule != "" {
				var re *RuleError
				if !errors.As(err, &re) {
					t.Fatalf("Sign err = %v, want rule %s", err, tc.wantRule)
				}
				if re.Rule != tc.wantRule || re.Code != tc.wantCode {
					t.Errorf("refused by %s (%s), want %s (%s): %v", re.Rule, re.Code, tc.wantRule, tc.wantCode, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			life := got.Leaf.NotAfter.Sub(time.Now())
			if life > tc.wantTTL || life < tc.wantTTL-time.Minute {
				t.Errorf("lifetime %s, want %s", life, tc.wantTTL)
			}
		})
	}
}

func TestRootsPEMCurrentFirst(t *testing.T) {
	f := newPluginFiles(t)
	old := newPluginFiles(t)
	keys, err := ParseKeys(f.caCert, f.caKey, f.certChain, append(append([]byte{}, old.rootCert...), f.rootCert...))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := parseCerts(keys.RootsPEM())
	if len(roots) != 2 || !roots[0].Equal(f.root) || !roots[1].Equal(old.root) {
		t.Errorf("bundle = %d roots, want current root then the old one", len(roots))
	}
}

func TestServerTLSConfigFollowsKeys(t *testing.T) {
	f1, f2 := newPluginFiles(t), newPluginFiles(t)
	k1, err := ParseKeys(f1.caCert, f1.caKey, f1.certChain, f1.rootCert)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParseKeys(f2.caCert, f2.caKey, f2.certChain, f2.rootCert)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := New(k1, Options{})
	cfg := c.ServerTLSConfig("istiod.istio-system.svc")
	verify := func(root *x509.Certificate) *x509.Certificate {
		t.Helper()
		cert, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(root)
		inter := x509.NewCertPool()
		for _, der := range cert.Certificate[1:] {
			ic, _ := x509.ParseCertificate(der)
			inter.AddCert(ic)
		}
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "istiod.istio-system.svc", Roots: roots, Intermediates: inter}); err != nil {
			t.Fatalf("serving certificate does not verify for istiod.istio-system.svc: %v", err)
		}
		return cert.Leaf
	}
	first := verify(f1.root)
	if again := verify(f1.root); !again.Equal(first) {
		t.Errorf("a second handshake got a new serving certificate; want the cached one until half life")
	}
	c.SetKeys(k2)
	if rotated := verify(f2.root); rotated.Equal(first) {
		t.Errorf("serving certificate not reissued after the CA keys changed")
	}
}
