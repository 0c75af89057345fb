// Command waypoint is the driver of `make bench-waypoint`: on the local
// cluster (up, with the images imported) it installs the mesh from
// manifests/ if needed and runs, in one run, fortio 1 KB HTTP at 1000 qps
// over 4 connections for -duration (BENCH_DURATION, default 60 s) from a
// client pod to a server pod:
//
//   - direct: in a plain namespace, through the server's Service;
//   - ztunnel: in an ambient namespace, through the Service (two ztunnel hops);
//   - waypoint: in the ambient namespace, through a Service labelled
//     istio.io/use-waypoint (ztunnel -> waypoint -> ztunnel);
//   - haproxy: the Debian HAProxy on the node as an L7 hop in plaintext
//     (HTTP/1.1 in and out), in front of the plain server, reached from
//     the plain client;
//   - haproxy_tls: HAProxy as the same L7 hop as the waypoint's, mutual
//     TLS 1.3 on both sides (AES-128-GCM, ECDSA P-256 certificates, as
//     HBONE between ztunnels and the waypoint), reached from a client pod
//     with a client certificate; a second, unmeasured HAProxy ends its
//     upstream TLS in front of the plain server, as the server's ztunnel
//     does for the waypoint.
//
// It measures the waypoint's and the HAProxy peers' CPU-seconds and
// resident set from /proc while they carry the load, then each one's
// maximum RPS per core: each proxy on one thread (the waypoint with
// GOMAXPROCS=1 through the Gateway's parameters ConfigMap, HAProxy with
// nbthread 1) is held to a quarter of a core by CFS bandwidth control
// (-max-cpu; its container's cgroup, and a cgroup of its own for each
// HAProxy) and driven as hard as the load generator can: the machine's
// cores run the load generator, the backend and the ztunnels too, and
// without the limit the proxy would not be the bottleneck. Each proxy runs
// over each of the -max-c connection counts (16 to 256, doubling): the more
// requests wait for a proxy, the more each wakeup and system call
// carries, and proxies peak at different counts (HAProxy with TLS at 64,
// the waypoint, which gets them multiplexed on a few HBONE connections,
// higher); a proxy's maximum is its best count's, and the ratios at each
// count are reported too. The three proxies alternate over -max-rounds
// rounds, so that a slow spell of the shared machine falls on all, and the
// figures pool the rounds (requests over CPU-seconds), with the spread of
// the per-round ratio to each peer. The waypoint runs without its
// per-request access log (-waypoint-access-log), as the HAProxy peers log
// failures only.
// The share of CFS periods in which each was throttled is recorded
// (*max_rps_throttled, near 1 when saturated), and each run's CPU is
// split per request into user and system time.
// It writes the flat JSON figures of DESIGN.md §9, prints a one-line summary
// and removes what it created.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"github.com/ambient-mesh/mesh/hack/bench/clusterbench"
)

const waypointExe = "/usr/local/bin/waypoint"

