// Command xds is the driver of `make bench-xds`: the scale benchmark of
// istiod-lite (issue 5, deliverable 7). It starts envtest (a real
// kube-apiserver and etcd on loopback), creates 50 ambient namespaces, 1,000
// Services and 10,000 Running, Ready pods spread over 100 nodes, runs the
// istiod-lite binary as a child process with a kubeconfig for that apiserver,
// and connects 100 delta xDS clients (pkg/xds/xdsclient) that authenticate
// with TokenRequest tokens bound to 100 ztunnel pods, one per node.
//
// It measures the time from each stream's open to its first full state (all
// Addresses), then applies single pod label changes one at a time, each after
// istiod-lite has been quiet for longer than its debounce period, and times
// each from the API write until every client holds it. It reads istiod-lite's CPU-seconds and
// peak RSS from /proc and its sent bytes from its metrics endpoint, and
// writes one flat JSON object (full_push_s, change_p99_ms, bytes_sent_mb,
// cpu_s, rss_mb, ...) and a one-line summary.
//
// Baselines from the same run: moving the same bytes to the same number of
// clients over plain TLS on loopback (the floor for a full push), and the
// time for each label change to reach a bare pod watch on the apiserver (the
// floor for a change, which istiod-lite sees through the same watch).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/go-logr/logr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/istiod"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

const systemNS = "istio-system"

// params are the sizes of one run.
type params struct {
	namespaces, services, pods, nodes, clients, changes int
	debounce                                            time.Duration
	istiod                                              string // binary; empty runs istiod.Run in a re-executed child
	cpuprofile                                          string
	clientprofile                                       string // CPU profile of this process (the clients) during the full push
	settle                                              bool   // wait for a quiet control plane before the full push
}

func main() {
	var p params
	out := flag.String("out", "_output/bench/xds.json", "where to write the JSON figures")
	flag.StringVar(&p.istiod, "istiod", "_output/bin/istiod-lite", "istiod-lite binary to run; empty runs pkg/istiod in a child of this binary")
	flag.IntVar(&p.namespaces, "namespaces", 50, "ambient namespaces")
	flag.IntVar(&p.services, "services", 1000, "Services (spread over the namespaces)")
	flag.IntVar(&p.pods, "pods", 10000, "pods (spread over the Services' selectors and the nodes)")
	flag.IntVar(&p.nodes, "nodes", 100, "nodes; one ztunnel pod each")
	flag.IntVar(&p.clients, "clients", 100, "delta xDS clients (at most one per node)")
	flag.IntVar(&p.changes, "changes", 50, "single pod label changes timed one at a time")
	flag.DurationVar(&p.debounce, "debounce", 100*time.Millisecond, "istiod-lite --xds-debounce")
	flag.StringVar(&p.cpuprofile, "cpuprofile", "", "write a CPU profile of istiod-lite here (runs pkg/istiod in a child of this binary instead of -istiod)")
	flag.BoolVar(&p.settle, "settle", true, "wait for the API server, etcd and istiod-lite to go quiet before the full push (false: push the moment istiod-lite is ready, as after a restart)")
	flag.StringVar(&p.clientprofile, "clientprofile", "", "write a CPU profile of this process (the 100 clients) during the full push here")
	timeout := flag.Duration("timeout", 270*time.Second, "bound on the whole run")
	serve := flag.String("serve", "", "internal: run istiod-lite in this process with this kubeconfig (child mode)")
	flag.Parse()
	if *serve != "" {
		if err := serveIstiod(*serve, flag.Args()); err != nil {
			fmt.Fprintln(os.Stderr, "bench-xds serve:", err)
			os.Exit(1)
		}
		return
	}
	if p.clients > p.nodes {
		fmt.Fprintln(os.Stderr, "bench-xds: -clients must not exceed -nodes (one ztunnel per node)")
		os.Exit(2)
	}
	// SIGTERM (make's timeout) or ^C cancel the run so envtest and
	// istiod-lite are still stopped.
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, *timeout)
	defer cancel()
	ctrllog.SetLogger(logr.Discard())
	fig, err := run(ctx, p)
	benchkit.Save("bench-xds", *out, fig, err)
	fmt.Printf("bench-xds: %.0f pods, %.0f services, %.0f clients: full push p99 %.2f s (max %.2f s, all clients %.2f s, one client alone %.2f s; tls copy baseline %.2f s, ratio %.1f); "+
		"one change p99 %.1f ms to all clients (debounce %.0f ms; bare watch p99 %.1f ms); sent %.1f MB; istiod-lite cpu %.1f s, peak rss %.0f MB -> %s\n",
		fig["pods"], fig["services"], fig["clients"], fig["full_push_s"], fig["full_push_max_s"], fig["full_push_all_s"], fig["full_push_single_s"], fig["baseline_tls_copy_s"], fig["full_push_ratio_vs_tls_copy"],
		fig["change_p99_ms"], fig["debounce_ms"], fig["baseline_watch_p99_ms"], fig["bytes_sent_mb"], fig["cpu_s"], fig["rss_mb"], *out)
}

