package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	_ "crypto/sha256" // SHA-256 for crypto.Hash.New
	_ "crypto/sha512" // SHA-384 and SHA-512
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// LocalAuthenticator checks pod-bound service-account tokens itself, the
// way kube-apiserver does, and hands every other token to Next (the
// TokenReview authenticator). A token is accepted here only when all of
// these hold:
//
//   - it is a JWT signed (RS256/384/512, ES256/384/512) by one of the API
//     server's service-account keys, published at /openid/v1/jwks;
//   - its issuer is the API server's (/.well-known/openid-configuration);
//   - its audiences include one of Audiences, and it is within nbf and exp;
//   - it names a namespace, a service account and a pod, with their uids,
//     and its subject is that service account;
//   - the pod exists with that uid, is not being deleted and runs as that
//     service account, and the service account exists with that uid (both
//     read from the informer caches).
//
// Anything else (another issuer, a key it does not know, a token bound to a
// secret or to nothing, a pod the cache has not seen yet, a failed lookup)
// is decided by Next, so this can only accept what the API server would
// accept, and every refusal and its message still come from the API
// server. When the discovery endpoints cannot be read (an issuer that is
// not an https URL, no RBAC for them), every token goes to Next.
//
// Why: a TokenReview costs the API server about as much CPU as the whole
// full push of a 10,000-pod mesh costs istiod-lite per client, and a
// restarted istiod-lite or a node pool coming up makes every proxy open a
// stream at once.
//
// Keys are fetched on first use, again when older than KeysTTL, and when a
// token names a key id not held (at most once per RefetchInterval, so a
// stream of forged key ids cannot flood the API server).
//
// Safe for concurrent use.
type LocalAuthenticator struct {
	// Client reads the discovery documents; unused when Keys is set.
	Client kubernetes.Interface
	// Keys, when set, returns the issuer and its JWKS document (tests).
	Keys func(ctx context.Context) (issuer string, jwks []byte, err error)
	// Pods and ServiceAccounts look up the objects a token is bound to;
	// give them cached readers (ClientPods, ClientServiceAccounts).
	Pods            Pods
	ServiceAccounts ServiceAccounts
	// Next decides the tokens this one does not accept (required).
	Next Authenticator
	// Audiences the token must be issued for; default [istio-ca].
	Audiences []string
	// KeysTTL is how long fetched keys are used (default 5 min);
	// RefetchInterval spaces fetches for unknown key ids (default 30 s).
	KeysTTL, RefetchInterval time.Duration
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *zap.Logger
	// Checks, when set, counts tokens by who decided them: label "by" is
	// "local" or "next" (see NewTokenChecks).
	Checks *prometheus.CounterVec

	mu        sync.Mutex
	keys      *keySet   // guarded by mu
	lastFetch time.Time // guarded by mu
	failing   bool      // the last fetch failed; guarded by mu
}

// ServiceAccounts looks up service accounts.
type ServiceAccounts interface {
	// ServiceAccountUID returns the uid of namespace/name, or "" when it
	// does not exist.
	ServiceAccountUID(ctx context.Context, namespace, name string) (types.UID, error)
}

// ClientServiceAccounts implements ServiceAccounts with a controller-runtime
// reader (the manager's cached client).
type ClientServiceAccounts struct{ Reader client.Reader }

// ServiceAccountUID implements ServiceAccounts.
func (s ClientServiceAccounts) ServiceAccountUID(ctx context.Context, namespace, name string) (types.UID, error) {
	var sa corev1.ServiceAccount
	err := s.Reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &sa)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get service account %s/%s: %w", namespace, name, err)
	}
	return sa.UID, nil
}

// keySet is the API server's issuer and verification keys by key id.
type keySet struct {
	issuer  string
	keys    map[string]crypto.PublicKey
	fetched time.Time
}

// lookupTimeout bounds one cache lookup: a cache that is still starting
// (its first list) sends the token to Next rather than holding it.
const lookupTimeout = 2 * time.Second

