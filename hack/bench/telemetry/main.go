// Command telemetry is the driver of `make bench-telemetry`: on the local
// cluster (up, with the images imported) it installs the mesh from
// manifests/ if needed, applies the sample OpenTelemetry Collector
// (manifests/samples/otel-collector.yaml, the mesh config's otel-tracing
// provider) and, in one ambient namespace, a fortio server behind a Service
// that uses a waypoint (held to one core, GOMAXPROCS=1, as in
// bench-waypoint) and a fortio client. For each tracing mode, set through a
// telemetry.istio.io Telemetry on the waypoint Gateway without restarting
// it:
//
//   - off: no Telemetry (the waypoint exports nothing; traceparent is still
//     propagated);
//   - trace1: provider otel-tracing at 1 %;
//   - trace100: provider otel-tracing at 100 % (every request a span,
//     exported to the collector);
//
// it runs fortio 1 KB HTTP at as many requests per second as the waypoint
// takes (-max-c connections, -max-duration) for RPS, and at a fixed rate
// (-qps over -c connections, -duration) for the latency percentiles, each
// -rounds times in interleaved order; it keeps each mode's best RPS and
// lowest p99 (the machine is shared: the best of a few runs is the least
// disturbed one). It writes the flat JSON figures of DESIGN.md §9
// (rps_ratio_trace100_vs_off, rps_ratio_trace1_vs_off,
// p99_added_ms_trace100, ...), prints a one-line summary and removes the
// namespace.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"github.com/ambient-mesh/mesh/hack/bench/clusterbench"
)

func main() {
	out := flag.String("out", "_output/bench/telemetry.json", "where to write the JSON figures")
	kubectlBin := flag.String("kubectl", "kubectl", "kubectl binary")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "the local cluster's admin kubeconfig")
	manifests := flag.String("manifests", "manifests", "the mesh's kustomization directory")
	duration := flag.Duration("duration", 15*time.Second, "length of each fixed-rate run")
	maxDuration := flag.Duration("max-duration", 15*time.Second, "length of each maximum-RPS run")
	qps := flag.Int("qps", 300, "requests per second of the fixed-rate runs")
	conns := flag.Int("c", 4, "connections of the fixed-rate runs")
	maxConns := flag.Int("max-c", 16, "connections of the maximum-RPS runs")
	rounds := flag.Int("rounds", 3, "runs of each mode")
	down := flag.Duration("collector-down", 0, "after the modes, stop the collector and keep 100 % tracing under -qps load this long, sampling the waypoint's memory and export queue each minute (0: skip)")
	timeout := flag.Duration("timeout", 9*time.Minute, "bound on the whole run (plus -collector-down)")
	flag.Parse()
	*timeout += *down
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	b := &bench{k: clusterbench.Kubectl{Bin: *kubectlBin, Kubeconfig: *kubeconfig}, manifests: *manifests,
		duration: *duration, maxDuration: *maxDuration, qps: *qps, conns: *conns, maxConns: *maxConns, rounds: *rounds, down: *down}
	fig, err := b.run(ctx)
	b.cleanup()
	benchkit.Save("bench-telemetry", *out, fig, err)
	fmt.Printf("bench-telemetry: waypoint max rps off %.0f, 1%% %.0f (%.3fx), 100%% %.0f (%.3fx); p99 at %d qps off %.3f ms, 1%% %.3f ms, 100%% %.3f ms (+%.3f ms); %.0f spans exported -> %s\n",
		fig["rps_off"], fig["rps_trace1"], fig["rps_ratio_trace1_vs_off"], fig["rps_trace100"], fig["rps_ratio_trace100_vs_off"],
		*qps, fig["p99_ms_off"], fig["p99_ms_trace1"], fig["p99_ms_trace100"], fig["p99_added_ms_trace100"], fig["spans_exported"], *out)
}

type bench struct {
	k                     clusterbench.Kubectl
	manifests             string
	duration, maxDuration time.Duration
	qps, conns, maxConns  int
	rounds                int
	down                  time.Duration
	ns                    string
	collectorStopped      bool
}

