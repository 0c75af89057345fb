package logging

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
)

// TestNoSampling: every line of a burst of identical messages (an access
// log under load) is written; zap's production sampling would keep ~100.
func TestNoSampling(t *testing.T) {
	out := filepath.Join(t.TempDir(), "log.json")
	log, err := build(zap.NewAtomicLevelAt(zap.InfoLevel), []string{out})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for i := range n {
		log.Info("request", zap.Int("i", i))
	}
	_ = log.Sync()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.Count(b, []byte("\n")); got != n {
		t.Errorf("%d lines written of %d logged", got, n)
	}
}
