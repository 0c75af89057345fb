package xds

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/metadata"
)

// ErrUnauthenticated is returned (wrapped) by an Authenticator that rejects
// the caller's credentials; the stream is refused with codes.Unauthenticated.
var ErrUnauthenticated = errors.New("unauthenticated")

// Identity is an authenticated caller.
type Identity struct {
	// Namespace and ServiceAccount of the caller's Kubernetes service account.
	Namespace      string
	ServiceAccount string
	// PodName, PodUID and NodeName come from a bound service-account token, when known.
	PodName  string
	PodUID   string
	NodeName string
}

// Authenticator checks the credentials of an xDS stream when it opens. ctx is
// the stream's context: gRPC metadata ("authorization: Bearer <jwt>",
// "clusterid") and the TLS peer are available from it. The production
// implementation reviews the bearer token with the Kubernetes TokenReview API.
type Authenticator interface {
	Authenticate(ctx context.Context) (Identity, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context) (Identity, error)

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context) (Identity, error) { return f(ctx) }

// BearerToken returns the bearer token of the "authorization" gRPC metadata.
func BearerToken(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok && tok != "" {
			return tok, true
		}
	}
	return "", false
}

// FakeAuthenticator accepts the bearer tokens it was given and rejects all
// others. It stands in for the TokenReview authenticator in tests.
//
// Safe for concurrent use; tokens may be added while streams open.
type FakeAuthenticator struct {
	mu     sync.Mutex
	tokens map[string]Identity // guarded by mu
}

// NewFakeAuthenticator returns an authenticator that knows tokens.
func NewFakeAuthenticator(tokens map[string]Identity) *FakeAuthenticator {
	f := &FakeAuthenticator{tokens: map[string]Identity{}}
	for k, v := range tokens {
		f.tokens[k] = v
	}
	return f
}

// Add makes token valid for id.
func (f *FakeAuthenticator) Add(token string, id Identity) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens[token] = id
}

// Authenticate implements Authenticator.
func (f *FakeAuthenticator) Authenticate(ctx context.Context) (Identity, error) {
	tok, ok := BearerToken(ctx)
	if !ok {
		return Identity{}, errors.Join(ErrUnauthenticated, errors.New("no bearer token in authorization metadata"))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.tokens[tok]
	if !ok {
		return Identity{}, errors.Join(ErrUnauthenticated, errors.New("unknown bearer token"))
	}
	return id, nil
}

// ZtunnelNodeVerifier returns a VerifyNode check for ztunnel clients: the
// node id must be ztunnel's "ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>",
// the caller's service account must be one of allowed ("<ns>/<sa>", e.g.
// "istio-system/ztunnel"), and the namespace and (when the token is bound to
// a pod) pod name in the id must be the caller's.
func ZtunnelNodeVerifier(allowed ...string) func(Identity, *core.Node) error {
	return func(id Identity, n *core.Node) error {
		parts := strings.Split(n.GetId(), "~")
		if len(parts) != 4 || parts[0] != "ztunnel" {
			return fmt.Errorf("node id %q is not ztunnel~<ip>~<pod>.<namespace>~<domain>", n.GetId())
		}
		pod, ns, ok := strings.Cut(parts[2], ".")
		if !ok {
			return fmt.Errorf("node id %q: %q is not <pod>.<namespace>", n.GetId(), parts[2])
		}
		caller := id.Namespace + "/" + id.ServiceAccount
		found := false
		for _, a := range allowed {
			found = found || a == caller
		}
		if !found {
			return fmt.Errorf("service account %s may not connect as a ztunnel", caller)
		}
		if ns != id.Namespace {
			return fmt.Errorf("node namespace %q is not the caller's %q", ns, id.Namespace)
		}
		if id.PodName != "" && pod != id.PodName {
			return fmt.Errorf("node pod %q is not the caller's %q", pod, id.PodName)
		}
		return nil
	}
}

// BearerAuthenticator adapts a token authenticator (such as the CA's
// TokenReview one) to Authenticator: it takes the bearer token from the
// stream's "authorization" metadata and hands it to review.
func BearerAuthenticator(review func(ctx context.Context, token string) (Identity, error)) Authenticator {
	return AuthenticatorFunc(func(ctx context.Context) (Identity, error) {
		tok, ok := BearerToken(ctx)
		if !ok {
			return Identity{}, errors.Join(ErrUnauthenticated, errors.New("no bearer token in authorization metadata"))
		}
		id, err := review(ctx, tok)
		if err != nil {
			return Identity{}, errors.Join(ErrUnauthenticated, err)
		}
		return id, nil
	})
}
