package ca

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync"
	"time"
)

// CachingAuthenticator remembers successful authentications for a short
// time, as kube-apiserver's own token cache does (10 s for successes). A
// ztunnel asks for every identity of its node with one token, so this turns
// N TokenReviews into one. Failures are never cached. An entry never
// outlives the token's exp claim. Impersonation still looks up the bound pod
// on every request, so a deleted caller pod is refused at once.
//
// Concurrency: mu guards entries; the wrapped Authenticator runs outside
// the lock, so concurrent first uses of one token may each review it.
// Eviction: expired entries are dropped when the map reaches MaxEntries; if
// it is still full, the whole map is cleared (bounded memory, simple).
type CachingAuthenticator struct {
	Next Authenticator
	// TTL of a cached success; default 10 s.
	TTL time.Duration
	// MaxEntries bounds the cache; default 10000.
	MaxEntries int
	// Now is the clock; default time.Now.
	Now func() time.Time

	mu      sync.Mutex
	entries map[[sha256.Size]byte]cachedCaller
}

type cachedCaller struct {
	caller  Caller
	expires time.Time
}

// Authenticate returns a cached Caller or asks Next.
func (a *CachingAuthenticator) Authenticate(ctx context.Context, token string) (*Caller, error) {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	key := sha256.Sum256([]byte(token))
	a.mu.Lock()
	if e, ok := a.entries[key]; ok && now().Before(e.expires) {
		c := e.caller
		a.mu.Unlock()
		return &c, nil
	}
	a.mu.Unlock()

	c, err := a.Next.Authenticate(ctx, token)
	if err != nil {
		return nil, err
	}
	ttl := a.TTL
	if ttl == 0 {
		ttl = 10 * time.Second
	}
	expires := now().Add(ttl)
	if exp, ok := tokenExpiry(token); ok && exp.Before(expires) {
		expires = exp
	}
	maxN := a.MaxEntries
	if maxN == 0 {
		maxN = 10000
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.entries == nil {
		a.entries = map[[sha256.Size]byte]cachedCaller{}
	}
	if len(a.entries) >= maxN {
		t := now()
		for k, e := range a.entries {
			if !t.Before(e.expires) {
				delete(a.entries, k)
			}
		}
		if len(a.entries) >= maxN {
			clear(a.entries)
		}
	}
	a.entries[key] = cachedCaller{caller: *c, expires: expires}
	return c, nil
}

// tokenExpiry reads a JWT's exp claim without verifying anything (Next has
// verified the token); it only shortens how long a success is cached.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if decodeSegment(parts[1], &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}