// Authenticate implements Authenticator.
func (a *LocalAuthenticator) Authenticate(ctx context.Context, token string) (*Caller, error) {
	c, why := a.verify(ctx, token)
	if c != nil {
		if a.Checks != nil {
			a.Checks.WithLabelValues("local").Inc()
		}
		return c, nil
	}
	if a.Logger != nil {
		a.Logger.Debug("token checked by the API server", zap.String("reason", why))
	}
	if a.Checks != nil {
		a.Checks.WithLabelValues("next").Inc()
	}
	return a.Next.Authenticate(ctx, token)
}

// NewTokenChecks registers istiod_token_checks_total{by="local"|"next"}
// for LocalAuthenticator.Checks.
func NewTokenChecks(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istiod_token_checks_total",
		Help: "Service-account tokens checked, by who decided: local (pod-bound, verified against the API server's keys) or next (TokenReview).",
	}, []string{"by"})
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("register istiod_token_checks_total: %w", err)
	}
	c.WithLabelValues("local")
	c.WithLabelValues("next")
	return c, nil
}

// saClaims are the claims of a Kubernetes service-account token.
type saClaims struct {
	Iss string   `json:"iss"`
	Sub string   `json:"sub"`
	Aud audience `json:"aud"`
	Exp *int64   `json:"exp"`
	Nbf *int64   `json:"nbf"`
	K8s struct {
		Namespace      string  `json:"namespace"`
		Pod            *objRef `json:"pod"`
		ServiceAccount *objRef `json:"serviceaccount"`
		Node           *objRef `json:"node"`
	} `json:"kubernetes.io"`
}

type objRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// audience is the aud claim: one string or a list.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud is neither a string nor a list of strings")
	}
	*a = many
	return nil
}

