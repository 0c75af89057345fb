package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// Secret names: Istio's plug-in CA and the self-signed root.
const (
	PluginSecretName     = "cacerts"
	SelfSignedSecretName = "istio-ca-secret"
	// SelfSignedSecretType is the Secret type Istio gives istio-ca-secret.
	SelfSignedSecretType corev1.SecretType = "istio.io/ca-root"
	// OverlapUntilAnnotation on istio-ca-secret says until when root-cert.pem
	// keeps the roots that a rotation replaced (RFC 3339).
	OverlapUntilAnnotation = "ca.ambient-mesh.io/root-overlap-until"
)

// ErrNoKeys means neither cacerts nor istio-ca-secret exists yet.
var ErrNoKeys = errors.New("no CA keys: neither Secret " + PluginSecretName + " nor " + SelfSignedSecretName + " exists")

// RootOptions tune the self-signed root.
type RootOptions struct {
	// TrustDomain becomes the root's organization; default cluster.local.
	TrustDomain string
	// TTL of a generated root; default 10 years.
	TTL time.Duration
	// Overlap is how long a rotation keeps the replaced root in the bundle; it
	// should outlast the leaves the old root signed. Default 48 h, twice the
	// default leaf TTL.
	Overlap time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default a no-op logger.
	Logger *zap.Logger
}

func (o RootOptions) withDefaults() RootOptions {
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.TTL == 0 {
		o.TTL = 10 * 365 * 24 * time.Hour
	}
	if o.Overlap == 0 {
		o.Overlap = 48 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o
}

// LoadKeys reads the CA keys: the plug-in Secret cacerts when it exists, else
// the self-signed istio-ca-secret, else ErrNoKeys.
func LoadKeys(ctx context.Context, cs kubernetes.Interface, namespace string) (*Keys, error) {
	for _, name := range []string{PluginSecretName, SelfSignedSecretName} {
		s, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get secret %s/%s: %w", namespace, name, err)
		}
		return keysFromSecret(s)
	}
	return nil, ErrNoKeys
}

