package ca

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
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"
)

// Defaults for workload certificates (Istio's DEFAULT_WORKLOAD_CERT_TTL and
// MAX_WORKLOAD_CERT_TTL).
const (
	DefaultTTL    = 24 * time.Hour
	DefaultMaxTTL = 90 * 24 * time.Hour
)

// Options configure a CA.
type Options struct {
	// TrustDomain of issued identities; default cluster.local.
	TrustDomain string
	// DefaultTTL applies when a request asks for none; default 24 h.
	DefaultTTL time.Duration
	// MaxTTL clamps requested TTLs; default 90 days.
	MaxTTL time.Duration
	// Logger; default a no-op logger.
	Logger *zap.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// CA signs workload certificates with the current Keys.
//
// Concurrency: keys and watchers are guarded by mu; Sign takes a read lock
// only to copy the *Keys pointer, so signing runs in parallel and a rotation
// (SetKeys) never waits for signatures in flight.
type CA struct {
	opts Options
	td   spiffeid.TrustDomain
	log  *zap.Logger

	mu       sync.RWMutex
	keys     *Keys
	watchers []func()
}

// New builds a CA from keys.
func New(keys *Keys, opts Options) (*CA, error) {
	if keys == nil {
		return nil, errors.New("ca: nil keys")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.DefaultTTL == 0 {
		opts.DefaultTTL = DefaultTTL
	}
	if opts.MaxTTL == 0 {
		opts.MaxTTL = DefaultMaxTTL
	}
	if opts.DefaultTTL > opts.MaxTTL {
		opts.DefaultTTL = opts.MaxTTL
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("ca: trust domain %q: %w", opts.TrustDomain, err)
	}
	return &CA{opts: opts, td: td, log: opts.Logger.Named("ca"), keys: keys}, nil
}

// TrustDomain of the identities this CA issues.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Keys returns the current signing material.
func (c *CA) Keys() *Keys {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.keys
}

// SetKeys swaps in new signing material (after a root rotation or a new
// cacerts) and calls the functions registered with OnRootsChange when the
// bundle changed.
func (c *CA) SetKeys(k *Keys) {
	c.mu.Lock()
	changed := string(c.keys.RootsPEM()) != string(k.RootsPEM())
	c.keys = k
	watchers := append([]func(){}, c.watchers...)
	c.mu.Unlock()
	c.log.Info("ca keys replaced", zap.String("source", k.Source), zap.String("root_serial", k.Root().SerialNumber.Text(16)), zap.Int("roots", len(k.Roots)))
	if changed {
		for _, w := range watchers {
			w()
		}
	}
}

// OnRootsChange registers fn to run (synchronously, so keep it short) after
// every SetKeys that changed the trust bundle.
func (c *CA) OnRootsChange(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watchers = append(c.watchers, fn)
}

// RootsPEM is the trust bundle published to the mesh.
func (c *CA) RootsPEM() []byte { return c.Keys().RootsPEM() }

// RuleError is a refused request: Rule names the check that failed and Code
// is the gRPC code the service answers with.
type RuleError struct {
	Code codes.Code
	Rule string
	Msg  string
}

func (e *RuleError) Error() string { return e.Rule + ": " + e.Msg }

// GRPCStatus lets grpc/status turn the error into its code and message.
func (e *RuleError) GRPCStatus() *status.Status { return status.New(e.Code, e.Error()) }

func refuse(code codes.Code, rule, format string, args ...any) *RuleError {
	return &RuleError{Code: code, Rule: rule, Msg: fmt.Sprintf(format, args...)}
}

// Issued is a signed leaf with its chain, leaf first and root last, one PEM
// certificate per element (the shape ztunnel expects).
type Issued struct {
	Leaf  *x509.Certificate
	Chain []string
}

// Sign validates a PEM CSR for id and signs it for ttl (0 means the default;
// longer than the maximum is clamped). Refusals are *RuleError.
func (c *CA) Sign(csrPEM []byte, id spiffeid.ID, ttl time.Duration) (*Issued, error) {
	csr, err := c.validateCSR(csrPEM, id)
	if err != nil {
		return nil, err
	}
	ttl, err = c.clampTTL(ttl)
	if err != nil {
		return nil, err
	}
	keys := c.Keys()
	leaf, err := c.signLeaf(keys, csr.PublicKey, ttl, func(t *x509.Certificate) { t.URIs = []*url.URL{id.URL()} })
	if err != nil {
		return nil, err
	}
	return &Issued{Leaf: leaf, Chain: chainPEM(leaf, keys)}, nil
}

func (c *CA) clampTTL(ttl time.Duration) (time.Duration, error) {
	switch {
	case ttl < 0:
		return 0, refuse(codes.InvalidArgument, "ttl", "validity_duration %s is negative", ttl)
	case ttl == 0:
		return c.opts.DefaultTTL, nil
	case ttl > c.opts.MaxTTL:
		return c.opts.MaxTTL, nil
	}
	return ttl, nil
}

func (c *CA) validateCSR(csrPEM []byte, id spiffeid.ID) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || (blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST") {
		return nil, refuse(codes.InvalidArgument, "csr.parse", "csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, refuse(codes.InvalidArgument, "csr.parse", "csr does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, refuse(codes.InvalidArgument, "csr.signature", "csr signature does not verify: %v", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, refuse(codes.InvalidArgument, "csr.key", "csr key must be ECDSA P-256, got %s", keyName(csr.PublicKey))
	}
	if n := len(csr.DNSNames) + len(csr.EmailAddresses) + len(csr.IPAddresses); n != 0 || len(csr.URIs) != 1 {
		return nil, refuse(codes.InvalidArgument, "csr.san", "csr must carry exactly one URI SAN and no other SAN, got %d URI, %d DNS, %d IP, %d email",
			len(csr.URIs), len(csr.DNSNames), len(csr.IPAddresses), len(csr.EmailAddresses))
	}
	if got := csr.URIs[0].String(); got != id.String() {
		return nil, refuse(codes.PermissionDenied, "csr.identity", "csr URI SAN %q is not the identity being issued %q", got, id.String())
	}
	return csr, nil
}

func keyName(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case interface{ Size() int }:
		return fmt.Sprintf("%T (%d bytes)", k, k.Size())
	}
	return fmt.Sprintf("%T", k)
}

func (c *CA) signLeaf(keys *Keys, pub any, ttl time.Duration, fill func(*x509.Certificate)) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := c.opts.Now()
	// Backdate a little for clock skew between nodes, never by more than a
	// tenth of the lifetime so the half-life refresh stays near the middle.
	skew := min(time.Minute, ttl/10)
	notAfter := now.Add(ttl)
	if notAfter.After(keys.Cert.NotAfter) {
		notAfter = keys.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-skew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	fill(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, keys.Cert, pub, keys.Key)
	if err != nil {
		return nil, fmt.Errorf("sign leaf: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed leaf: %w", err)
	}
	return leaf, nil
}

func chainPEM(leaf *x509.Certificate, keys *Keys) []string {
	out := make([]string, 0, 1+len(keys.Chain))
	out = append(out, string(encodeCerts(leaf)))
	for _, c := range keys.Chain {
		out = append(out, string(encodeCerts(c)))
	}
	return out
}

// ServerTLSConfig is istiod-lite's own TLS config for port 15012: a
// certificate for dnsNames (e.g. istiod.<ns>.svc) signed by this CA, renewed
// at half life, TLS 1.2+ with ALPN h2.
func (c *CA) ServerTLSConfig(dnsNames ...string) *tls.Config {
	var (
		mu     sync.Mutex
		cur    *tls.Certificate
		signer *Keys // the keys cur was signed with; new keys mean a new certificate
		half   time.Time
	)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			keys := c.Keys()
			if cur != nil && signer == keys && c.opts.Now().Before(half) {
				return cur, nil
			}
			cert, err := c.servingCertificate(keys, dnsNames)
			if err != nil {
				return nil, err
			}
			cur, signer = cert, keys
			half = cert.Leaf.NotBefore.Add(cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore) / 2)
			return cur, nil
		},
	}
}

