package proxyadmin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func get(t *testing.T, h http.Handler, url string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, url, nil))
	return rec.Code, rec.Body.String()
}

func TestReadiness(t *testing.T) {
	var err error = errors.New("no xds yet")
	h := Readiness(func() error { return err })
	if code, body := get(t, h, "/healthz/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no xds yet") {
		t.Errorf("not ready: got %d %q, want 503 naming the reason", code, body)
	}
	err = nil
	if code, body := get(t, h, "/healthz/ready"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("ready: got %d %q", code, body)
	}
}

func TestLogging(t *testing.T) {
	level := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	h := Logging(level)
	if code, body := get(t, h, "/logging?level=debug"); code != http.StatusOK || body != "level=debug\n" || level.Level() != zapcore.DebugLevel {
		t.Errorf("set debug: got %d %q, level %v", code, body, level.Level())
	}
	if code, _ := get(t, h, "/logging?level=loud"); code != http.StatusBadRequest || level.Level() != zapcore.DebugLevel {
		t.Errorf("bad level: got %d, level %v; want 400 and the level unchanged", code, level.Level())
	}
}

// TestServe: the runner serves until its context ends, then returns nil.
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(addr, Readiness(func() error { return nil }), net.ListenConfig{})(ctx) }()
	var resp *http.Response
	for deadline := time.Now().Add(5 * time.Second); ; {
		if resp, err = http.Get("http://" + addr + "/healthz/ready"); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ready\n" {
		t.Errorf("body %q", b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v after its context ended, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func TestDrainDefault(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want time.Duration
	}{{"", 5 * time.Second}, {"junk", 5 * time.Second}, {"0", 5 * time.Second}, {"10", 9 * time.Second}, {"30", 25 * time.Second}} {
		t.Setenv("TERMINATION_GRACE_PERIOD_SECONDS", tc.env)
		if got := DrainDefault(); got != tc.want {
			t.Errorf("TERMINATION_GRACE_PERIOD_SECONDS=%q: DrainDefault() = %s, want %s", tc.env, got, tc.want)
		}
	}
}