func run(ctx context.Context, p params) (map[string]float64, error) {
	fig := map[string]float64{
		"pods": float64(p.pods), "services": float64(p.services), "namespaces": float64(p.namespaces),
		"nodes": float64(p.nodes), "clients": float64(p.clients), "debounce_ms": float64(p.debounce.Milliseconds()),
	}
	apiserver, etcd, err := kubetest.Binaries()
	if err != nil {
		return nil, err
	}
	os.Setenv("TEST_ASSET_KUBE_APISERVER", apiserver)
	os.Setenv("TEST_ASSET_ETCD", etcd)
	env := &envtest.Environment{}
	// 1,000 ClusterIPs do not fit envtest's default /24.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	// etcd on tmpfs: 20,000 writes in the set-up would otherwise wait on
	// fsync of a disk shared with other work (and time out under load).
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dataDir, err := os.MkdirTemp("/dev/shm", "bench-xds-etcd-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dataDir)
		env.ControlPlane.Etcd = &envtest.Etcd{DataDir: dataDir}
	}
	t0 := time.Now()
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start envtest: %w", err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS = -1 // no client-side throttling while creating objects
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cs, err := kubernetes.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		return nil, err
	}
	zt, err := populate(ctx, cs, p)
	if err != nil {
		return nil, err
	}
	fig["setup_s"] = time.Since(t0).Seconds()
	tokens := make([]string, p.clients)
	{
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(16)
		for i := range p.clients {
			g.Go(func() (err error) {
				tokens[i], err = benchkit.PodToken(gctx, cs, zt[i], ca.Audience)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
	}

	dir, err := os.MkdirTemp("", "bench-xds-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := benchkit.WriteKubeconfig(cfg, kubeconfig); err != nil {
		return nil, err
	}
	addrs := map[string]string{}
	for _, k := range []string{"grpc", "metrics", "debug"} {
		if addrs[k], err = freeAddr(); err != nil {
			return nil, err
		}
	}
	args := []string{"--kubeconfig", kubeconfig, "--namespace", systemNS, "--leader-elect=false", "--log-level", "warn",
		"--grpc-addr", addrs["grpc"], "--metrics-addr", addrs["metrics"], "--debug-addr", addrs["debug"],
		"--xds-debounce", p.debounce.String(), "--shutdown-grace", "2s"}
	var child *exec.Cmd
	if p.istiod == "" || p.cpuprofile != "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		child = exec.Command(self, append([]string{"-serve", kubeconfig, "--"}, args...)...)
		child.Env = append(os.Environ(), "BENCH_XDS_CPUPROFILE="+p.cpuprofile)
	} else {
		child = exec.Command(p.istiod, args...)
	}
	child.Stdout, child.Stderr = os.Stderr, os.Stderr
	startAt := time.Now()
	waited, err := benchkit.StartTied(child, syscall.SIGTERM) // never outlive the driver
	if err != nil {
		return nil, fmt.Errorf("start istiod-lite %s: %w", child.Path, err)
	}
	pid := child.Process.Pid
	exited := make(chan struct{})
	go func() { <-waited; close(exited) }()
	defer func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
	}()
	if err := waitReady(ctx, "http://"+addrs["debug"]+"/ready", exited); err != nil {
		return nil, err
	}
	fig["istiod_ready_s"] = time.Since(startAt).Seconds()
	cpuReady, err := benchkit.CPUSeconds(pid)
	if err != nil {
		return nil, err
	}
	fig["cpu_startup_s"] = cpuReady
	keys, err := ca.WaitForKeys(ctx, cs, systemNS, 200*time.Millisecond)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(keys.RootsPEM())

	// Clients: each records when its first Address response (the whole
	// state) arrived, and reports the current change target once held.
	var target atomic.Pointer[changeTarget]
	type result struct {
		full      time.Duration
		resources int
		bytes     int
	}
	results := make([]result, p.clients)
	fullDone := make(chan int, p.clients)
	var received atomic.Int64
	cctx, ccancel := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	defer func() { ccancel(); cwg.Wait() }()
	conns := make([]*grpc.ClientConn, p.clients)
	xcs := make([]*xdsclient.Client, p.clients)
	var contentErr atomic.Pointer[error] // client 0's check of names against content
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// The push starts on a quiet machine: envtest's API server and etcd go
	// on working for a while after the setup's 10,000 creates (on a real
	// cluster they have cores of their own), and istiod-lite has only just
	// become ready. Wait, at most 20 s, for 500 ms in which the two use
	// under 0.05 CPU-seconds together.
	settleStart := time.Now()
	for p.settle && time.Since(settleStart) < 20*time.Second {
		cp0 := controlPlaneCPU()
		is0, _ := benchkit.CPUSeconds(pid)
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		is1, _ := benchkit.CPUSeconds(pid)
		cp, is := controlPlaneCPU()-cp0, is1-is0
		fmt.Fprintf(os.Stderr, "bench-xds: settling before the push: API server and etcd %.2f, istiod-lite %.2f CPU-s in 0.5 s\n", cp, is)
		if cp+is < 0.05 {
			break
		}
	}
	fig["settle_s"] = time.Since(settleStart).Seconds()
	cpuBefore, err := benchkit.CPUSeconds(pid)
	if err != nil {
		return nil, err
	}
	selfBefore, _ := benchkit.CPUSeconds(os.Getpid())
	cpBefore := controlPlaneCPU()
	stopClientProfile := func() {}
	if p.clientprofile != "" {
		f, err := os.Create(p.clientprofile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		stopClientProfile = func() { pprof.StopCPUProfile(); f.Close() }
	}
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	pushStart := time.Now()
	for i := range p.clients {
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: "istiod." + systemNS + ".svc"})
		conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(bearer(tokens[i])),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
			grpc.WithInitialWindowSize(4<<20), grpc.WithInitialConnWindowSize(16<<20), grpc.WithReadBufferSize(0))
		if err != nil {
			return nil, err
		}
		conns[i] = conn
		pod := zt[i]
		start := time.Now()
		first := true
		c, err := xdsclient.New(xdsclient.Config{
			Conn: conn,
			Node: &core.Node{
				Id: "ztunnel~" + pod.Status.PodIP + "~" + pod.Name + "." + pod.Namespace + "~" + pod.Namespace + ".svc.cluster.local",
				Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
					"NAMESPACE": structpb.NewStringValue(pod.Namespace), "NODE_NAME": structpb.NewStringValue(pod.Spec.NodeName),
				}},
			},
			Subscriptions: []xdsclient.Subscription{{TypeURL: model.AuthorizationTypeURL}, {TypeURL: model.AddressTypeURL}},
			Handler: func(d xdsclient.Delta) error {
				n := 0
				for j := range d.Updated {
					n += len(d.Updated[j].Value)
				}
				received.Add(int64(n))
				if d.TypeURL != model.AddressTypeURL {
					return nil
				}
				if first {
					first = false
					results[i] = result{full: time.Since(start), resources: len(d.Updated), bytes: n}
					if i == 0 {
						// One client decodes everything, as a ztunnel
						// would, and checks each name against its content.
						if err := checkNames(d.Updated); err != nil {
							contentErr.Store(&err)
						}
					}
					fullDone <- i
					return nil
				}
				if t := target.Load(); t != nil {
					for j := range d.Updated {
						if d.Updated[j].Name == t.name {
							t.reached(i)
						}
					}
				}
				return nil
			},
			InitialBackoff: 200 * time.Millisecond,
			OnStreamError: func(err error) {
				if cctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "bench-xds: client %d: stream error: %v\n", i, err)
				}
			},
		})
		if err != nil {
			return nil, err
		}
		xcs[i] = c
		cwg.Go(func() { _ = c.Run(cctx) })
	}
	for range p.clients {
		select {
		case <-fullDone:
		case <-exited:
			return nil, errors.New("istiod-lite exited during the full push")
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the full push: %w", ctx.Err())
		}
	}
	fig["full_push_all_s"] = time.Since(pushStart).Seconds()
	stopClientProfile()
	cpuAfter, err := benchkit.CPUSeconds(pid)
	if err != nil {
		return nil, err
	}
	fig["cpu_full_push_s"] = cpuAfter - cpuBefore
	// The clients run in this process: their decoding competes with
	// istiod-lite for the same cores.
	if selfAfter, err := benchkit.CPUSeconds(os.Getpid()); err == nil {
		fig["clients_cpu_full_push_s"] = selfAfter - selfBefore
		var ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		// Page faults: memory the clients touched for the first time
		// (all 100 decode their full push at once).
		fig["clients_page_faults_full_push"] = float64(ru1.Minflt - ru0.Minflt)
	}
	// envtest's kube-apiserver and etcd share the cores too (a TokenReview
	// per stream).
	fig["apiserver_cpu_full_push_s"] = controlPlaneCPU() - cpBefore
	var fulls []float64
	minRes, perClientBytes := results[0].resources, 0
	for _, r := range results {
		fulls = append(fulls, r.full.Seconds())
		minRes = min(minRes, r.resources)
		perClientBytes = max(perClientBytes, r.bytes)
	}
	if want := p.pods + p.services; minRes < want {
		return nil, fmt.Errorf("a client's first response held %d Addresses, want at least %d", minRes, want)
	}
	fig["full_push_s"] = benchkit.Percentile(fulls, 0.99)
	fig["full_push_max_s"] = slices.Max(fulls)
	fig["full_push_p50_s"] = benchkit.Percentile(fulls, 0.50)
	fig["addresses"] = float64(minRes)
	fig["full_push_mb_per_client"] = float64(perClientBytes) / 1e6
	// Every client holds the same names at the same versions, the names
	// match the resources' content (client 0 decoded them), and every
	// pod of the cluster is there.
	if err := contentErr.Load(); err != nil {
		return nil, fmt.Errorf("client 0's full push: %w", *err)
	}
	if err := sameState(ctx, xcs, p); err != nil {
		return nil, err
	}

	// Changes, one at a time, each timed until every client holds it; a
	// bare pod watch measures the same change reaching a watcher.
	watchLat, err := startWatch(ctx, cs, "ns-0")
	if err != nil {
		return nil, err
	}
	cpuBefore, _ = benchkit.CPUSeconds(pid)
	var lat []float64
	for j := range p.changes {
		// Each change is a lone one: istiod-lite has been quiet for more
		// than its debounce period (a change right after a push is held
		// for the quiet period; that is the burst case, not this one).
		select {
		case <-time.After(p.debounce + 50*time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		ns, name := "ns-0", fmt.Sprintf("pod-%d", j*p.namespaces) // pods of ns-0
		t := &changeTarget{name: model.PodUID("Kubernetes", ns, name), want: p.clients, done: make(chan struct{}), seen: map[int]bool{}}
		target.Store(t)
		patch := fmt.Sprintf(`{"metadata":{"labels":{"service.istio.io/canonical-revision":"r%d"}}}`, j)
		start := time.Now()
		watchLat.expect(name, start)
		if _, err := cs.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return nil, fmt.Errorf("change %d: patch pod %s/%s: %w", j, ns, name, err)
		}
		select {
		case <-t.done:
		case <-time.After(15 * time.Second):
			return nil, fmt.Errorf("change %d (pod %s/%s) reached %d of %d clients in 15s", j, ns, name, t.count(), p.clients)
		case <-exited:
			return nil, errors.New("istiod-lite exited during the changes")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	cpuAfter, _ = benchkit.CPUSeconds(pid)
	fig["cpu_changes_s"] = cpuAfter - cpuBefore

	// One more client alone (ztunnel 0 reconnecting without state): the
	// full push without 99 others competing for the same two cores.
	single, err := singleFullPush(ctx, addrs["grpc"], roots, tokens[0], zt[0])
	if err != nil {
		return nil, fmt.Errorf("single client full push: %w", err)
	}
	fig["full_push_single_s"] = single.Seconds()
	fig["changes"] = float64(len(lat))
	fig["change_p50_ms"] = benchkit.Percentile(lat, 0.50)
	fig["change_p99_ms"] = benchkit.Percentile(lat, 0.99)
	fig["change_max_ms"] = slices.Max(lat)
	wl := watchLat.latencies()
	fig["baseline_watch_p99_ms"] = benchkit.Percentile(wl, 0.99)
	fig["baseline_watch_p50_ms"] = benchkit.Percentile(wl, 0.50)

	if fig["cpu_s"], err = benchkit.CPUSeconds(pid); err != nil {
		return nil, err
	}
	if fig["rss_mb"], err = benchkit.PeakRSSMB(pid); err != nil {
		return nil, err
	}
	if cur, err := benchkit.CurrentRSSMB(pid); err == nil {
		fig["rss_end_mb"] = cur
	}
	// Who checked the clients' tokens: istiod-lite itself, or TokenReview.
	local, next := `istiod_token_checks_total{by="local"`, `istiod_token_checks_total{by="next"`
	counters, err := scrapeCounters(ctx, "http://"+addrs["metrics"]+"/metrics", "pilot_xds_sent_bytes_total", local, next)
	if err != nil {
		return nil, err
	}
	sent, ok := counters["pilot_xds_sent_bytes_total"]
	if !ok {
		return nil, errors.New("no pilot_xds_sent_bytes_total on istiod-lite's /metrics")
	}
	fig["bytes_sent_mb"] = sent / 1e6
	for name, key := range map[string]string{local: "token_checks_local", next: "token_checks_next"} {
		if n, ok := counters[name]; ok {
			fig[key] = n
		}
	}
	fig["bytes_received_mb"] = float64(received.Load()) / 1e6

	// Baseline for the full push: the same bytes per client, to the same
	// number of clients at once, over plain TLS on loopback.
	ccancel()
	cwg.Wait()
	base, err := tlsCopy(ctx, keys, p.clients, perClientBytes)
	if err != nil {
		return nil, fmt.Errorf("tls copy baseline: %w", err)
	}
	fig["baseline_tls_copy_s"] = base.Seconds()
	if base > 0 {
		fig["full_push_ratio_vs_tls_copy"] = fig["full_push_all_s"] / base.Seconds()
	}
	if fig["baseline_watch_p99_ms"] > 0 {
		fig["change_p99_ratio_vs_watch"] = fig["change_p99_ms"] / fig["baseline_watch_p99_ms"]
	}
	return fig, nil
}

// singleFullPush connects one delta client and returns the time from its
// dial to its first Address response (the whole state).
func singleFullPush(ctx context.Context, addr string, roots *x509.CertPool, token string, pod *corev1.Pod) (time.Duration, error) {
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: "istiod." + systemNS + ".svc"})
	start := time.Now()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(bearer(token)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
		grpc.WithInitialWindowSize(4<<20), grpc.WithInitialConnWindowSize(16<<20), grpc.WithReadBufferSize(0))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	done := make(chan time.Duration, 1)
	c, err := xdsclient.New(xdsclient.Config{
		Conn:          conn,
		Node:          &core.Node{Id: "ztunnel~" + pod.Status.PodIP + "~" + pod.Name + "." + pod.Namespace + "~" + pod.Namespace + ".svc.cluster.local"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: model.AuthorizationTypeURL}, {TypeURL: model.AddressTypeURL}},
		Handler: func(d xdsclient.Delta) error {
			if d.TypeURL == model.AddressTypeURL {
				select {
				case done <- time.Since(start):
				default:
				}
			}
			return nil
		},
	})
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() { _ = c.Run(cctx) })
	select {
	case d := <-done:
		return d, nil
	case <-time.After(30 * time.Second):
		return 0, errors.New("no Address response in 30s")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// sameState checks that every client holds the same Address names at the
// same versions, and every pod of the cluster among them; retried a few
// times in case a push is in flight.
func sameState(ctx context.Context, xcs []*xdsclient.Client, p params) error {
	var err error
	for range 10 {
		if err = compareState(xcs, p); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return err
}

func compareState(xcs []*xdsclient.Client, p params) error {
	held0 := xcs[0].Versions(model.AddressTypeURL)
	for i, c := range xcs[1:] {
		if v := c.Versions(model.AddressTypeURL); !maps.Equal(v, held0) {
			return fmt.Errorf("client %d holds %d Addresses, client 0 %d; or other versions", i+1, len(v), len(held0))
		}
	}
	for i := range p.pods {
		k := i % p.services
		name := model.PodUID("Kubernetes", "ns-"+strconv.Itoa(k%p.namespaces), "pod-"+strconv.Itoa(i))
		if held0[name] == "" {
			return fmt.Errorf("no Address with a version for pod %s", name)
		}
	}
	return nil
}

// controlPlaneCPU sums the CPU-seconds of this process's children that
// are not istiod-lite: envtest's kube-apiserver and etcd.
func controlPlaneCPU() float64 {
	ents, _ := os.ReadDir("/proc")
	ppid := strconv.Itoa(os.Getpid())
	sum := 0.0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		comm := s[strings.IndexByte(s, '(')+1 : i]
		f := strings.Fields(s[i+2:])
		if len(f) < 2 || f[1] != ppid || (comm != "kube-apiserver" && comm != "etcd") {
			continue
		}
		if c, err := benchkit.CPUSeconds(pid); err == nil {
			sum += c
		}
	}
	return sum
}

// checkNames decodes every Address and checks it is named as its content
// says (model.ResourceName).
func checkNames(rs []xdsclient.Resource) error {
	for i := range rs {
		r := &rs[i]
		a := &workloadapi.Address{}
		if err := r.UnmarshalTo(a); err != nil {
			return fmt.Errorf("decode %s: %w", r.Name, err)
		}
		if got := model.ResourceName(a); got != r.Name || r.Version == "" {
			return fmt.Errorf("resource %q (version %q) holds %q", r.Name, r.Version, got)
		}
	}
	return nil
}

// changeTarget is the Address every client must receive for one change.
type changeTarget struct {
	name string
	want int
	done chan struct{}

	mu   sync.Mutex
	seen map[int]bool // client index -> received; guarded by mu
}

func (t *changeTarget) reached(client int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen[client] {
		return
	}
	t.seen[client] = true
	if len(t.seen) == t.want {
		close(t.done)
	}
}

func (t *changeTarget) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.seen)
}