// appManifest is fortio's echo server behind a Service that uses the
// waypoint, the waypoint (one core), and an idle fortio client pod.
const appManifest = `apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: ` + clusterbench.BulkImage + `
    imagePullPolicy: Never
    command: ["/usr/local/bin/fortio", "server", "-http-port=8080", "-grpc-port=disabled", "-redirect-port=disabled", "-logger-json=false", "-quiet"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata:
  name: server
  labels: {istio.io/use-waypoint: waypoint}
spec:
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
` + clusterbench.ClientPodManifest + `---
` + clusterbench.OneCoreWaypointManifest

func telemetry(percent int) string {
	return fmt.Sprintf(`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bench-tracing}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  tracing:
  - providers: [{name: otel-tracing}]
    randomSamplingPercentage: %d
`, percent)
}

type mode struct {
	name    string
	percent int // -1: no Telemetry
}

func (b *bench) run(ctx context.Context) (map[string]float64, error) {
	if _, err := b.k.InstallMesh(ctx, b.manifests); err != nil {
		return nil, err
	}
	if _, err := b.k.Run(ctx, "", "apply", "-f", "manifests/samples/otel-collector.yaml"); err != nil {
		return nil, err
	}
	if _, err := b.k.Run(ctx, "", "-n", "otel-collector", "rollout", "status", "deployment/opentelemetry-collector", "--timeout=180s"); err != nil {
		return nil, err
	}
	b.ns = "bench-tel-" + strconv.FormatInt(time.Now().UnixNano()%1_000_000, 10)
	if _, err := b.k.Run(ctx, "", "create", "namespace", b.ns); err != nil {
		b.ns = ""
		return nil, err
	}
	if _, err := b.k.Run(ctx, "", "label", "namespace", b.ns, "istio.io/dataplane-mode=ambient"); err != nil {
		return nil, err
	}
	if _, err := b.k.Run(ctx, appManifest, "-n", b.ns, "apply", "-f", "-"); err != nil {
		return nil, err
	}
	if _, err := b.k.Run(ctx, "", "-n", b.ns, "wait", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=120s"); err != nil {
		return nil, err
	}
	if err := b.k.WaitCaptured(ctx, b.ns, "server", "client"); err != nil {
		return nil, err
	}
	if err := b.k.WaitWaypoint(ctx, b.ns); err != nil {
		return nil, err
	}
	// The waypoint process on the node: its CPU-seconds and resident set
	// are read from /proc around each maximum-rate run.
	wpid, err := clusterbench.FindProcess("/usr/local/bin/waypoint", "POD_NAMESPACE="+b.ns)
	if err != nil {
		return nil, err
	}
	url := "http://server:8080/echo"
	if err := b.k.WaitReachable(ctx, b.ns, "client", url); err != nil {
		return nil, err
	}
	if _, err := b.k.Fortio(ctx, clusterbench.Load{Namespace: b.ns, Pod: "client", URL: url, QPS: b.qps, Conns: b.conns, Duration: 3 * time.Second, PayloadBytes: 1024}); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}

	fig := map[string]float64{"fixed_qps": float64(b.qps), "connections": float64(b.conns), "max_connections": float64(b.maxConns),
		"duration_s": b.duration.Seconds(), "max_duration_s": b.maxDuration.Seconds(), "rounds": float64(b.rounds)}
	modes := []mode{{"off", -1}, {"trace1", 1}, {"trace100", 100}}
	for round := range b.rounds {
		// Rotate the order so that no mode always runs first or last.
		order := []mode{modes[round%3], modes[(round+1)%3], modes[(round+2)%3]}
		for _, m := range order {
			if err := b.setMode(ctx, m); err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "bench-telemetry: round %d, %s: max rps over %d connections for %s\n", round+1, m.name, b.maxConns, b.maxDuration)
			u, err := clusterbench.StartUsage(wpid)
			if err != nil {
				return nil, err
			}
			r, err := b.k.Fortio(ctx, clusterbench.Load{Namespace: b.ns, Pod: "client", URL: url, QPS: 0, Conns: b.maxConns, Duration: b.maxDuration, PayloadBytes: 1024})
			cpu, _, rss, uerr := u.Stop()
			if err == nil {
				err = uerr
			}
			if err != nil {
				return nil, fmt.Errorf("%s max run: %w", m.name, err)
			}
			// Waypoint CPU per request (lowest round) and peak RSS.
			if us := cpu / float64(r.DurationHistogram.Count) * 1e6; round == 0 || us < fig["waypoint_cpu_us_per_request_"+m.name] {
				fig["waypoint_cpu_us_per_request_"+m.name] = us
			}
			fig["waypoint_cpu_s_"+m.name] += cpu
			fig["waypoint_rss_mb_"+m.name] = max(fig["waypoint_rss_mb_"+m.name], rss)
			if r.ActualQPS > fig["rps_"+m.name] {
				fig["rps_"+m.name] = r.ActualQPS
			}
			fig["errors_"+m.name] += float64(r.Errors())
			fmt.Fprintf(os.Stderr, "bench-telemetry: round %d, %s: %d qps over %d connections for %s\n", round+1, m.name, b.qps, b.conns, b.duration)
			r, err = b.k.Fortio(ctx, clusterbench.Load{Namespace: b.ns, Pod: "client", URL: url, QPS: b.qps, Conns: b.conns, Duration: b.duration, PayloadBytes: 1024})
			if err != nil {
				return nil, fmt.Errorf("%s fixed run: %w", m.name, err)
			}
			fig["errors_"+m.name] += float64(r.Errors())
			for _, q := range []struct {
				name string
				p    float64
			}{{"p50", 50}, {"p90", 90}, {"p99", 99}} {
				k := q.name + "_ms_" + m.name
				if v := r.Percentile(q.p) * 1e3; round == 0 || v < fig[k] {
					fig[k] = v
				}
			}
			if m.percent == 100 {
				// The export queue's counters (reset when a mode change
				// rebuilds the provider): what this provider exported and
				// dropped so far.
				stats, err := b.waypointMetrics(ctx)
				if err != nil {
					return nil, err
				}
				fig["spans_exported"] = stats["otel_export_spans_exported_total"]
				fig["spans_dropped"] = stats["otel_export_spans_dropped_total"]
			}
		}
	}
	fig["rps_ratio_trace100_vs_off"] = fig["rps_trace100"] / fig["rps_off"]
	fig["rps_ratio_trace1_vs_off"] = fig["rps_trace1"] / fig["rps_off"]
	fig["p99_added_ms_trace100"] = fig["p99_ms_trace100"] - fig["p99_ms_off"]
	fig["p99_added_ms_trace1"] = fig["p99_ms_trace1"] - fig["p99_ms_off"]
	fig["cpu_per_request_ratio_trace100_vs_off"] = fig["waypoint_cpu_us_per_request_trace100"] / fig["waypoint_cpu_us_per_request_off"]
	if b.down > 0 {
		if err := b.collectorDown(ctx, url, fig); err != nil {
			return fig, err
		}
	}
	return fig, nil
}

