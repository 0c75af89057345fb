package app

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/internal/meshtest"
	"github.com/ambient-mesh/mesh/internal/otelcoltest"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"

	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testConfig(t *testing.T) Config {
	t.Helper()
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t0ken"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-root-cert", root, "-token", tok, "-xds-address", "127.0.0.1:1",
		"-metrics-address", "0", "-readiness-address", "0", "-admin-address", "0", "-pod-name", "ztunnel-x", "-instance-ip", "10.0.0.9", "-zds-socket", ""}); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestFlagsFromEnv(t *testing.T) {
	t.Setenv("XDS_ADDRESS", "istiod.mesh.svc:15012")
	t.Setenv("TERMINATION_GRACE_PERIOD_SECONDS", "30")
	var cfg Config
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if cfg.XDSAddress != "istiod.mesh.svc:15012" || cfg.DrainTimeout != 25*time.Second || cfg.MetricsAddr != ":15020" || cfg.AdminAddr != "localhost:15000" {
		t.Errorf("config = %+v", cfg)
	}
	if got := proxyadmin.ServerName("", cfg.XDSAddress); got != "istiod.mesh.svc" {
		t.Errorf("serverName = %q", got)
	}
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("search ns.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ups, err := dnsUpstreams(Config{ResolvConf: rc})
	if err != nil || strings.Join(ups, " ") != "10.96.0.10:53 [fd00::a]:53" {
		t.Errorf("upstreams from resolv.conf = %v, %v", ups, err)
	}
	ups, err = dnsUpstreams(Config{DNSUpstreams: "1.1.1.1:53, 8.8.8.8:53"})
	if err != nil || strings.Join(ups, " ") != "1.1.1.1:53 8.8.8.8:53" {
		t.Errorf("explicit upstreams = %v, %v", ups, err)
	}
	if _, err := dnsUpstreams(Config{DNSUpstreams: "1.1.1.1"}); err == nil {
		t.Error("upstream without port accepted")
	}
}

func TestReadinessAndAdmin(t *testing.T) {
	cfg := testConfig(t)
	cfg.WaitForPodSync = true
	level := zap.NewAtomicLevel()
	a, err := New(cfg, zaptest.NewLogger(t), &level)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	if n := a.node().GetId(); n != "ztunnel~10.0.0.9~ztunnel-x.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("node id %q", n)
	}
	ready := httptest.NewServer(a.readinessMux())
	defer ready.Close()
	status := func() int {
		resp, err := http.Get(ready.URL + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("ready before xDS = %d, want 503", got)
	}
	// Feed both types through the same handler the xDS client calls.
	h := a.xdsHandler()
	w := &workloadapi.Workload{Uid: "u", Name: "p", Namespace: "ns", Addresses: [][]byte{netip.MustParseAddr("10.0.0.1").AsSlice()}}
	a.store.Replace(state.NewSnapshot([]*workloadapi.Workload{w}, nil, nil))
	// The node agent feed (pods' listeners) waits for both types.
	configIn := func() bool {
		select {
		case <-a.configIn:
			return true
		default:
			return false
		}
	}
	for i, typ := range []string{state.AddressTypeURL, state.AuthorizationTypeURL} {
		if configIn() {
			t.Fatalf("pods would be taken with %d of 2 xDS types applied", i)
		}
		if err := h(xdsclient.Delta{TypeURL: typ}); err != nil {
			t.Fatal(err)
		}
	}
	if !configIn() {
		t.Fatal("both xDS types applied, but the node agent feed still waits")
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("ready before pod sync = %d, want 503", got)
	}
	a.MarkPodsSynced()
	if got := status(); got != http.StatusOK {
		t.Errorf("ready = %d, want 200", got)
	}

	admin := httptest.NewServer(a.adminMux())
	defer admin.Close()
	resp, err := http.Get(admin.URL + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Workloads []map[string]any `json:"workloads"`
		Pods      []string         `json:"pods"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(dump.Workloads) != 1 || dump.Workloads[0]["uid"] != "u" {
		t.Errorf("config dump workloads = %v", dump.Workloads)
	}
	resp, err = http.Get(admin.URL + "/logging?level=debug")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if level.Level() != zap.DebugLevel {
		t.Errorf("level = %s after /logging?level=debug", level.Level())
	}
	resp, err = http.Get(admin.URL + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	heap, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(heap), "heap profile") {
		t.Errorf("admin /debug/pprof/heap: %s %.100q", resp.Status, heap)
	}
	if !strings.Contains(string(ConfigDump(state.Empty(), nil, nil)), `"certificates": []`) {
		t.Error("empty dump lacks certificates list")
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	a, err := New(testConfig(t), zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel")
	}
	if a.Ready() == nil {
		t.Error("ready after stop")
	}
}

// TestOTLPMetrics: with OTEL_EXPORTER_OTLP_ENDPOINT set, Run exports the
// Prometheus registry over OTLP to the real collector.
func TestOTLPMetrics(t *testing.T) {
	col := otelcoltest.Start(t)
	cfg := testConfig(t)
	env := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + col.HTTPAddr,
		"OTEL_METRIC_EXPORT_INTERVAL": "100",
	}
	cfg.LookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	a, err := New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var found map[string]string
		for _, p := range col.Metrics(t) {
			if p.Name == "go_goroutines" {
				found = p.Resource
			}
		}
		if found != nil {
			if found["service.name"] != "ztunnel" || found["k8s.pod.name"] != "ztunnel-x" {
				t.Errorf("resource %v, want service.name ztunnel and the pod name", found)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no go_goroutines point in the collector after 20s:\n%s", col.Log())
		}
		time.Sleep(50 * time.Millisecond) // the collector's file exporter flushes every 100 ms
	}
}