// watchTimer times label changes reaching a raw pod watch.
type watchTimer struct {
	mu      sync.Mutex
	pending map[string]time.Time // pod name -> patch start; guarded by mu
	lat     []float64            // guarded by mu
}

func (w *watchTimer) expect(name string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending[name] = at
}

func (w *watchTimer) latencies() []float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.lat)
}

func startWatch(ctx context.Context, cs kubernetes.Interface, ns string) (*watchTimer, error) {
	w := &watchTimer{pending: map[string]time.Time{}}
	wi, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.Everything().String(), ResourceVersion: "0", AllowWatchBookmarks: false})
	if err != nil {
		return nil, fmt.Errorf("watch pods in %s: %w", ns, err)
	}
	go func() {
		defer wi.Stop()
		for ev := range wi.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			w.mu.Lock()
			if at, ok := w.pending[p.Name]; ok {
				delete(w.pending, p.Name)
				w.lat = append(w.lat, float64(time.Since(at).Microseconds())/1000)
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

// retry runs f until it succeeds, fails for good, or 6 attempts passed; it
// retries what a loaded apiserver or etcd answers transiently (timeouts,
// throttling, internal errors).
func retry(ctx context.Context, f func() error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil || attempt == 6 || !transient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

func transient(err error) bool {
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || strings.Contains(err.Error(), "timed out")
}

// populate creates the namespaces, nodes, Services, pods (with status) and
// one ztunnel pod per node; it returns the ztunnel pods.
func populate(ctx context.Context, cs kubernetes.Interface, p params) ([]*corev1.Pod, error) {
	create := func(n int, limit int, f func(ctx context.Context, i int) error) error {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(limit)
		for i := range n {
			g.Go(func() error { return f(gctx, i) })
		}
		return g.Wait()
	}
	nsName := func(i int) string { return "ns-" + strconv.Itoa(i) }
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", systemNS, err)
	}
	if err := create(p.namespaces, 16, func(ctx context.Context, i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName(i), Labels: map[string]string{model.LabelDataplaneMode: model.DataplaneModeAmbient}}}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create namespace %s: %w", ns.Name, err)
		}
		if _, err := cs.CoreV1().ServiceAccounts(ns.Name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create service account %s/app: %w", ns.Name, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if _, err := cs.CoreV1().ServiceAccounts(systemNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel"}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create service account ztunnel: %w", err)
	}
	if err := create(p.nodes, 16, func(ctx context.Context, i int) error {
		_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-" + strconv.Itoa(i)}}, metav1.CreateOptions{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("create nodes: %w", err)
	}
	// Service k lives in namespace k%namespaces and selects app=svc-k.
	if err := create(p.services, 32, func(ctx context.Context, k int) error {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsName(k % p.namespaces), Name: "svc-" + strconv.Itoa(k)},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "svc-" + strconv.Itoa(k)},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
			},
		}
		if err := retry(ctx, func() error {
			_, err := cs.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return err
		}); err != nil {
			return fmt.Errorf("create service %s/%s: %w", svc.Namespace, svc.Name, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	base := netip.MustParseAddr("198.18.0.0").As4()
	ipOf := func(i int) string { // 198.18.0.0/15 holds 131,072 addresses
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v += uint32(i) + 1
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
	}
	running := func(ip string) corev1.PodStatus {
		return corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	}
	mkPod := func(ctx context.Context, pod *corev1.Pod, ip string) (*corev1.Pod, error) {
		pods := cs.CoreV1().Pods(pod.Namespace)
		var created *corev1.Pod
		err := retry(ctx, func() (err error) {
			created, err = pods.Create(ctx, pod, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) { // an earlier attempt that timed out went through
				created, err = pods.Get(ctx, pod.Name, metav1.GetOptions{})
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		err = retry(ctx, func() error {
			created.Status = running(ip)
			updated, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				if cur, gerr := pods.Get(ctx, pod.Name, metav1.GetOptions{}); gerr == nil {
					created = cur
				}
				return apierrors.NewTimeoutError("conflict; retry", 0)
			}
			if err == nil {
				created = updated
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("set status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		return created, nil
	}
	// Pod i is in namespace i%namespaces, on node i%nodes, selected by
	// Service (i%services) (whose namespace matches when namespaces divides
	// services).
	if err := create(p.pods, 32, func(ctx context.Context, i int) error {
		k := i % p.services
		_, err := mkPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsName(k % p.namespaces), Name: "pod-" + strconv.Itoa(i),
				Labels:      map[string]string{"app": "svc-" + strconv.Itoa(k), "version": "v1"},
				Annotations: map[string]string{model.AnnotationRedirection: model.RedirectionEnabled}},
			Spec: corev1.PodSpec{ServiceAccountName: "app", NodeName: "node-" + strconv.Itoa(i%p.nodes),
				AutomountServiceAccountToken: ptr.To(false),
				Containers:                   []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
		}, ipOf(i))
		return err
	}); err != nil {
		return nil, err
	}
	zt := make([]*corev1.Pod, p.nodes)
	if err := create(p.nodes, 16, func(ctx context.Context, i int) (err error) {
		zt[i], err = mkPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: systemNS, Name: "ztunnel-" + strconv.Itoa(i), Labels: map[string]string{"app": "ztunnel"}},
			Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: "node-" + strconv.Itoa(i),
				AutomountServiceAccountToken: ptr.To(false),
				Containers:                   []corev1.Container{{Name: "ztunnel", Image: "example.invalid/ztunnel"}}},
		}, ipOf(p.pods+i))
		return err
	}); err != nil {
		return nil, err
	}
	return zt, nil
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls istiod-lite's /ready until it answers 200.
func waitReady(ctx context.Context, url string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("istiod-lite exited before it was ready")
		case <-ctx.Done():
			return fmt.Errorf("istiod-lite %s not ready: %w", url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// scrapeCounters reads a Prometheus text endpoint once and sums, for each
// of names, every series of that counter; a name with a label
// ("x{by=\"local\"") sums the series it starts. Names not found are left
// out of the map.
func scrapeCounters(ctx context.Context, url string, names ...string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	sums := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range names {
			if !strings.HasPrefix(line, name) || (!strings.Contains(name, "{") && len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
				continue
			}
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				return nil, fmt.Errorf("parse %q: %w", line, err)
			}
			sums[name] += v
		}
	}
	return sums, sc.Err()
}

// tlsCopy serves n bytes to each of clients concurrent TLS connections on
// loopback (with a certificate from the mesh CA's keys, as on 15012) and returns the time until every client has read them all.
func tlsCopy(ctx context.Context, keys *ca.Keys, clients, n int) (time.Duration, error) {
	authority, err := ca.New(keys, ca.Options{})
	if err != nil {
		return 0, err
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", authority.ServerTLSConfig("baseline.invalid"))
	if err != nil {
		return 0, err
	}
	defer lis.Close()
	payload := make([]byte, n)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write(payload)
			}()
		}
	}()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(authority.RootsPEM())
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range clients {
		g.Go(func() error {
			d := tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "baseline.invalid", MinVersion: tls.VersionTLS12}}
			c, err := d.DialContext(gctx, "tcp", lis.Addr().String())
			if err != nil {
				return err
			}
			defer c.Close()
			got, err := io.Copy(io.Discard, c)
			if err != nil {
				return err
			}
			if got != int64(n) {
				return fmt.Errorf("read %d bytes, want %d", got, n)
			}
			return nil
		})
	}
	err = g.Wait()
	return time.Since(start), err
}

// serveIstiod is the child used for profiling: istiod-lite's Run, as
// cmd/istiod-lite calls it, with a CPU profile when BENCH_XDS_CPUPROFILE is set.
func serveIstiod(kubeconfig string, args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var cfg istiod.Config
	fs := flag.NewFlagSet("istiod-lite", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProfile, err := benchkit.CPUProfile("BENCH_XDS_CPUPROFILE")
	if err != nil {
		return err
	}
	defer stopProfile()
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zapcore.WarnLevel)
	log, err := zc.Build()
	if err != nil {
		return err
	}
	return istiod.Run(ctx, cfg, restCfg, log)
}
