package certmanager

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatchRootsFile(t *testing.T) {
	a, b := newFakeCA(t), newFakeCA(t)
	enc := func(cas ...*fakeCA) []byte {
		var out []byte
		for _, c := range cas {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.root.Raw})...)
		}
		return out
	}
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(path, enc(a), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Fetcher: a})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.WatchRootsFile(ctx, path, 10*time.Millisecond) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchRootsFile: %v", err)
		}
	}()
	eventually(t, 5*time.Second, "the first bundle", func() bool { r := m.Roots(); return len(r) == 1 && r[0].Equal(a.root) })

	// A rotation writes both roots; a broken write keeps the last good bundle.
	if err := os.WriteFile(path, enc(b, a), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the two-root bundle", func() bool { return len(m.Roots()) == 2 })
	bundle, err := m.GetX509BundleForTrustDomain(m.TrustDomain())
	if err != nil || !bundle.HasX509Authority(a.root) || !bundle.HasX509Authority(b.root) {
		t.Fatalf("bundle source does not hold both roots: %v", err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, enc(b), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the pruned bundle", func() bool { r := m.Roots(); return len(r) == 1 && r[0].Equal(b.root) })
}

func TestWatchRootsFileMissing(t *testing.T) {
	m, err := New(Config{Fetcher: newFakeCA(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WatchRootsFile(t.Context(), filepath.Join(t.TempDir(), "nope"), 0); err == nil {
		t.Errorf("WatchRootsFile of a missing file returned nil")
	}
}