// verify returns the token's caller, or nil and why it is left to Next.
func (a *LocalAuthenticator) verify(ctx context.Context, token string) (*Caller, string) {
	h64, rest, ok1 := strings.Cut(token, ".")
	p64, s64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(s64, ".") {
		return nil, "not a JWS compact token"
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := decodeSegment(h64, &header); err != nil {
		return nil, "header: " + err.Error()
	}
	keys, err := a.keySet(ctx, header.Kid)
	if err != nil {
		return nil, err.Error()
	}
	key, ok := keys.keys[header.Kid]
	if !ok {
		return nil, fmt.Sprintf("key id %q is not one of the API server's", header.Kid)
	}
	sig, err := base64.RawURLEncoding.DecodeString(s64)
	if err != nil {
		return nil, "signature: not base64url"
	}
	if err := verifySignature(header.Alg, key, h64+"."+p64, sig); err != nil {
		return nil, err.Error()
	}
	var cl saClaims
	if err := decodeSegment(p64, &cl); err != nil {
		return nil, "claims: " + err.Error()
	}
	t := a.now().Unix()
	auds := a.Audiences
	if len(auds) == 0 {
		auds = []string{Audience}
	}
	k := cl.K8s
	switch {
	case cl.Iss != keys.issuer:
		return nil, fmt.Sprintf("issuer %q is not the API server's %q", cl.Iss, keys.issuer)
	case !slices.ContainsFunc(cl.Aud, func(s string) bool { return slices.Contains(auds, s) }):
		return nil, fmt.Sprintf("audiences %v do not include %v", []string(cl.Aud), auds)
	case cl.Exp == nil || t >= *cl.Exp:
		return nil, "expired or no exp"
	case cl.Nbf != nil && t < *cl.Nbf:
		return nil, "not valid yet (nbf)"
	case k.Namespace == "" || k.ServiceAccount == nil || k.ServiceAccount.Name == "" || k.ServiceAccount.UID == "":
		return nil, "no service account in the kubernetes.io claim"
	case k.Pod == nil || k.Pod.Name == "" || k.Pod.UID == "":
		return nil, "not bound to a pod"
	case cl.Sub != "system:serviceaccount:"+k.Namespace+":"+k.ServiceAccount.Name:
		return nil, fmt.Sprintf("subject %q does not match the kubernetes.io claim", cl.Sub)
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	pod, err := a.Pods.Pod(lctx, k.Namespace, k.Pod.Name)
	switch {
	case err != nil:
		return nil, err.Error()
	case pod == nil:
		return nil, fmt.Sprintf("pod %s/%s is not in the cache", k.Namespace, k.Pod.Name)
	case string(pod.UID) != k.Pod.UID:
		return nil, fmt.Sprintf("pod %s/%s has uid %s, the token names %s", k.Namespace, k.Pod.Name, pod.UID, k.Pod.UID)
	case pod.DeletionTimestamp != nil:
		return nil, fmt.Sprintf("pod %s/%s is being deleted", k.Namespace, k.Pod.Name)
	case podServiceAccount(pod) != k.ServiceAccount.Name:
		return nil, fmt.Sprintf("pod %s/%s runs as %s, not %s", k.Namespace, k.Pod.Name, podServiceAccount(pod), k.ServiceAccount.Name)
	}
	uid, err := a.ServiceAccounts.ServiceAccountUID(lctx, k.Namespace, k.ServiceAccount.Name)
	switch {
	case err != nil:
		return nil, err.Error()
	case string(uid) != k.ServiceAccount.UID:
		return nil, fmt.Sprintf("service account %s/%s has uid %q, the token names %s", k.Namespace, k.ServiceAccount.Name, uid, k.ServiceAccount.UID)
	}
	c := &Caller{Namespace: k.Namespace, ServiceAccount: k.ServiceAccount.Name, PodName: k.Pod.Name, PodUID: types.UID(k.Pod.UID)}
	if k.Node != nil {
		c.NodeName = k.Node.Name
	}
	return c, ""
}

func decodeSegment(s string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return errors.New("not base64url")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("not JSON: %v", err)
	}
	return nil
}

// verifySignature checks a JWS signature over signing with key, which must
// be of the kind alg names.
func verifySignature(alg string, key crypto.PublicKey, signing string, sig []byte) error {
	var h crypto.Hash
	switch alg {
	case "RS256", "ES256":
		h = crypto.SHA256
	case "RS384", "ES384":
		h = crypto.SHA384
	case "RS512", "ES512":
		h = crypto.SHA512
	default:
		return fmt.Errorf("algorithm %q is not one the API server signs with", alg)
	}
	hh := h.New()
	hh.Write([]byte(signing))
	sum := hh.Sum(nil)
	switch k := key.(type) {
	case *rsa.PublicKey:
		if alg[0] != 'R' {
			return fmt.Errorf("algorithm %s with an RSA key", alg)
		}
		if rsa.VerifyPKCS1v15(k, h, sum, sig) != nil {
			return errors.New("bad signature")
		}
	case *ecdsa.PublicKey:
		if algCurves[alg] != k.Curve {
			return fmt.Errorf("algorithm %s with an ECDSA %s key", alg, k.Curve.Params().Name)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size {
			return errors.New("bad signature length")
		}
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		if !ecdsa.Verify(k, sum, r, s) {
			return errors.New("bad signature")
		}
	default:
		return fmt.Errorf("key of type %T", key)
	}
	return nil
}

// The curves of the JWS ECDSA algorithms and of the JWK "crv" names.
var (
	algCurves = map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}
	jwkCurves = map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}
)

