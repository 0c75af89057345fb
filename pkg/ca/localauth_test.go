package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Unit tests of LocalAuthenticator with keys made here and in-memory pods
// and service accounts; envtest_test.go runs it against kube-apiserver.

const testIssuer = "https://kubernetes.default.svc.cluster.local"

type fakeObjects struct {
	pods map[string]*corev1.Pod
	sas  map[string]types.UID
	err  error
}

func (f *fakeObjects) Pod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	return f.pods[ns+"/"+name], f.err
}

func (f *fakeObjects) OnNode(context.Context, string, string, string) (bool, error) {
	return false, errors.New("not used")
}

func (f *fakeObjects) ServiceAccountUID(_ context.Context, ns, name string) (types.UID, error) {
	return f.sas[ns+"/"+name], f.err
}

// signer makes JWTs with one key.
type signer struct {
	kid string
	alg string
	key crypto.Signer
}

func (s signer) sign(t testing.TB, header map[string]any, claims map[string]any) string {
	t.Helper()
	if header == nil {
		header = map[string]any{"alg": s.alg, "kid": s.kid}
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	signing := enc(header) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	var sig []byte
	switch k := s.key.(type) {
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:]); err != nil {
			t.Fatal(err)
		}
	case *ecdsa.PrivateKey:
		r, ss, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		ss.FillBytes(sig[32:])
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func jwk(t testing.TB, kid string, pub crypto.PublicKey) map[string]any {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]any{"kty": "EC", "kid": kid, "use": "sig", "crv": "P-256", "alg": "ES256", "x": b64(b[1:33]), "y": b64(b[33:])}
	}
	t.Fatalf("key %T", pub)
	return nil
}

// nextRecorder is Next: it refuses everything and counts.
type nextRecorder struct{ calls int }

func (n *nextRecorder) Authenticate(context.Context, string) (*Caller, error) {
	n.calls++
	return nil, errors.New("refused by next")
}

