package logging

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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

// countingSink records what reaches it and how many writes brought it.
type countingSink struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (s *countingSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.buf.Write(p)
}

func (s *countingSink) Sync() error { return nil }

func (s *countingSink) snapshot() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String(), s.writes
}

// TestBuffered: a burst of access lines goes out in a few writes, every
// line arrives once stop flushes, lines keep the logger's name and
// Build's JSON fields but carry no caller, the level still filters, and a lone line goes out
// on its own within the flush interval.
func TestBuffered(t *testing.T) {
	sink := &countingSink{}
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	log, stop := bufferedTo("access", level, sink)
	const n = 1000
	for i := range n {
		log.Info("request complete", zap.Int("i", i))
	}
	log.Debug("not at info level")
	stop()
	out, writes := sink.snapshot()
	if got := strings.Count(out, "\n"); got != n {
		t.Fatalf("%d lines arrived of %d", got, n)
	}
	if writes > n/10 {
		t.Errorf("%d writes for %d lines: not buffered", writes, n)
	}
	first := out[:strings.IndexByte(out, '\n')]
	var line map[string]any
	if err := json.Unmarshal([]byte(first), &line); err != nil {
		t.Fatal(err)
	}
	if line["logger"] != "access" || line["msg"] != "request complete" || line["level"] != "info" || line["i"] != 0.0 || line["ts"] == nil {
		t.Errorf("line lost the logger's name, message, level, time or fields: %s", first)
	}
	if _, ok := line["caller"]; ok {
		t.Errorf("line carries a caller: %s", first)
	}
	if strings.Contains(out, "not at info level") {
		t.Error("a debug line was written at info level")
	}

	lone := &countingSink{}
	log, stop = bufferedTo("access", level, lone)
	defer stop()
	log.Info("one request")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if out, _ := lone.snapshot(); strings.Contains(out, "one request") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a lone line was not flushed within 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