// keySet returns the keys, fetching them when none are held, when they are
// older than KeysTTL, or when kid is unknown and the last fetch is older
// than RefetchInterval.
func (a *LocalAuthenticator) keySet(ctx context.Context, kid string) (*keySet, error) {
	ttl, refetch := a.KeysTTL, a.RefetchInterval
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	if refetch <= 0 {
		refetch = 30 * time.Second
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.now()
	stale := a.keys == nil || t.Sub(a.keys.fetched) > ttl
	unknown := a.keys != nil && a.keys.keys[kid] == nil
	if (stale || unknown) && t.Sub(a.lastFetch) >= refetch {
		a.lastFetch = t
		next, err := a.fetch(ctx)
		a.logFetch(err, refetch)
		switch {
		case err == nil:
			next.fetched = t
			a.keys, stale = next, false
		case stale:
			a.keys = nil
			return nil, err
		}
	}
	if stale {
		return nil, errors.New("no current service-account keys")
	}
	return a.keys, nil
}

func (a *LocalAuthenticator) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// logFetch logs the first failure of a run of failed fetches as a warning
// (the rest at debug level, one per RefetchInterval at most) and the
// recovery. Called with mu held.
func (a *LocalAuthenticator) logFetch(err error, retry time.Duration) {
	log := a.Logger
	if log == nil {
		log = zap.NewNop()
	}
	switch {
	case err != nil && !a.failing:
		log.Warn("cannot read the API server's service-account keys; tokens are checked by TokenReview until they can be read",
			zap.Error(err), zap.Duration("retry_after", retry))
	case err != nil:
		log.Debug("cannot read the API server's service-account keys", zap.Error(err))
	case a.failing:
		log.Info("read the API server's service-account keys; pod-bound tokens are checked locally again")
	}
	a.failing = err != nil
}

func (a *LocalAuthenticator) fetch(ctx context.Context) (*keySet, error) {
	// The keys serve every caller: a stream that goes away during the
	// fetch must not fail it for the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	get := a.Keys
	if get == nil {
		if a.Client == nil {
			return nil, errors.New("no client to read the service-account issuer discovery documents")
		}
		get = func(ctx context.Context) (string, []byte, error) { return discover(ctx, a.Client) }
	}
	issuer, doc, err := get(ctx)
	if err != nil {
		return nil, err
	}
	if issuer == "" {
		return nil, errors.New("service-account issuer discovery: empty issuer")
	}
	keys, err := parseJWKS(doc)
	if err != nil {
		return nil, err
	}
	return &keySet{issuer: issuer, keys: keys}, nil
}

// discover reads the issuer and its keys from the API server's
// service-account issuer discovery endpoints.
func discover(ctx context.Context, cs kubernetes.Interface) (string, []byte, error) {
	rc := cs.CoreV1().RESTClient()
	b, err := rc.Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("GET /.well-known/openid-configuration (the API server serves it when --service-account-issuer is an https URL; istiod-lite needs RBAC get on it): %w", err)
	}
	var cfg struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", nil, fmt.Errorf("/.well-known/openid-configuration: %w", err)
	}
	jwks, err := rc.Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("GET /openid/v1/jwks: %w", err)
	}
	return cfg.Issuer, jwks, nil
}

// parseJWKS reads the RSA and EC signing keys of a JWK set by key id. A key
// it cannot use is skipped: the tokens it signed go to Next.
func parseJWKS(doc []byte) (map[string]crypto.PublicKey, error) {
	var set struct {
		Keys []struct {
			Kty, Kid, Use, Crv, N, E, X, Y string
		} `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	b64 := base64.RawURLEncoding.DecodeString
	out := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		if k.Kid == "" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		switch k.Kty {
		case "RSA":
			n, err1 := b64(k.N)
			e, err2 := b64(k.E)
			if err1 != nil || err2 != nil || len(n) < 256 || len(e) == 0 || len(e) > 4 {
				continue // malformed, or under 2048 bits: tokens it signed go to Next
			}
			exp := 0
			for _, c := range e {
				exp = exp<<8 | int(c)
			}
			out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
		case "EC":
			curve := jwkCurves[k.Crv]
			if curve == nil {
				continue
			}
			size := (curve.Params().BitSize + 7) / 8
			x, err1 := b64(k.X)
			y, err2 := b64(k.Y)
			if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
				continue
			}
			pub, err := ecdsa.ParseUncompressedPublicKey(curve, slices.Concat([]byte{4}, x, y))
			if err != nil {
				continue // not on the curve
			}
			out[k.Kid] = pub
		}
	}
	return out, nil
}
