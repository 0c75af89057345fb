// Command ztunnel is the driver of `make bench-ztunnel`: on the local
// cluster (up, with the images imported), it installs the mesh from
// manifests/ if needed and runs, in one run, the same load with and without
// the mesh: fortio (in the bulk image) from a client pod to a server pod
// through their Service, 1 KB HTTP requests (POST echoed back, so 1 KB each
// way) at 1000 qps over 4 connections for -duration (BENCH_DURATION, default
// 60 s), once in a plain namespace and once in an ambient one, then one TCP
// stream (bulk send) each way. It reads the node's ztunnel process from
// /proc (CPU-seconds, resident set) while the mesh run lasts, writes the
// flat JSON figures of DESIGN.md §9 and prints a one-line summary. It
// deletes its namespaces, and the mesh when it installed it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
)

const (
	bulkImage = "localhost/ambient-mesh/bulk:dev"
	// ztunnelExe is the ztunnel binary's path in its image, how the driver
	// finds the process among the node's.
	ztunnelExe = "/usr/local/bin/ztunnel"
)

func main() {
	out := flag.String("out", "_output/bench/ztunnel.json", "where to write the JSON figures")
	kubectlBin := flag.String("kubectl", "kubectl", "kubectl binary")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "the local cluster's admin kubeconfig")
	manifests := flag.String("manifests", "manifests", "the mesh's kustomization directory")
	def := 60 * time.Second
	if v := os.Getenv("BENCH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench-ztunnel: BENCH_DURATION=%q: %v\n", v, err)
			os.Exit(2)
		}
		def = d
	}
	duration := flag.Duration("duration", def, "length of each load run (env BENCH_DURATION)")
	qps := flag.Int("qps", 1000, "requests per second of each load run")
	conns := flag.Int("c", 4, "connections of each load run")
	streamBytes := flag.Int64("stream-bytes", 1<<30, "bytes of the single-stream transfers")
	timeout := flag.Duration("timeout", 0, "bound on the whole run (default 2x duration + 5 min)")
	flag.Parse()
	if *timeout == 0 {
		*timeout = 2**duration + 5*time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	b := &bench{kubectl: *kubectlBin, kubeconfig: *kubeconfig, manifests: *manifests,
		duration: *duration, qps: *qps, conns: *conns, streamBytes: *streamBytes}
	// A watchdog keeps the bound hard even if cleanup hangs.
	time.AfterFunc(*timeout+90*time.Second, func() {
		fmt.Fprintln(os.Stderr, "bench-ztunnel: timed out")
		os.Exit(2)
	})
	fig, err := b.run(ctx)
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-ztunnel:", err)
		os.Exit(1)
	}
	if err := benchkit.WriteJSON(*out, fig); err != nil {
		fmt.Fprintln(os.Stderr, "bench-ztunnel:", err)
		os.Exit(1)
	}
	fmt.Printf("bench-ztunnel: %d qps x %s over %d conns, 1 KB: added p50 %.3f ms, p90 %.3f ms, p99 %.3f ms (direct p99 %.3f ms); ztunnel %.3f vCPU per 1000 rps, rss %.1f MB; one stream %.2fx direct (%.0f vs %.0f MB/s) -> %s\n",
		*qps, *duration, *conns, fig["p50_added_ms"], fig["p90_added_ms"], fig["p99_added_ms"], fig["direct_p99_ms"],
		fig["vcpu_per_krps"], fig["rss_mb"], fig["stream_throughput_ratio_vs_direct"], fig["mesh_stream_mb_per_s"], fig["direct_stream_mb_per_s"], *out)
}

type bench struct {
	kubectl, kubeconfig, manifests string
	duration                       time.Duration
	qps, conns                     int
	streamBytes                    int64

	namespaces     []string
	installedMesh  bool
	direct, meshed string // namespaces
	ztunnelPID     int
	cleanupOnce    sync.Once
}

