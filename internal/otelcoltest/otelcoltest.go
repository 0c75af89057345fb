// Package otelcoltest runs the project's OpenTelemetry Collector build
// (hack/tools/otelcol, built by hack/build-otelcol.sh) as a subprocess on
// loopback for tests, with the file exporter writing what it receives to
// temporary files, and reads those files back. The pkg/otel tests and the
// proxies' telemetry tests import it.
//
// The binary is $OTELCOL_BIN, or the cached build for the current
// hack/tools/otelcol sources in $MESH_CACHE (default /var/cache/ambient-mesh).
// Without it a test skips, and fails under CI=true (internal/testenv).
package otelcoltest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/testenv"
)

// Binary returns the collector binary's path, stopping t when it is not built.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("OTELCOL_BIN"); p != "" {
		return p
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("find the repository root: %v", err)
	}
	mod := filepath.Join(root, "hack", "tools", "otelcol")
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(mod, f))
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		h.Write(b)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16] // as hack/lib.sh hash_files
	cache := os.Getenv("MESH_CACHE")
	if cache == "" {
		cache = "/var/cache/ambient-mesh"
	}
	p := filepath.Join(cache, "otelcol", key, "otelcol")
	if _, err := os.Stat(p); err != nil {
		testenv.Unavailable(t, "OpenTelemetry Collector not built at %s: run hack/build-otelcol.sh (make build-otelcol)", p)
	}
	return p
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack", "tools", "otelcol", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no hack/tools/otelcol above the working directory")
		}
		dir = parent
	}
}

// Collector is a running collector subprocess.
type Collector struct {
	// GRPCAddr and HTTPAddr are the OTLP receiver's host:port.
	GRPCAddr, HTTPAddr string
	// TracesFile and MetricsFile are the file exporter's outputs (OTLP JSON,
	// one export request per line).
	TracesFile, MetricsFile string

	cmd  *exec.Cmd
	dir  string
	log  *bytes.Buffer
	mu   sync.Mutex
	done chan struct{}
}