func TestLocalAuthenticator(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec, rs, other := signer{"ec", "ES256", ecKey}, signer{"rsa", "RS256", rsaKey}, signer{"ec", "ES256", otherKey}
	jwks, _ := json.Marshal(map[string]any{"keys": []any{
		jwk(t, "ec", ecKey.Public()), jwk(t, "rsa", rsaKey.Public()),
		map[string]any{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}, // not a public key: skipped
	}})
	now := time.Unix(1_800_000_000, 0)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "app-1", UID: "pod-uid"},
		Spec: corev1.PodSpec{ServiceAccountName: "app", NodeName: "node-a"}}
	claims := func(edit func(c map[string]any, k8s map[string]any)) map[string]any {
		k8s := map[string]any{
			"namespace":      "demo",
			"pod":            map[string]any{"name": "app-1", "uid": "pod-uid"},
			"serviceaccount": map[string]any{"name": "app", "uid": "sa-uid"},
			"node":           map[string]any{"name": "node-a", "uid": "node-uid"},
		}
		c := map[string]any{"iss": testIssuer, "aud": []string{Audience}, "sub": "system:serviceaccount:demo:app",
			"iat": now.Add(-time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(), "kubernetes.io": k8s}
		if edit != nil {
			edit(c, k8s)
		}
		return c
	}
	valid := ec.sign(t, nil, claims(nil))
	tampered := func() string {
		p := strings.Split(valid, ".")
		c := claims(func(c, _ map[string]any) { c["sub"] = "system:serviceaccount:demo:admin" })
		b, _ := json.Marshal(c)
		return p[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + p[2]
	}()
	local := &Caller{Namespace: "demo", ServiceAccount: "app", PodName: "app-1", PodUID: "pod-uid", NodeName: "node-a"}

	tests := []struct {
		name  string
		token string
		objs  func(*fakeObjects)
		want  *Caller // nil: left to Next
	}{
		{"ES256", valid, nil, local},
		{"RS256", rs.sign(t, nil, claims(nil)), nil, local},
		{"aud as one string", ec.sign(t, nil, claims(func(c, _ map[string]any) { c["aud"] = Audience })), nil, local},
		{"no node claim", ec.sign(t, nil, claims(func(_, k map[string]any) { delete(k, "node") })), nil,
			&Caller{Namespace: "demo", ServiceAccount: "app", PodName: "app-1", PodUID: "pod-uid"}},
		{"alg none", ec.sign(t, map[string]any{"alg": "none", "kid": "ec"}, claims(nil)), nil, nil},
		{"alg HS256", ec.sign(t, map[string]any{"alg": "HS256", "kid": "ec"}, claims(nil)), nil, nil},
		{"RS256 header on the EC key", ec.sign(t, map[string]any{"alg": "RS256", "kid": "ec"}, claims(nil)), nil, nil},
		{"ES384 header on a P-256 key", ec.sign(t, map[string]any{"alg": "ES384", "kid": "ec"}, claims(nil)), nil, nil},
		{"signed by another key", other.sign(t, nil, claims(nil)), nil, nil},
		{"unknown kid", ec.sign(t, map[string]any{"alg": "ES256", "kid": "nope"}, claims(nil)), nil, nil},
		{"tampered claims", tampered, nil, nil},
		{"not a JWT", "abc.def", nil, nil},
		{"garbage segments", "!!.??.**", nil, nil},
		{"other issuer", ec.sign(t, nil, claims(func(c, _ map[string]any) { c["iss"] = "https://elsewhere" })), nil, nil},
		{"other audience", ec.sign(t, nil, claims(func(c, _ map[string]any) { c["aud"] = []string{"api"} })), nil, nil},
		{"expired", ec.sign(t, nil, claims(func(c, _ map[string]any) { c["exp"] = now.Unix() })), nil, nil},
		{"no exp", ec.sign(t, nil, claims(func(c, _ map[string]any) { delete(c, "exp") })), nil, nil},
		{"not yet valid", ec.sign(t, nil, claims(func(c, _ map[string]any) { c["nbf"] = now.Add(time.Minute).Unix() })), nil, nil},
		{"bound to no pod", ec.sign(t, nil, claims(func(_, k map[string]any) { delete(k, "pod") })), nil, nil},
		{"subject of another account", ec.sign(t, nil, claims(func(c, _ map[string]any) { c["sub"] = "system:serviceaccount:demo:other" })), nil, nil},
		{"no service account uid", ec.sign(t, nil, claims(func(_, k map[string]any) { k["serviceaccount"] = map[string]any{"name": "app"} })), nil, nil},
		{"pod not in cache", valid, func(f *fakeObjects) { delete(f.pods, "demo/app-1") }, nil},
		{"pod recreated (other uid)", valid, func(f *fakeObjects) { p := *pod; p.UID = "new"; f.pods["demo/app-1"] = &p }, nil},
		{"pod being deleted", valid, func(f *fakeObjects) {
			p := *pod
			p.DeletionTimestamp = &metav1.Time{Time: now}
			f.pods["demo/app-1"] = &p
		}, nil},
		{"pod of another account", valid, func(f *fakeObjects) { p := *pod; p.Spec.ServiceAccountName = "web"; f.pods["demo/app-1"] = &p }, nil},
		{"service account recreated", valid, func(f *fakeObjects) { f.sas["demo/app"] = "new" }, nil},
		{"service account gone", valid, func(f *fakeObjects) { delete(f.sas, "demo/app") }, nil},
		{"lookup fails", valid, func(f *fakeObjects) { f.err = errors.New("cache not synced") }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := &fakeObjects{pods: map[string]*corev1.Pod{"demo/app-1": pod}, sas: map[string]types.UID{"demo/app": "sa-uid"}}
			if tc.objs != nil {
				tc.objs(objs)
			}
			next := &nextRecorder{}
			a := &LocalAuthenticator{
				Keys: func(context.Context) (string, []byte, error) { return testIssuer, jwks, nil },
				Pods: objs, ServiceAccounts: objs, Next: next, Now: func() time.Time { return now },
			}
			got, err := a.Authenticate(t.Context(), tc.token)
			switch {
			case tc.want == nil && (err == nil || next.calls != 1):
				t.Fatalf("accepted locally (%+v, %v); want it left to Next", got, err)
			case tc.want != nil && (err != nil || next.calls != 0):
				t.Fatalf("left to Next (%v); want accepted locally", err)
			case tc.want != nil && *got != *tc.want:
				t.Fatalf("caller %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Keys are fetched once, refetched for an unknown key id at most once per
// RefetchInterval, and again after KeysTTL; while they cannot be read,
// every token goes to Next.
func TestLocalAuthenticatorKeys(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s1, s2 := signer{"k1", "ES256", key}, signer{"k2", "ES256", key2}
	now := time.Unix(1_800_000_000, 0)
	claims := map[string]any{"iss": testIssuer, "aud": Audience, "sub": "system:serviceaccount:demo:app", "exp": now.Add(24 * time.Hour).Unix(),
		"kubernetes.io": map[string]any{"namespace": "demo", "pod": map[string]any{"name": "app-1", "uid": "pod-uid"},
			"serviceaccount": map[string]any{"name": "app", "uid": "sa-uid"}}}
	objs := &fakeObjects{
		pods: map[string]*corev1.Pod{"demo/app-1": {ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "app-1", UID: "pod-uid"}, Spec: corev1.PodSpec{ServiceAccountName: "app"}}},
		sas:  map[string]types.UID{"demo/app": "sa-uid"},
	}
	var (
		fetches int
		keys    = []any{jwk(t, "k1", key.Public())}
		failing error
	)
	clock := now
	next := &nextRecorder{}
	a := &LocalAuthenticator{
		Keys: func(context.Context) (string, []byte, error) {
			fetches++
			b, _ := json.Marshal(map[string]any{"keys": keys})
			return testIssuer, b, failing
		},
		Pods: objs, ServiceAccounts: objs, Next: next, Now: func() time.Time { return clock },
		KeysTTL: 10 * time.Minute, RefetchInterval: 30 * time.Second,
	}
	t1, t2 := s1.sign(t, nil, claims), s2.sign(t, nil, claims)
	local := func(tok string) bool {
		before := next.calls
		_, _ = a.Authenticate(t.Context(), tok)
		return next.calls == before
	}
	step := func(what string, ok bool, wantFetches int) {
		t.Helper()
		if !ok || fetches != wantFetches {
			t.Fatalf("%s: ok %v, %d fetches (want %d)", what, ok, fetches, wantFetches)
		}
	}
	step("first token", local(t1), 1)
	step("again, keys held", local(t1), 1)
	step("unknown key id right after a fetch", !local(t2), 1)
	clock = clock.Add(31 * time.Second)
	step("unknown key id: refetched, still unknown", !local(t2), 2)
	step("unknown key id within the refetch interval", !local(t2), 2)
	keys = append(keys, jwk(t, "k2", key2.Public())) // the API server rotates in k2
	clock = clock.Add(31 * time.Second)
	step("unknown key id after the interval", local(t2), 3)
	clock = clock.Add(11 * time.Minute)
	keys = []any{jwk(t, "k2", key2.Public())} // k1 retired
	step("after the TTL: refetched, k1 gone", !local(t1), 4)
	step("k2 still accepted", local(t2), 4)
	failing = fmt.Errorf("403 forbidden")
	clock = clock.Add(11 * time.Minute)
	step("keys cannot be read", !local(t2), 5)
	step("not retried within the interval", !local(t2), 5)
	failing = nil
	clock = clock.Add(31 * time.Second)
	step("read again", local(t2), 6)
}

func TestParseJWKS(t *testing.T) {
	if _, err := parseJWKS([]byte("{")); err == nil {
		t.Fatal("bad JSON accepted")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := jwk(t, "good", key.Public())
	offCurve := jwk(t, "off", key.Public())
	offCurve["y"] = offCurve["x"]
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	enc := jwk(t, "enc", key.Public())
	enc["use"] = "enc"
	b, _ := json.Marshal(map[string]any{"keys": []any{good, offCurve, jwk(t, "small", small.Public()), enc}})
	keys, err := parseJWKS(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys["good"] == nil {
		t.Fatalf("keys %v, want only the good one", keys)
	}
}