// k runs kubectl and returns its stdout.
func (b *bench) k(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.kubectl, append([]string{"--kubeconfig", b.kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// appManifest is the server (fortio's echo server on 8080 and bulk's sink on
// 9000 in one pod), its Service, and the client pod (idle: bulk serve).
const appManifest = `apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: ` + bulkImage + `
    imagePullPolicy: Never
    command: ["/usr/local/bin/fortio", "server", "-http-port=8080", "-grpc-port=disabled", "-redirect-port=disabled", "-logger-json=false", "-quiet"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: bulk
    image: ` + bulkImage + `
    imagePullPolicy: Never
    args: ["serve", "-listen=:9000"]
    readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
  - {name: tcp, port: 9000, targetPort: 9000}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: ` + bulkImage + `
    imagePullPolicy: Never
    args: ["serve", "-listen=:9000"]
    readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}
`

func (b *bench) run(ctx context.Context) (map[string]float64, error) {
	if err := b.installMesh(ctx); err != nil {
		return nil, err
	}
	suffix := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 10)
	b.direct, b.meshed = "bench-zt-direct-"+suffix, "bench-zt-mesh-"+suffix
	for _, ns := range []string{b.direct, b.meshed} {
		if _, err := b.k(ctx, "", "create", "namespace", ns); err != nil {
			return nil, err
		}
		b.namespaces = append(b.namespaces, ns)
	}
	if _, err := b.k(ctx, "", "label", "namespace", b.meshed, "istio.io/dataplane-mode=ambient"); err != nil {
		return nil, err
	}
	for _, ns := range []string{b.direct, b.meshed} {
		if _, err := b.k(ctx, appManifest, "-n", ns, "apply", "-f", "-"); err != nil {
			return nil, err
		}
	}
	for _, ns := range []string{b.direct, b.meshed} {
		if _, err := b.k(ctx, "", "-n", ns, "wait", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=120s"); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{"server", "client"} {
		if _, err := b.k(ctx, "", "-n", b.meshed, "wait", "pod/"+p, "--for=jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}=enabled", "--timeout=120s"); err != nil {
			return nil, fmt.Errorf("mesh pods not captured: %w", err)
		}
	}
	pid, err := findZtunnel()
	if err != nil {
		return nil, err
	}
	b.ztunnelPID = pid

	// The Service answers once kube-proxy and ztunnel have its endpoint;
	// then warm up both paths (connection pools, certificates, caches).
	for _, ns := range []string{b.direct, b.meshed} {
		if err := b.waitReachable(ctx, ns); err != nil {
			return nil, err
		}
		if _, err := b.load(ctx, ns, 3*time.Second); err != nil {
			return nil, fmt.Errorf("warm-up in %s: %w", ns, err)
		}
	}
	fig := map[string]float64{"duration_s": b.duration.Seconds(), "target_qps": float64(b.qps), "connections": float64(b.conns)}
	// The machine is shared: its load says how noisy the figures are.
	fig["loadavg_1m_before"] = loadavg()

	direct, err := b.load(ctx, b.direct, b.duration)
	if err != nil {
		return nil, fmt.Errorf("direct run: %w", err)
	}
	cpu0, err := benchkit.CPUSeconds(pid)
	if err != nil {
		return nil, fmt.Errorf("ztunnel cpu: %w", err)
	}
	sampler := startRSSSampler(pid)
	start := time.Now()
	mesh, err := b.load(ctx, b.meshed, b.duration)
	elapsed := time.Since(start)
	rss := sampler.stop()
	if err != nil {
		return nil, fmt.Errorf("mesh run: %w", err)
	}
	cpu1, err := benchkit.CPUSeconds(pid)
	if err != nil {
		return nil, fmt.Errorf("ztunnel cpu (did it restart?): %w", err)
	}
	hwm, _ := benchkit.PeakRSSMB(pid)

	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 50}, {"p90", 90}, {"p99", 99}} {
		d, m := direct.percentile(p.q)*1e3, mesh.percentile(p.q)*1e3
		fig["direct_"+p.name+"_ms"] = d
		fig["mesh_"+p.name+"_ms"] = m
		fig[p.name+"_added_ms"] = m - d
	}
	fig["direct_qps"], fig["mesh_qps"] = direct.ActualQPS, mesh.ActualQPS
	fig["direct_errors"], fig["mesh_errors"] = float64(direct.errors()), float64(mesh.errors())
	cpu := cpu1 - cpu0
	fig["ztunnel_cpu_s"] = cpu
	// The load's own wall time (kubectl exec adds start-up around it).
	window := min(elapsed.Seconds(), b.duration.Seconds()+1)
	fig["vcpu_per_krps"] = cpu / window / (mesh.ActualQPS / 1000)
	fig["rss_mb"] = rss
	fig["ztunnel_peak_rss_since_start_mb"] = hwm

	fig["loadavg_1m_after_load"] = loadavg()

	ds, err := b.stream(ctx, b.direct)
	if err != nil {
		return nil, fmt.Errorf("direct stream: %w", err)
	}
	ms, err := b.stream(ctx, b.meshed)
	if err != nil {
		return nil, fmt.Errorf("mesh stream: %w", err)
	}
	fig["direct_stream_mb_per_s"], fig["mesh_stream_mb_per_s"] = ds, ms
	fig["stream_throughput_ratio_vs_direct"] = ms / ds
	if mesh.errors() > 0 || direct.errors() > 0 {
		return fig, fmt.Errorf("requests failed: %d direct, %d through the mesh", direct.errors(), mesh.errors())
	}
	return fig, nil
}

// installMesh applies manifests/ unless istiod-lite is there already, and
// waits for the mesh's rollouts.
func (b *bench) installMesh(ctx context.Context) error {
	if _, err := b.k(ctx, "", "-n", "istio-system", "get", "deployment", "istiod-lite"); err != nil {
		if _, err := b.k(ctx, "", "apply", "--server-side", "--force-conflicts", "-k", b.manifests); err != nil {
			return err
		}
		b.installedMesh = true
	}
	for _, r := range []string{"deployment/istiod-lite", "daemonset/ztunnel", "daemonset/ambient-cni"} {
		if _, err := b.k(ctx, "", "-n", "istio-system", "rollout", "status", r, "--timeout=180s"); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) cleanup() {
	b.cleanupOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
		defer cancel()
		for _, ns := range b.namespaces {
			if _, err := b.k(ctx, "", "delete", "namespace", ns, "--wait=false"); err != nil {
				fmt.Fprintln(os.Stderr, "bench-ztunnel: cleanup:", err)
			}
		}
		for _, ns := range b.namespaces {
			_, _ = b.k(ctx, "", "wait", "--for=delete", "namespace/"+ns, "--timeout=60s")
		}
		if b.installedMesh {
			if _, err := b.k(ctx, "", "delete", "-k", b.manifests, "--ignore-not-found", "--wait=false"); err != nil {
				fmt.Fprintln(os.Stderr, "bench-ztunnel: cleanup:", err)
			}
		}
	})
}