// Start runs a collector on free loopback ports until the test ends. It
// returns when the OTLP receivers accept connections. A port taken between
// choosing and binding it (an ephemeral port of another connection) costs a
// retry on new ports.
func Start(t testing.TB) *Collector {
	t.Helper()
	bin := Binary(t)
	for attempt := 1; ; attempt++ {
		c, err := start(t, bin)
		if err == nil {
			return c
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
}

func start(t testing.TB, bin string) (*Collector, error) {
	t.Helper()
	dir := t.TempDir()
	c := &Collector{
		GRPCAddr:    freeAddr(t),
		HTTPAddr:    freeAddr(t),
		TracesFile:  filepath.Join(dir, "traces.json"),
		MetricsFile: filepath.Join(dir, "metrics.json"),
		dir:         dir,
		log:         &bytes.Buffer{},
		done:        make(chan struct{}),
	}
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: %q}
      http: {endpoint: %q}
exporters:
  file/traces: {path: %q, flush_interval: 100ms}
  file/metrics: {path: %q, flush_interval: 100ms}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    traces: {receivers: [otlp], exporters: [file/traces]}
    metrics: {receivers: [otlp], exporters: [file/metrics]}
`, c.GRPCAddr, c.HTTPAddr, c.TracesFile, c.MetricsFile)
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config="+cfgPath)
	c.cmd.Stdout = lockedWriter{&c.mu, c.log}
	c.cmd.Stderr = lockedWriter{&c.mu, c.log}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start collector %s: %v", bin, err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("collector log:\n%s", c.Log())
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for _, a := range []string{c.GRPCAddr, c.HTTPAddr} {
		for {
			conn, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-c.done:
				return nil, fmt.Errorf("collector exited before listening on %s:\n%s", a, c.Log())
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("collector not listening on %s after 30s:\n%s", a, c.Log())
			}
		}
	}
	return c, nil
}

// Stop terminates the collector (SIGTERM, then kill after 10 s). Idempotent.
func (c *Collector) Stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// Log returns the collector's output so far.
func (c *Collector) Log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Span is one span as the file exporter wrote it.
type Span struct {
	TraceID      string
	SpanID       string
	ParentSpanID string
	Name         string
	Kind         int
	Attributes   map[string]string
	// Resource holds the resource attributes of the span's batch.
	Resource map[string]string
}

// MetricPoint is one data point of a metric as the file exporter wrote it.
type MetricPoint struct {
	Name       string
	Unit       string
	Type       string // sum, gauge, histogram, summary, exponentialHistogram
	Attributes map[string]string
	Resource   map[string]string
	// Value is a sum or gauge point's value; Count and Sum a histogram's.
	Value  float64
	Count  uint64
	Sum    float64
	Bounds []float64
}

// Spans reads every span in the traces file.
func (c *Collector) Spans(t testing.TB) []Span {
	t.Helper()
	var out []Span
	for _, line := range readLines(t, c.TracesFile) {
		var req struct {
			ResourceSpans []struct {
				Resource   struct{ Attributes []kv }
				ScopeSpans []struct {
					Spans []struct {
						TraceID      string `json:"traceId"`
						SpanID       string `json:"spanId"`
						ParentSpanID string `json:"parentSpanId"`
						Name         string
						Kind         int
						Attributes   []kv
					}
				}
			}
		}
		if err := json.Unmarshal(line, &req); err != nil {
			t.Fatalf("decode %s: %v", c.TracesFile, err)
		}
		for _, rs := range req.ResourceSpans {
			res := attrs(rs.Resource.Attributes)
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					out = append(out, Span{TraceID: s.TraceID, SpanID: s.SpanID, ParentSpanID: s.ParentSpanID,
						Name: s.Name, Kind: s.Kind, Attributes: attrs(s.Attributes), Resource: res})
				}
			}
		}
	}
	return out
}

// Metrics reads every data point in the metrics file, in file order.
func (c *Collector) Metrics(t testing.TB) []MetricPoint {
	t.Helper()
	type point struct {
		Attributes     []kv
		AsInt          string   `json:"asInt"`
		AsDouble       *float64 `json:"asDouble"`
		Count          string
		Sum            *float64
		ExplicitBounds []float64 `json:"explicitBounds"`
	}
	type points struct{ DataPoints []point }
	var out []MetricPoint
	for _, line := range readLines(t, c.MetricsFile) {
		var req struct {
			ResourceMetrics []struct {
				Resource     struct{ Attributes []kv }
				ScopeMetrics []struct {
					Metrics []struct {
						Name                 string
						Unit                 string
						Sum                  *points
						Gauge                *points
						Histogram            *points
						Summary              *points
						ExponentialHistogram *points `json:"exponentialHistogram"`
					}
				}
			}
		}
		if err := json.Unmarshal(line, &req); err != nil {
			t.Fatalf("decode %s: %v", c.MetricsFile, err)
		}
		for _, rm := range req.ResourceMetrics {
			res := attrs(rm.Resource.Attributes)
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					typ, ps := "", (*points)(nil)
					switch {
					case m.Sum != nil:
						typ, ps = "sum", m.Sum
					case m.Gauge != nil:
						typ, ps = "gauge", m.Gauge
					case m.Histogram != nil:
						typ, ps = "histogram", m.Histogram
					case m.Summary != nil:
						typ, ps = "summary", m.Summary
					case m.ExponentialHistogram != nil:
						typ, ps = "exponentialHistogram", m.ExponentialHistogram
					default:
						continue
					}
					for _, p := range ps.DataPoints {
						mp := MetricPoint{Name: m.Name, Unit: m.Unit, Type: typ, Attributes: attrs(p.Attributes), Resource: res, Bounds: p.ExplicitBounds}
						if p.AsDouble != nil {
							mp.Value = *p.AsDouble
						} else if p.AsInt != "" {
							mp.Value, _ = strconv.ParseFloat(p.AsInt, 64)
						}
						mp.Count, _ = strconv.ParseUint(p.Count, 10, 64)
						if p.Sum != nil {
							mp.Sum = *p.Sum
						}
						out = append(out, mp)
					}
				}
			}
		}
	}
	return out
}

// WaitFor polls read until ok accepts its result or ctx ends (then fails t).
func WaitFor[T any](ctx context.Context, t testing.TB, what string, read func() T, ok func(T) bool) T {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		v := read()
		if ok(v) {
			return v
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; last read: %+v", what, ctx.Err(), v)
		case <-tick.C:
		}
	}
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if b := bytes.TrimSpace(sc.Bytes()); len(b) > 0 {
			// A line still being written is incomplete JSON: stop there.
			if !json.Valid(b) {
				break
			}
			lines = append(lines, append([]byte(nil), b...))
		}
	}
	return lines
}

// kv is an OTLP JSON attribute.
type kv struct {
	Key   string
	Value struct {
		StringValue *string  `json:"stringValue"`
		IntValue    *string  `json:"intValue"`
		DoubleValue *float64 `json:"doubleValue"`
		BoolValue   *bool    `json:"boolValue"`
	}
}

// attrs flattens OTLP attributes to strings (ints and floats formatted).
func attrs(in []kv) map[string]string {
	m := make(map[string]string, len(in))
	for _, a := range in {
		v := a.Value
		switch {
		case v.StringValue != nil:
			m[a.Key] = *v.StringValue
		case v.IntValue != nil:
			m[a.Key] = *v.IntValue
		case v.DoubleValue != nil:
			m[a.Key] = strconv.FormatFloat(*v.DoubleValue, 'g', -1, 64)
		case v.BoolValue != nil:
			m[a.Key] = strconv.FormatBool(*v.BoolValue)
		}
	}
	return m
}