func main() {
	out := flag.String("out", "_output/bench/waypoint.json", "where to write the JSON figures")
	kubectlBin := flag.String("kubectl", "kubectl", "kubectl binary")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "the local cluster's admin kubeconfig")
	manifests := flag.String("manifests", "manifests", "the mesh's kustomization directory")
	haproxy := flag.String("haproxy", "/usr/sbin/haproxy", "HAProxy binary (Debian package haproxy)")
	def := clusterbench.BenchDuration("bench-waypoint")
	duration := flag.Duration("duration", def, "length of each fixed-rate run (env BENCH_DURATION)")
	maxDuration := flag.Duration("max-duration", 8*time.Second, "length of each maximum-RPS run")
	qps := flag.Int("qps", 1000, "requests per second of the fixed-rate runs")
	conns := flag.Int("c", 4, "connections of the fixed-rate runs")
	maxConns := flag.String("max-c", "16,32,64,128,256", "connection counts of the maximum-RPS runs (comma-separated); each proxy's maximum is its best count's")
	maxRounds := flag.Int("max-rounds", 3, "maximum-RPS runs of each proxy, alternating")
	maxCPU := flag.Float64("max-cpu", 0.25, "CPU limit (cores, CFS bandwidth) each proxy is held to in its maximum-RPS run, so that it, not the load generator, is the bottleneck; 0: no limit")
	maxCPUPeriod := flag.Duration("max-cpu-period", 20*time.Millisecond, "CFS period of the -max-cpu limit")
	accessLog := flag.Bool("waypoint-access-log", false, "keep the waypoint's per-request access log on (the mesh config's default); off, a Telemetry turns it off, as HAProxy logs failures only (dontlog-normal)")
	profOut := flag.String("waypoint-profile", "", "also profile the waypoint's CPU during each of its runs and write the merged profile here, for go tool pprof (the profiler costs the waypoint a little CPU)")
	timeout := flag.Duration("timeout", 0, "bound on the whole run (default 5x duration + (3x max-rounds x connection counts + 1) x (max-duration + 5s) + 5 min)")
	flag.Parse()
	var levels []int
	for _, f := range strings.Split(*maxConns, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			fmt.Fprintf(os.Stderr, "bench-waypoint: -max-c %q: %q is not a connection count (want positive integers, comma-separated)\n", *maxConns, f)
			os.Exit(2)
		}
		levels = append(levels, c)
	}
	if *timeout == 0 {
		*timeout = 5**duration + time.Duration(3*len(levels)*max(*maxRounds, 1)+1)*(*maxDuration+5*time.Second) + 5*time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	b := &bench{k: clusterbench.Kubectl{Bin: *kubectlBin, Kubeconfig: *kubeconfig}, manifests: *manifests, haproxyBin: *haproxy,
		duration: *duration, maxDuration: *maxDuration, qps: *qps, conns: *conns, maxConns: levels,
		maxCPU: *maxCPU, maxCPUPeriod: *maxCPUPeriod, maxRounds: max(*maxRounds, 1), accessLog: *accessLog}
	time.AfterFunc(*timeout+90*time.Second, func() {
		fmt.Fprintln(os.Stderr, "bench-waypoint: timed out")
		b.stopHAProxies()
		os.Exit(2)
	})
	if *profOut != "" {
		dir, err := os.MkdirTemp("", "bench-waypoint-profile-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-waypoint:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		b.prof = &profiler{dir: dir}
	}
	fig, err := b.run(ctx)
	if err == nil && b.prof != nil {
		if err = b.prof.merge(ctx, *profOut); err == nil {
			fmt.Fprintf(os.Stderr, "bench-waypoint: the waypoint's CPU profile of %d runs -> %s\n", len(b.prof.files), *profOut)
		}
	}
	b.cleanup()
	benchkit.Save("bench-waypoint", *out, fig, err)
	fmt.Printf("bench-waypoint: %d qps x %s over %d conns, 1 KB: waypoint adds p50 %.3f ms, p99 %.3f ms vs direct (%.3f / %.3f ms vs ztunnel only; HAProxy adds %.3f / %.3f ms, with mTLS %.3f / %.3f ms); waypoint %.3f vCPU and %.1f MB per 1000 rps (HAProxy with mTLS %.3f vCPU); max %.0f rps per waypoint core (best over %.0f connections) vs HAProxy %.0f (%.0f; %.2fx) and HAProxy with mTLS %.0f (%.0f; %.2fx), all held to %.2f cores -> %s\n",
		*qps, *duration, *conns, fig["p50_added_ms"], fig["p99_added_ms"], fig["p50_added_vs_ztunnel_ms"], fig["p99_added_vs_ztunnel_ms"],
		fig["haproxy_p50_added_ms"], fig["haproxy_p99_added_ms"], fig["haproxy_tls_p50_added_ms"], fig["haproxy_tls_p99_added_ms"],
		fig["vcpu_per_krps"], fig["rss_mb_per_krps"], fig["haproxy_tls_vcpu_per_krps"],
		fig["max_rps_one_core"], fig["max_rps_best_connections"],
		fig["haproxy_max_rps_one_core"], fig["haproxy_max_rps_best_connections"], fig["max_rps_ratio_vs_haproxy"],
		fig["haproxy_tls_max_rps_one_core"], fig["haproxy_tls_max_rps_best_connections"], fig["max_rps_ratio_vs_haproxy_tls"],
		fig["max_rps_cpu_limit_cores"], *out)
}

type bench struct {
	k                     clusterbench.Kubectl
	manifests, haproxyBin string
	duration, maxDuration time.Duration
	qps, conns            int
	maxConns              []int // the maximum-RPS runs' connection counts
	maxCPU                float64
	maxRounds             int
	maxCPUPeriod          time.Duration
	accessLog             bool // the waypoint's per-request access log stays on

	direct, meshed string // namespaces
	namespaces     []string
	installedMesh  bool
	haproxies      []*haproxy
	haproxyDir     string    // their configurations, certificates and pid files
	prof           *profiler // with -waypoint-profile
	cleanupOnce    sync.Once
	mu             sync.Mutex
}

// serverManifest is fortio's echo server and its Service, and an idle
// client pod to run fortio's load from.
const serverManifest = `apiVersion: v1
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
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
` + clusterbench.ClientPodManifest

// waypointManifest is the waypoint (held to one core) and a second Service
// over the server that uses it.
const waypointManifest = clusterbench.OneCoreWaypointManifest + `---
apiVersion: v1
kind: Service
metadata:
  name: server-wp
  labels: {istio.io/use-waypoint: waypoint}
spec:
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: 8080}]
`

// noAccessLogManifest turns the bench waypoint's per-request access log
// off through the Telemetry API, so that it does the HAProxy peers' work:
// they log failures only (dontlog-normal). The mesh config shipped in
// manifests/ logs every request, as Istio's demo profile; Istio's default
// profile logs none.
const noAccessLogManifest = `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bench-no-access-log}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  accessLogging: [{disabled: true}]
`

func (b *bench) run(ctx context.Context) (map[string]float64, error) {
	installed, err := b.k.InstallMesh(ctx, b.manifests)
	b.installedMesh = installed
	if err != nil {
		return nil, err
	}
	suffix := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 10)
	b.direct, b.meshed = "bench-wp-direct-"+suffix, "bench-wp-mesh-"+suffix
	for _, ns := range []string{b.direct, b.meshed} {
		if _, err := b.k.Run(ctx, "", "create", "namespace", ns); err != nil {
			return nil, err
		}
		b.namespaces = append(b.namespaces, ns)
	}
	if _, err := b.k.Run(ctx, "", "label", "namespace", b.meshed, "istio.io/dataplane-mode=ambient"); err != nil {
		return nil, err
	}
	// The TLS peer's certificates: its listener's and its terminator's on
	// the node, the client's in the tlsclient pod.
	if b.haproxyDir, err = os.MkdirTemp("", "bench-waypoint-haproxy-"); err != nil {
		return nil, err
	}
	if err := writeCerts(b.haproxyDir, net.ParseIP(nodeIP)); err != nil {
		return nil, fmt.Errorf("TLS peer certificates: %w", err)
	}
	secret := []string{"-n", b.direct, "create", "secret", "generic", "bench-tls"}
	for _, f := range []string{"ca.pem", "tls.crt", "tls.key"} {
		secret = append(secret, "--from-file="+filepath.Join(b.haproxyDir, f))
	}
	if _, err := b.k.Run(ctx, "", secret...); err != nil {
		return nil, err
	}
	if _, err := b.k.Run(ctx, serverManifest+"---\n"+tlsClientManifest, "-n", b.direct, "apply", "-f", "-"); err != nil {
		return nil, err
	}
	wp := serverManifest + "---\n" + waypointManifest
	if !b.accessLog {
		wp += "---\n" + noAccessLogManifest
	}
	if _, err := b.k.Run(ctx, wp, "-n", b.meshed, "apply", "-f", "-"); err != nil {
		return nil, err
	}
	for _, ns := range []string{b.direct, b.meshed} {
		pods := []string{"pod/server", "pod/client"}
		if ns == b.direct {
			pods = append(pods, "pod/tlsclient")
		}
		if _, err := b.k.Run(ctx, "", append([]string{"-n", ns, "wait", "--for=condition=Ready", "--timeout=120s"}, pods...)...); err != nil {
			return nil, err
		}
	}
	if err := b.k.WaitCaptured(ctx, b.meshed, "server", "client"); err != nil {
		return nil, err
	}
	if err := b.k.WaitWaypoint(ctx, b.meshed); err != nil {
		return nil, err
	}
	serverIP, err := b.k.Run(ctx, "", "-n", b.direct, "get", "pod", "server", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		return nil, err
	}
	plainCfg, tlsCfg, termCfg := haproxyConfigs(b.haproxyDir, serverIP+":8080", nodePeers)
	if _, err := b.startHAProxy("terminator", termCfg, false); err != nil {
		return nil, err
	}
	hpid, err := b.startHAProxy("haproxy", plainCfg, b.maxCPU > 0)
	if err != nil {
		return nil, err
	}
	htpid, err := b.startHAProxy("haproxy-tls", tlsCfg, b.maxCPU > 0)
	if err != nil {
		return nil, err
	}

	type path struct {
		name, ns, pod, url string
		args               []string // more fortio flags
	}
	paths := []path{
		{name: "direct", ns: b.direct, pod: "client", url: "http://server:8080/echo"},
		{name: "ztunnel", ns: b.meshed, pod: "client", url: "http://server:8080/echo"},
		{name: "waypoint", ns: b.meshed, pod: "client", url: "http://server-wp:8080/echo"},
		{name: "haproxy", ns: b.direct, pod: "client", url: "http://" + haproxyAddr + "/echo"},
		{name: "haproxy_tls", ns: b.direct, pod: "tlsclient", url: "https://" + haproxyTLSAddr + "/echo", args: tlsClientArgs},
	}
	load := func(p path, qps, conns int, d time.Duration) clusterbench.Load {
		return clusterbench.Load{Namespace: p.ns, Pod: p.pod, URL: p.url, QPS: qps, Conns: conns, Duration: d, PayloadBytes: 1024, Args: p.args}
	}
	// Reachable, then warm (pools, certificates, caches).
	for _, p := range paths {
		if err := b.k.WaitReachable(ctx, p.ns, p.pod, p.url, p.args...); err != nil {
			return nil, err
		}
		// A warm-up that fails is tried again, twice: the first
		// connections of a path have been seen to fail once in a while
		// (fortio then aborts); the measured runs after it must not.
		for try := 1; ; try++ {
			_, err := b.k.Fortio(ctx, load(p, b.qps, b.conns, 3*time.Second))
			if err == nil {
				break
			}
			if try == 3 {
				return nil, fmt.Errorf("warm-up %s: %w", p.name, err)
			}
			fmt.Fprintf(os.Stderr, "bench-waypoint: warm-up %s failed, again (%d of 3): %v\n", p.name, try+1, err)
		}
	}
	wpid, err := clusterbench.FindProcess(waypointExe, "POD_NAMESPACE="+b.meshed)
	if err != nil {
		return nil, err
	}
	procs := map[string]int{"waypoint": wpid, "haproxy": hpid, "haproxy_tls": htpid}

	fig := map[string]float64{"duration_s": b.duration.Seconds(), "target_qps": float64(b.qps), "connections": float64(b.conns),
		"waypoint_access_log": boolFigure(b.accessLog)}
	res := map[string]*clusterbench.FortioResult{}
	for _, p := range paths {
		fmt.Fprintf(os.Stderr, "bench-waypoint: %s: %d qps over %d connections for %s\n", p.name, b.qps, b.conns, b.duration)
		var u *clusterbench.Usage
		if pid, ok := procs[p.name]; ok {
			if u, err = clusterbench.StartUsage(pid); err != nil {
				return nil, err
			}
		}
		prof := b.profilerOf(p.name)
		prof.start(ctx, procs[p.name], b.duration-time.Second)
		r, err := b.k.Fortio(ctx, load(p, b.qps, b.conns, b.duration))
		if perr := prof.wait(); err == nil {
			err = perr
		}
		if u != nil {
			cpu, wall, rss, uerr := u.Stop()
			if err == nil && uerr != nil {
				err = uerr
			}
			if err == nil {
				window := min(wall.Seconds(), b.duration.Seconds()+1)
				prefix := p.name + "_"
				if p.name == "waypoint" {
					prefix = ""
				}
				fig[prefix+"cpu_s"] = cpu
				fig[prefix+"vcpu_per_krps"] = cpu / window / (r.ActualQPS / 1000)
				fig[prefix+"rss_mb"] = rss
				fig[prefix+"rss_mb_per_krps"] = rss / (r.ActualQPS / 1000)
				splitCPU(fig, prefix, u, r)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s run: %w", p.name, err)
		}
		res[p.name] = r
		fig[p.name+"_qps"] = r.ActualQPS
		fig[p.name+"_errors"] = float64(r.Errors())
		for _, q := range []struct {
			name string
			p    float64
		}{{"p50", 50}, {"p90", 90}, {"p99", 99}} {
			fig[p.name+"_"+q.name+"_ms"] = r.Percentile(q.p) * 1e3
		}
	}
	for _, q := range []string{"p50", "p90", "p99"} {
		fig[q+"_added_ms"] = fig["waypoint_"+q+"_ms"] - fig["direct_"+q+"_ms"]
		fig[q+"_added_vs_ztunnel_ms"] = fig["waypoint_"+q+"_ms"] - fig["ztunnel_"+q+"_ms"]
		fig["haproxy_"+q+"_added_ms"] = fig["haproxy_"+q+"_ms"] - fig["direct_"+q+"_ms"]
		fig["haproxy_tls_"+q+"_added_ms"] = fig["haproxy_tls_"+q+"_ms"] - fig["direct_"+q+"_ms"]
	}

	// Maximum RPS per core of each L7 hop at each of the -max-c
	// connection counts, in rounds that alternate the proxies so that a
	// slow spell of the shared machine falls on all; the figures pool the
	// rounds (requests over CPU-seconds). A proxy's maximum is its best
	// count's: how many requests wait for it changes what each wakeup and
	// system call carries, and proxies peak at different counts.
	total := map[string]map[int]*maxRound{} // proxy, connections
	perRound := map[string]map[int][]float64{}
	for _, p := range paths[2:] {
		total[p.name], perRound[p.name] = map[int]*maxRound{}, map[int][]float64{}
		for _, c := range b.maxConns {
			total[p.name][c] = &maxRound{}
		}
	}
	for round := 1; round <= b.maxRounds; round++ {
		for _, c := range b.maxConns {
			for _, p := range paths[2:] {
				fmt.Fprintf(os.Stderr, "bench-waypoint: %s: maximum rate over %d connections for %s, held to %.2f cores (round %d of %d)\n", p.name, c, b.maxDuration, b.maxCPU, round, b.maxRounds)
				m, err := b.maxRun(ctx, load(p, 0, c, b.maxDuration), procs[p.name], b.profilerOf(p.name))
				if err != nil {
					return nil, fmt.Errorf("%s maximum run over %d connections: %w", p.name, c, err)
				}
				if b.maxCPU > 0 && m.throttled < 0.5 {
					fmt.Fprintf(os.Stderr, "bench-waypoint: warning: %s was throttled in only %.0f%% of the CPU periods of its maximum run over %d connections: it was not the bottleneck, so its rate per core is below its maximum (lower -max-cpu)\n", p.name, m.throttled*100, c)
				}
				perRound[p.name][c] = append(perRound[p.name][c], m.reqs/max(m.cpu(), 0.01))
				total[p.name][c].add(m)
			}
		}
	}
	best := map[string]int{} // proxy: its best connection count
	for name, byConns := range total {
		prefix := name + "_"
		if name == "waypoint" {
			prefix = ""
		}
		var errors float64
		for _, c := range b.maxConns {
			m := byConns[c]
			errors += m.errors
			fig[prefix+"max_rps_one_core_c"+strconv.Itoa(c)] = m.perCore()
			if bc, ok := best[name]; !ok || m.perCore() > byConns[bc].perCore() {
				best[name] = c
			}
		}
		m := byConns[best[name]]
		fig[prefix+"max_rps_best_connections"] = float64(best[name])
		fig[prefix+"max_rps"] = m.reqs / m.window
		fig[prefix+"max_rps_cores_used"] = m.cpu() / m.window
		fig[prefix+"max_rps_one_core"] = m.perCore()
		fig[prefix+"max_rps_errors"] = errors // over every run
		fig[prefix+"max_rps_throttled"] = m.throttled / float64(b.maxRounds)
		fig[prefix+"max_rps_user_us_per_req"] = m.user / m.reqs * 1e6
		fig[prefix+"max_rps_sys_us_per_req"] = m.sys / m.reqs * 1e6
	}
	fig["max_rps_cpu_limit_cores"] = b.maxCPU
	fig["max_rps_rounds"] = float64(b.maxRounds)
	for _, peer := range []string{"haproxy", "haproxy_tls"} {
		key := "max_rps_ratio_vs_" + peer
		// Best against best, and per round (each at its best count).
		fig[key] = fig["max_rps_one_core"] / fig[peer+"_max_rps_one_core"]
		var r []float64
		for i := range b.maxRounds {
			r = append(r, perRound["waypoint"][best["waypoint"]][i]/perRound[peer][best[peer]][i])
		}
		fig[key+"_round_min"] = slices.Min(r)
		fig[key+"_round_max"] = slices.Max(r)
		// And at the same connection count.
		for _, c := range b.maxConns {
			fig[key+"_c"+strconv.Itoa(c)] = total["waypoint"][c].perCore() / total[peer][c].perCore()
		}
	}

	var failed []string
	for name, r := range res {
		if r.Errors() > 0 {
			failed = append(failed, fmt.Sprintf("%s %d", name, r.Errors()))
		}
	}
	if len(failed) > 0 {
		return fig, fmt.Errorf("requests failed: %s", strings.Join(failed, ", "))
	}
	return fig, nil
}

func boolFigure(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// maxRound is one maximum-rate run of a proxy, or the sum of several.
type maxRound struct {
	reqs, window, user, sys, throttled, errors float64
}

// cpu is the proxy's CPU-seconds.
func (t maxRound) cpu() float64 { return t.user + t.sys }

// perCore is the proxy's requests per CPU-second.
func (t maxRound) perCore() float64 { return t.reqs / max(t.cpu(), 0.01) }

func (t *maxRound) add(m maxRound) {
	t.reqs += m.reqs
	t.window += m.window
	t.user += m.user
	t.sys += m.sys
	t.throttled += m.throttled
	t.errors += m.errors
}

// maxRun runs l (QPS 0: as fast as its connections can), with the proxy
// pid held to -max-cpu cores, and measures the proxy's CPU (and profiles
// it with prof, if not nil).
func (b *bench) maxRun(ctx context.Context, l clusterbench.Load, pid int, prof *profiler) (maxRound, error) {
	var limit *clusterbench.CPULimit
	if b.maxCPU > 0 {
		var err error
		if limit, err = clusterbench.LimitCPU(pid, b.maxCPU, b.maxCPUPeriod); err != nil {
			return maxRound{}, err
		}
	}
	var m maxRound
	u, err := clusterbench.StartUsage(pid)
	var r *clusterbench.FortioResult
	if err == nil {
		prof.start(ctx, pid, l.Duration-time.Second)
		r, err = b.k.Fortio(ctx, l)
		if perr := prof.wait(); err == nil {
			err = perr
		}
		_, wall, _, uerr := u.Stop()
		if err == nil {
			err = uerr
		}
		m.window = min(wall.Seconds(), b.maxDuration.Seconds()+1)
	}
	if limit != nil {
		m.throttled = limit.Throttled()
		if lerr := limit.Undo(); err == nil {
			err = lerr
		}
	}
	if err != nil {
		return maxRound{}, err
	}
	m.reqs = float64(r.DurationHistogram.Count)
	m.user, m.sys = u.User, u.Sys
	m.errors = float64(r.Errors())
	return m, nil
}

// splitCPU records a run's CPU per request in the proxy's own code
// (user) and in the kernel on its behalf (sys: its system calls and the
// network stack work they carry, including the receiving side of a
// local socket), in microseconds.
func splitCPU(fig map[string]float64, prefix string, u *clusterbench.Usage, r *clusterbench.FortioResult) {
	n := float64(r.DurationHistogram.Count)
	if n == 0 {
		return
	}
	fig[prefix+"user_us_per_req"] = u.User / n * 1e6
	fig[prefix+"sys_us_per_req"] = u.Sys / n * 1e6
}

func (b *bench) cleanup() {
	b.cleanupOnce.Do(func() {
		b.stopHAProxies()
		ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
		defer cancel()
		for _, ns := range b.namespaces {
			if _, err := b.k.Run(ctx, "", "delete", "namespace", ns, "--wait=false"); err != nil {
				fmt.Fprintln(os.Stderr, "bench-waypoint: cleanup:", err)
			}
		}
		for _, ns := range b.namespaces {
			_, _ = b.k.Run(ctx, "", "wait", "--for=delete", "namespace/"+ns, "--timeout=60s")
		}
		if b.installedMesh {
			if _, err := b.k.Run(ctx, "", "delete", "-k", b.manifests, "--ignore-not-found", "--wait=false"); err != nil {
				fmt.Fprintln(os.Stderr, "bench-waypoint: cleanup:", err)
			}
		}
	})
}
