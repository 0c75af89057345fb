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
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"github.com/ambient-mesh/mesh/hack/bench/clusterbench"
)

const (
	bulkImage = clusterbench.BulkImage
	serverURL = "http://server:8080/echo"
	// ztunnelExe is the ztunnel binary's path in its image, how the driver
	// finds the process among the node's.
	ztunnelExe = "/usr/local/bin/ztunnel"
)

func main() {
	out := flag.String("out", "_output/bench/ztunnel.json", "where to write the JSON figures")
	kubectlBin := flag.String("kubectl", "kubectl", "kubectl binary")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "the local cluster's admin kubeconfig")
	manifests := flag.String("manifests", "manifests", "the mesh's kustomization directory")
	def := clusterbench.BenchDuration("bench-ztunnel")
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
	b := &bench{kube: clusterbench.Kubectl{Bin: *kubectlBin, Kubeconfig: *kubeconfig}, manifests: *manifests,
		duration: *duration, qps: *qps, conns: *conns, streamBytes: *streamBytes}
	// A watchdog keeps the bound hard even if cleanup hangs.
	time.AfterFunc(*timeout+90*time.Second, func() {
		fmt.Fprintln(os.Stderr, "bench-ztunnel: timed out")
		os.Exit(2)
	})
	fig, err := b.run(ctx)
	b.cleanup()
	benchkit.Save("bench-ztunnel", *out, fig, err)
	fmt.Printf("bench-ztunnel: %d qps x %s over %d conns, 1 KB: added p50 %.3f ms, p90 %.3f ms, p99 %.3f ms (direct p99 %.3f ms); ztunnel %.3f vCPU per 1000 rps, rss %.1f MB; one stream %.2fx direct (%.0f vs %.0f MB/s) -> %s\n",
		*qps, *duration, *conns, fig["p50_added_ms"], fig["p90_added_ms"], fig["p99_added_ms"], fig["direct_p99_ms"],
		fig["vcpu_per_krps"], fig["rss_mb"], fig["stream_throughput_ratio_vs_direct"], fig["mesh_stream_mb_per_s"], fig["direct_stream_mb_per_s"], *out)
}

type bench struct {
	kube        clusterbench.Kubectl
	manifests   string
	duration    time.Duration
	qps, conns  int
	streamBytes int64

	namespaces     []string
	installedMesh  bool
	direct, meshed string // namespaces
	ztunnelPID     int
	cleanupOnce    sync.Once
}

// k runs kubectl and returns its stdout.
func (b *bench) k(ctx context.Context, stdin string, args ...string) (string, error) {
	return b.kube.Run(ctx, stdin, args...)
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
` + clusterbench.ClientPodManifest

func (b *bench) run(ctx context.Context) (map[string]float64, error) {
	installed, err := b.kube.InstallMesh(ctx, b.manifests)
	b.installedMesh = installed
	if err != nil {
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
	if err := b.kube.WaitCaptured(ctx, b.meshed, "server", "client"); err != nil {
		return nil, err
	}
	pid, err := clusterbench.FindProcess(ztunnelExe)
	if err != nil {
		return nil, err
	}
	b.ztunnelPID = pid

	// The Service answers once kube-proxy and ztunnel have its endpoint;
	// then warm up both paths (connection pools, certificates, caches).
	for _, ns := range []string{b.direct, b.meshed} {
		if err := b.kube.WaitReachable(ctx, ns, "client", serverURL); err != nil {
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
	usage, err := clusterbench.StartUsage(pid)
	if err != nil {
		return nil, fmt.Errorf("ztunnel usage: %w", err)
	}
	mesh, err := b.load(ctx, b.meshed, b.duration)
	cpu, elapsed, rss, uerr := usage.Stop()
	if err != nil {
		return nil, fmt.Errorf("mesh run: %w", err)
	}
	if uerr != nil {
		return nil, fmt.Errorf("ztunnel usage: %w", uerr)
	}
	hwm, _ := benchkit.PeakRSSMB(pid)
	// What the resident set is made of, right after the load.
	if anon, file, err := benchkit.RSSPartsMB(pid); err == nil {
		fig["rss_anon_after_load_mb"], fig["rss_file_after_load_mb"] = anon, file
	}

	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 50}, {"p90", 90}, {"p99", 99}} {
		d, m := direct.Percentile(p.q)*1e3, mesh.Percentile(p.q)*1e3
		fig["direct_"+p.name+"_ms"] = d
		fig["mesh_"+p.name+"_ms"] = m
		fig[p.name+"_added_ms"] = m - d
	}
	fig["direct_qps"], fig["mesh_qps"] = direct.ActualQPS, mesh.ActualQPS
	fig["direct_errors"], fig["mesh_errors"] = float64(direct.Errors()), float64(mesh.Errors())
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
	if mesh.Errors() > 0 || direct.Errors() > 0 {
		return fig, fmt.Errorf("requests failed: %d direct, %d through the mesh", direct.Errors(), mesh.Errors())
	}
	return fig, nil
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

// load runs fortio in the client pod of ns against the server's Service:
// 1 KB POSTs echoed back.
func (b *bench) load(ctx context.Context, ns string, d time.Duration) (*clusterbench.FortioResult, error) {
	return b.kube.Fortio(ctx, clusterbench.Load{Namespace: ns, Pod: "client", URL: serverURL,
		QPS: b.qps, Conns: b.conns, Duration: d, PayloadBytes: 1024})
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