// collectorDown stops the collector (scale to 0) with tracing at 100 % and
// runs the fixed-rate load for b.down in one-minute chunks, recording after
// each the waypoint's resident set (from /proc on the node), its export
// queue and dropped spans: the proxy must keep serving, the queue stay
// bounded and memory flat.
func (b *bench) collectorDown(ctx context.Context, url string, fig map[string]float64) error {
	if err := b.setMode(ctx, mode{"trace100", 100}); err != nil {
		return err
	}
	b.collectorStopped = true
	if _, err := b.k.Run(ctx, "", "-n", "otel-collector", "scale", "deployment/opentelemetry-collector", "--replicas=0"); err != nil {
		return err
	}
	if _, err := b.k.Run(ctx, "", "-n", "otel-collector", "wait", "--for=delete", "pod", "-l", "app=opentelemetry-collector", "--timeout=120s"); err != nil {
		return fmt.Errorf("collector pods did not stop: %w", err)
	}
	pid, err := clusterbench.FindProcess("/usr/local/bin/waypoint", "POD_NAMESPACE="+b.ns)
	if err != nil {
		return err
	}
	var first, peak, last, queuePeak, requests, errs float64
	for i := 0; time.Duration(i)*time.Minute < b.down; i++ {
		d := min(time.Minute, b.down-time.Duration(i)*time.Minute)
		fmt.Fprintf(os.Stderr, "bench-telemetry: collector down, minute %d: %d qps for %s\n", i+1, b.qps, d)
		r, err := b.k.Fortio(ctx, clusterbench.Load{Namespace: b.ns, Pod: "client", URL: url, QPS: b.qps, Conns: b.conns, Duration: d, PayloadBytes: 1024})
		if err != nil {
			return fmt.Errorf("collector down, minute %d: %w", i+1, err)
		}
		requests += float64(r.DurationHistogram.Count)
		errs += float64(r.Errors())
		rss, err := benchkit.CurrentRSSMB(pid)
		if err != nil {
			return fmt.Errorf("waypoint rss (did it restart?): %w", err)
		}
		if i == 0 {
			first = rss
		}
		last, peak = rss, max(peak, rss)
		stats, err := b.waypointMetrics(ctx)
		if err != nil {
			return err
		}
		queuePeak = max(queuePeak, stats["otel_export_queue_spans"])
		fig["collector_down_spans_dropped"] = stats["otel_export_spans_dropped_total"]
		fmt.Fprintf(os.Stderr, "bench-telemetry: collector down, minute %d: rss %.1f MB, queue %.0f spans, %.0f dropped, %d errors\n",
			i+1, rss, stats["otel_export_queue_spans"], stats["otel_export_spans_dropped_total"], r.Errors())
	}
	fig["collector_down_s"] = b.down.Seconds()
	fig["collector_down_requests"] = requests
	fig["collector_down_errors"] = errs
	fig["collector_down_rss_first_min_mb"] = first
	fig["collector_down_rss_last_mb"] = last
	fig["collector_down_rss_peak_mb"] = peak
	fig["collector_down_rss_growth_after_first_min_mb"] = last - first
	fig["collector_down_queue_peak_spans"] = queuePeak
	if errs > 0 {
		return fmt.Errorf("%v of %v requests failed with the collector down", errs, requests)
	}
	return nil
}

