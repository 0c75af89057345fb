package ca

import (
	"context"
	"encoding/base64"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// countingAuthenticator accepts tokens in ok and counts calls.
type countingAuthenticator struct {
	mu    sync.Mutex
	ok    map[string]bool
	calls int
}

func (f *countingAuthenticator) Authenticate(_ context.Context, token string) (*Caller, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if !f.ok[token] {
		return nil, refuse(codes.Unauthenticated, "authn.token", "rejected")
	}
	return &Caller{Namespace: "istio-system", ServiceAccount: "ztunnel"}, nil
}

func jwtWithExp(exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"ES256"}`)) + "." + enc([]byte(fmt.Sprintf(`{"exp":%d}`, exp.Unix()))) + ".sig"
}

func TestCachingAuthenticator(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	long := jwtWithExp(now.Add(time.Hour))
	short := jwtWithExp(now.Add(14 * time.Second)) // 3 s after its first use below
	next := &countingAuthenticator{ok: map[string]bool{long: true, short: true}}
	a := &CachingAuthenticator{Next: next, TTL: 10 * time.Second, Now: func() time.Time { return now }}
	ctx := context.Background()
	for _, step := range []struct {
		name      string
		advance   time.Duration
		token     string
		wantErr   bool
		wantCalls int
	}{
		{"first use reviews", 0, long, false, 1},
		{"second use is cached", time.Second, long, false, 1},
		{"after the ttl it reviews again", 10 * time.Second, long, false, 2},
		{"a rejected token", 0, "bad", true, 3},
		{"is never cached", 0, "bad", true, 4},
		{"short-lived token reviews", 0, short, false, 5},
		{"cached before its exp", time.Second, short, false, 5},
		{"past its exp it reviews again", 2 * time.Second, short, false, 6},
	} {
		now = now.Add(step.advance)
		_, err := a.Authenticate(ctx, step.token)
		if (err != nil) != step.wantErr {
			t.Fatalf("%s: err = %v, want error %v", step.name, err, step.wantErr)
		}
		if next.calls != step.wantCalls {
			t.Fatalf("%s: %d reviews so far, want %d", step.name, next.calls, step.wantCalls)
		}
	}
}

func TestCachingAuthenticatorBounded(t *testing.T) {
	next := &countingAuthenticator{ok: map[string]bool{}}
	for i := range 20 {
		next.ok[fmt.Sprint(i)] = true
	}
	a := &CachingAuthenticator{Next: next, MaxEntries: 8}
	for i := range 20 {
		if _, err := a.Authenticate(context.Background(), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		if n := len(a.entries); n > 8 {
			t.Fatalf("cache holds %d entries, want at most 8", n)
		}
	}
}