// WaitForKeys polls LoadKeys until keys exist (a replica that is not the
// leader waits for the leader's EnsureSelfSignedRoot) or ctx ends.
func WaitForKeys(ctx context.Context, cs kubernetes.Interface, namespace string, interval time.Duration) (*Keys, error) {
	var keys *Keys
	err := wait.PollUntilContextCancel(ctx, interval, true, func(ctx context.Context) (bool, error) {
		k, err := LoadKeys(ctx, cs, namespace)
		if errors.Is(err, ErrNoKeys) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		keys = k
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for CA keys in %s: %w", namespace, err)
	}
	return keys, nil
}

// EnsureSelfSignedRoot is what the leader calls at start (and may call again
// at any time; it is idempotent). With a plug-in cacerts Secret it just loads
// it. Otherwise it generates a self-signed root once and stores it in
// istio-ca-secret, reuses it after restarts, and prunes replaced roots whose
// overlap has ended. Concurrent callers converge on the Secret that won the
// create.
func EnsureSelfSignedRoot(ctx context.Context, cs kubernetes.Interface, namespace string, opts RootOptions) (*Keys, error) {
	opts = opts.withDefaults()
	secrets := cs.CoreV1().Secrets(namespace)
	if _, err := secrets.Get(ctx, PluginSecretName, metav1.GetOptions{}); err == nil {
		return LoadKeys(ctx, cs, namespace)
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get secret %s/%s: %w", namespace, PluginSecretName, err)
	}
	s, err := secrets.Get(ctx, SelfSignedSecretName, metav1.GetOptions{})
	switch {
	case err == nil:
		return pruneRoots(ctx, cs, s, opts)
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("get secret %s/%s: %w", namespace, SelfSignedSecretName, err)
	}
	root, key, err := newRoot(opts)
	if err != nil {
		return nil, err
	}
	s, err = rootSecret(namespace, root, key, []*x509.Certificate{root}, time.Time{})
	if err != nil {
		return nil, err
	}
	created, err := secrets.Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return LoadKeys(ctx, cs, namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("create secret %s/%s: %w", namespace, SelfSignedSecretName, err)
	}
	opts.Logger.Info("generated self-signed root", zap.String("secret", namespace+"/"+SelfSignedSecretName),
		zap.String("serial", root.SerialNumber.Text(16)), zap.Time("expiry", root.NotAfter))
	return keysFromSecret(created)
}

// RotateSelfSignedRoot replaces the self-signed root with a new one. The
// bundle (root-cert.pem) carries the new root and the replaced ones until
// opts.Overlap has passed, so peers holding certificates of either root trust
// each other. A plug-in cacerts is rotated by its owner, not here.
func RotateSelfSignedRoot(ctx context.Context, cs kubernetes.Interface, namespace string, opts RootOptions) (*Keys, error) {
	opts = opts.withDefaults()
	secrets := cs.CoreV1().Secrets(namespace)
	if _, err := secrets.Get(ctx, PluginSecretName, metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("rotate root: secret %s/%s is in use; rotate it by writing a new %s with both roots in %s", namespace, PluginSecretName, PluginSecretName, RootCertKey)
	}
	old, err := secrets.Get(ctx, SelfSignedSecretName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("rotate root: get secret %s/%s: %w", namespace, SelfSignedSecretName, err)
	}
	oldKeys, err := keysFromSecret(old)
	if err != nil {
		return nil, err
	}
	root, key, err := newRoot(opts)
	if err != nil {
		return nil, err
	}
	bundle := append([]*x509.Certificate{root}, oldKeys.ValidRoots(opts.Now())...)
	s, err := rootSecret(namespace, root, key, bundle, opts.Now().Add(opts.Overlap))
	if err != nil {
		return nil, err
	}
	s.ResourceVersion = old.ResourceVersion
	updated, err := secrets.Update(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("rotate root: update secret %s/%s: %w", namespace, SelfSignedSecretName, err)
	}
	opts.Logger.Info("rotated self-signed root", zap.String("secret", namespace+"/"+SelfSignedSecretName),
		zap.String("serial", root.SerialNumber.Text(16)), zap.String("old_serial", oldKeys.Root().SerialNumber.Text(16)),
		zap.Time("overlap_until", opts.Now().Add(opts.Overlap)))
	return keysFromSecret(updated)
}

func pruneRoots(ctx context.Context, cs kubernetes.Interface, s *corev1.Secret, opts RootOptions) (*Keys, error) {
	keys, err := keysFromSecret(s)
	if err != nil {
		return nil, err
	}
	until, ok := s.Annotations[OverlapUntilAnnotation]
	if !ok || len(keys.Roots) <= 1 {
		return keys, nil
	}
	t, err := time.Parse(time.RFC3339, until)
	if err == nil && opts.Now().Before(t) {
		return keys, nil
	}
	ns, err := rootSecret(s.Namespace, keys.Cert, keys.Key, []*x509.Certificate{keys.Root()}, time.Time{})
	if err != nil {
		return nil, err
	}
	ns.ResourceVersion = s.ResourceVersion
	updated, err := cs.CoreV1().Secrets(s.Namespace).Update(ctx, ns, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("prune replaced roots: update secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	opts.Logger.Info("root overlap ended; pruned replaced roots", zap.String("secret", s.Namespace+"/"+s.Name), zap.Int("pruned", len(keys.Roots)-1))
	return keysFromSecret(updated)
}

func keysFromSecret(s *corev1.Secret) (*Keys, error) {
	k, err := ParseKeys(s.Data[CACertKey], s.Data[CAKeyKey], s.Data[CertChainKey], s.Data[RootCertKey])
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	k.Source = s.Namespace + "/" + s.Name
	return k, nil
}

func rootSecret(namespace string, root *x509.Certificate, key crypto.Signer, bundle []*x509.Certificate, overlapUntil time.Time) (*corev1.Secret, error) {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecretName, Namespace: namespace},
		Type:       SelfSignedSecretType,
		Data: map[string][]byte{
			CACertKey:    encodeCerts(root),
			CAKeyKey:     keyPEM,
			CertChainKey: {},
			RootCertKey:  encodeCerts(bundle...),
		},
	}
	if !overlapUntil.IsZero() {
		s.Annotations = map[string]string{OverlapUntilAnnotation: overlapUntil.UTC().Format(time.RFC3339)}
	}
	return s, nil
}

func newRoot(opts RootOptions) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := opts.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{opts.TrustDomain}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(opts.TTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse root certificate: %w", err)
	}
	return cert, key, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return s, nil
}