// setMode applies (or deletes) the Telemetry and waits for the waypoint's
// "telemetry applied" log line that shows it, so runs never straddle a
// change. The waypoint pod stays the same.
func (b *bench) setMode(ctx context.Context, m mode) error {
	var err error
	if m.percent < 0 {
		_, err = b.k.Run(ctx, "", "-n", b.ns, "delete", "telemetry", "bench-tracing", "--ignore-not-found")
	} else {
		_, err = b.k.Run(ctx, telemetry(m.percent), "-n", b.ns, "apply", "-f", "-")
	}
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := b.lastApplied(ctx)
		if err == nil && got.matches(m) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waypoint did not apply mode %s within 60 s (last: %+v, %v)", m.name, got, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

type applied struct {
	Msg      string  `json:"msg"`
	Export   bool    `json:"export"`
	Spans    bool    `json:"spans"`
	Sampling float64 `json:"sampling_percent"`
}

func (a applied) matches(m mode) bool {
	if m.percent < 0 {
		return !a.Spans
	}
	return a.Spans && a.Sampling == float64(m.percent)
}

// lastApplied reads the waypoint's last "telemetry applied" log line.
func (b *bench) lastApplied(ctx context.Context) (applied, error) {
	out, err := b.k.Run(ctx, "", "-n", b.ns, "logs", "deployment/waypoint")
	if err != nil {
		return applied{}, err
	}
	var last applied
	found := false
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `"telemetry applied"`) {
			continue
		}
		var a applied
		if json.Unmarshal([]byte(line), &a) == nil {
			last, found = a, true
		}
	}
	if !found {
		return applied{Spans: false}, nil // nothing applied yet: the OTEL_* defaults, export off
	}
	return last, nil
}

// waypointMetrics reads the waypoint's otel_export_* counters from its
// Prometheus endpoint (the node routes to pod IPs).
func (b *bench) waypointMetrics(ctx context.Context) (map[string]float64, error) {
	ip, err := b.k.Run(ctx, "", "-n", b.ns, "get", "pod", "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "jsonpath={.items[0].status.podIP}")
	if err != nil {
		return nil, err
	}
	if ip == "" {
		return nil, errors.New("no waypoint pod IP")
	}
	out, err := b.k.Run(ctx, "", "-n", b.ns, "exec", "client", "--", "/usr/local/bin/fortio", "curl", "-logger-json=false", "-quiet", "http://"+ip+":15020/metrics")
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "otel_export_") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 2 {
			m[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return m, nil
}

func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.collectorStopped {
		_, _ = b.k.Run(ctx, "", "-n", "otel-collector", "scale", "deployment/opentelemetry-collector", "--replicas=1")
	}
	if b.ns == "" {
		return
	}
	_, _ = b.k.Run(ctx, "", "delete", "namespace", b.ns, "--wait=false")
}
