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
	// ActivateAfterAnnotation says when a staged root may start signing.
	ActivateAfterAnnotation = "ca.ambient-mesh.io/next-root-activate-after"
	// NextCACertKey and NextCAKeyKey hold a staged root in istio-ca-secret.
	NextCACertKey = "next-ca-cert.pem"
	NextCAKeyKey  = "next-ca-key.pem"
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
	// Propagation is how long a staged root sits in the bundle before it
	// signs: long enough for istio-ca-root-cert to reach every ztunnel.
	// Default 5 min.
	Propagation time.Duration
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
	if o.Propagation == 0 {
		o.Propagation = 5 * time.Minute
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

// EnsureSelfSignedRoot is what the leader calls at start and then
// periodically (RootRotator does); it is idempotent. With a plug-in cacerts
// Secret it just loads it. Otherwise it generates a self-signed root once and
// stores it in istio-ca-secret, reuses it after restarts, activates a staged
// root once its propagation time has passed, and prunes replaced roots whose
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
		return maintain(ctx, cs, s, opts)
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

// Root rotation is two-phase, so that every peer trusts the new root before
// any certificate is signed with it:
//
//  1. StageRootRotation generates the next root and adds it to the bundle
//     (root-cert.pem, hence istio-ca-root-cert) while the CA keeps signing
//     with the current one.
//  2. After RootOptions.Propagation, ActivateStagedRoot (or the leader's
//     periodic EnsureSelfSignedRoot) makes the CA sign with the new root; the
//     bundle keeps the replaced root until RootOptions.Overlap has passed, so
//     certificates it signed stay trusted until they expire.
//
// RotateSelfSignedRoot does both at once (tests, emergencies). A plug-in
// cacerts is rotated by its owner: write both roots into its root-cert.pem
// first, then the new signing certificate.

// StageRootRotation is phase 1 (idempotent: a staged root is kept).
func StageRootRotation(ctx context.Context, cs kubernetes.Interface, namespace string, opts RootOptions) (*Keys, error) {
	opts = opts.withDefaults()
	cur, keys, err := selfSignedSecret(ctx, cs, namespace)
	if err != nil {
		return nil, fmt.Errorf("stage root: %w", err)
	}
	if len(cur.Data[NextCACertKey]) != 0 {
		return keys, nil
	}
	root, key, err := newRoot(opts)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	s := cur.DeepCopy()
	s.Data[RootCertKey] = append(keys.RootsPEM(), encodeCerts(root)...)
	s.Data[NextCACertKey] = encodeCerts(root)
	s.Data[NextCAKeyKey] = keyPEM
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[ActivateAfterAnnotation] = opts.Now().Add(opts.Propagation).UTC().Format(time.RFC3339)
	updated, err := cs.CoreV1().Secrets(namespace).Update(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("stage root: update secret %s/%s: %w", namespace, SelfSignedSecretName, err)
	}
	opts.Logger.Info("staged next root in the trust bundle", zap.String("secret", namespace+"/"+SelfSignedSecretName),
		zap.String("serial", root.SerialNumber.Text(16)), zap.String("activate_after", s.Annotations[ActivateAfterAnnotation]))
	return keysFromSecret(updated)
}

// ActivateStagedRoot is phase 2: the staged root becomes the signing root,
// whether or not its propagation time has passed.
func ActivateStagedRoot(ctx context.Context, cs kubernetes.Interface, namespace string, opts RootOptions) (*Keys, error) {
	opts = opts.withDefaults()
	cur, keys, err := selfSignedSecret(ctx, cs, namespace)
	if err != nil {
		return nil, fmt.Errorf("activate root: %w", err)
	}
	return activate(ctx, cs, cur, keys, opts)
}

func activate(ctx context.Context, cs kubernetes.Interface, cur *corev1.Secret, keys *Keys, opts RootOptions) (*Keys, error) {
	certs, err := parseCerts(cur.Data[NextCACertKey])
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("activate root: secret %s/%s has no staged root (%s): %v", cur.Namespace, cur.Name, NextCACertKey, err)
	}
	key, err := parseKey(cur.Data[NextCAKeyKey])
	if err != nil {
		return nil, fmt.Errorf("activate root: %s: %w", NextCAKeyKey, err)
	}
	root := certs[0]
	var bundle []*x509.Certificate
	bundle = append(bundle, root)
	for _, r := range keys.ValidRoots(opts.Now()) {
		if !r.Equal(root) {
			bundle = append(bundle, r)
		}
	}
	s, err := rootSecret(cur.Namespace, root, key, bundle, opts.Now().Add(opts.Overlap))
	if err != nil {
		return nil, err
	}
	s.ResourceVersion = cur.ResourceVersion
	updated, err := cs.CoreV1().Secrets(cur.Namespace).Update(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("activate root: update secret %s/%s: %w", cur.Namespace, cur.Name, err)
	}
	opts.Logger.Info("activated new signing root", zap.String("secret", cur.Namespace+"/"+cur.Name),
		zap.String("serial", root.SerialNumber.Text(16)), zap.String("old_serial", keys.Root().SerialNumber.Text(16)),
		zap.Time("overlap_until", opts.Now().Add(opts.Overlap)))
	return keysFromSecret(updated)
}

// RotateSelfSignedRoot stages and activates a new root at once. Peers learn
// the new root only when the bundle reaches them, so prefer the two phases.
func RotateSelfSignedRoot(ctx context.Context, cs kubernetes.Interface, namespace string, opts RootOptions) (*Keys, error) {
	if _, err := StageRootRotation(ctx, cs, namespace, opts); err != nil {
		return nil, err
	}
	return ActivateStagedRoot(ctx, cs, namespace, opts)
}

func selfSignedSecret(ctx context.Context, cs kubernetes.Interface, namespace string) (*corev1.Secret, *Keys, error) {
	secrets := cs.CoreV1().Secrets(namespace)
	if _, err := secrets.Get(ctx, PluginSecretName, metav1.GetOptions{}); err == nil {
		return nil, nil, fmt.Errorf("secret %s/%s is in use; rotate it by writing both roots into its %s first, then the new signing certificate", namespace, PluginSecretName, RootCertKey)
	}
	cur, err := secrets.Get(ctx, SelfSignedSecretName, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("get secret %s/%s: %w", namespace, SelfSignedSecretName, err)
	}
	keys, err := keysFromSecret(cur)
	if err != nil {
		return nil, nil, err
	}
	return cur, keys, nil
}

// maintain activates a staged root once due and prunes replaced roots once
// their overlap has ended.
func maintain(ctx context.Context, cs kubernetes.Interface, s *corev1.Secret, opts RootOptions) (*Keys, error) {
	keys, err := keysFromSecret(s)
	if err != nil {
		return nil, err
	}
	if len(s.Data[NextCACertKey]) != 0 {
		after, err := time.Parse(time.RFC3339, s.Annotations[ActivateAfterAnnotation])
		if err != nil || !opts.Now().Before(after) {
			return activate(ctx, cs, s, keys, opts)
		}
		return keys, nil // staged; the bundle is still propagating
	}
	return pruneRoots(ctx, cs, s, keys, opts)
}

func pruneRoots(ctx context.Context, cs kubernetes.Interface, s *corev1.Secret, keys *Keys, opts RootOptions) (*Keys, error) {
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