func (c *CA) servingCertificate(keys *Keys, dnsNames []string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	leaf, err := c.signLeaf(keys, key.Public(), c.opts.DefaultTTL, func(t *x509.Certificate) {
		t.DNSNames = dnsNames
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	if err != nil {
		return nil, err
	}
	cert := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, ch := range keys.Chain[:len(keys.Chain)-1] {
		cert.Certificate = append(cert.Certificate, ch.Raw)
	}
	c.log.Info("issued serving certificate", zap.Strings("dns", dnsNames), zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("expiry", leaf.NotAfter))
	return cert, nil
}

// Reloader follows the CA Secrets so every replica picks up a rotation or a
// new cacerts. It is a controller-runtime Runnable (Start blocks until ctx
// ends); it polls instead of watching so it needs only get on two Secrets.
type Reloader struct {
	CA        *CA
	Client    kubernetes.Interface
	Namespace string
	// Interval between reads; default 10 s.
	Interval time.Duration
	Logger   *zap.Logger
}

// Start polls until ctx ends; a read error is logged and retried.
func (r *Reloader) Start(ctx context.Context) error {
	iv := r.Interval
	if iv == 0 {
		iv = 10 * time.Second
	}
	log := r.Logger
	if log == nil {
		log = zap.NewNop()
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := r.ReloadOnce(ctx); err != nil && ctx.Err() == nil {
			log.Warn("ca keys reload failed", zap.Error(err))
		}
	}
}

// ReloadOnce reads the Secrets once and swaps the keys in if they changed.
func (r *Reloader) ReloadOnce(ctx context.Context) error {
	k, err := LoadKeys(ctx, r.Client, r.Namespace)
	if err != nil {
		return err
	}
	if !k.equal(r.CA.Keys()) {
		r.CA.SetKeys(k)
	}
	return nil
}