// fortioResult is the part of fortio's JSON result the bench reads.
type fortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

func (r *fortioResult) percentile(p float64) float64 {
	for _, q := range r.DurationHistogram.Percentiles {
		if q.Percentile == p {
			return q.Value
		}
	}
	return 0
}

func (r *fortioResult) errors() int64 {
	n := r.DurationHistogram.Count
	return n - r.RetCodes["200"]
}

// load runs fortio in the client pod of ns against the server's Service.
func (b *bench) load(ctx context.Context, ns string, d time.Duration) (*fortioResult, error) {
	out, err := b.k(ctx, "", "-n", ns, "exec", "client", "--", "/usr/local/bin/fortio", "load",
		"-qps", strconv.Itoa(b.qps), "-c", strconv.Itoa(b.conns), "-t", d.String(),
		"-payload-size", "1024", "-p", "50,90,99", "-uniform", "-nocatchup",
		"-logger-json=false", "-quiet", "-json", "-",
		"http://server:8080/echo")
	if err != nil {
		return nil, err
	}
	// The JSON object is the last thing fortio prints.
	i := strings.Index(out, "{")
	if i < 0 {
		return nil, fmt.Errorf("fortio printed no JSON: %s", out)
	}
	var r fortioResult
	if err := json.Unmarshal([]byte(out[i:]), &r); err != nil {
		return nil, fmt.Errorf("fortio output: %w", err)
	}
	if r.DurationHistogram.Count == 0 {
		return nil, errors.New("fortio made no request")
	}
	return &r, nil
}

// waitReachable retries one request from the client to the server's
// Service in ns until it succeeds, for at most a minute.
func (b *bench) waitReachable(ctx context.Context, ns string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := b.k(ctx, "", "-n", ns, "exec", "client", "--", "/usr/local/bin/fortio", "curl",
			"-logger-json=false", "-quiet", "-payload-size", "1024", "http://server:8080/echo")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server in %s not reachable through its Service: %w", ns, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// stream sends one TCP stream from the client to the server's sink in ns,
// without hashing, and returns MB/s.
func (b *bench) stream(ctx context.Context, ns string) (float64, error) {
	out, err := b.k(ctx, "", "-n", ns, "exec", "client", "--", "/usr/local/bin/bulk", "send", "-nohash",
		"-addr=server:9000", "-bytes="+strconv.FormatInt(b.streamBytes, 10))
	if err != nil {
		return 0, err
	}
	var r struct {
		ServerBytes int64   `json:"server_bytes"`
		MBps        float64 `json:"mbps"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("bulk send printed %q: %w", out, err)
	}
	if r.ServerBytes != b.streamBytes {
		return 0, fmt.Errorf("server got %d of %d bytes", r.ServerBytes, b.streamBytes)
	}
	return r.MBps, nil
}

// findZtunnel returns the pid of the node's ztunnel (one node, one
// ztunnel): the process whose executable path is ztunnelExe.
func findZtunnel() (int, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return 0, err
	}
	var pids []int
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		if argv0, _, _ := bytes.Cut(b, []byte{0}); string(argv0) == ztunnelExe {
			pid, _ := strconv.Atoi(strings.Split(d, "/")[2])
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("want one ztunnel process on the node, found %v", pids)
	}
	return pids[0], nil
}

// rssSampler polls a process's resident set and keeps the largest.
type rssSampler struct {
	stopc chan struct{}
	done  chan float64
}

func startRSSSampler(pid int) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan float64, 1)}
	go func() {
		var peak float64
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if v, err := benchkit.CurrentRSSMB(pid); err == nil {
				peak = max(peak, v)
			}
			select {
			case <-s.stopc:
				s.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() float64 { close(s.stopc); return <-s.done }

// loadavg is the node's 1-minute load average, 0 if unreadable.
func loadavg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
