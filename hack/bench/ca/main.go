// Command ca is the driver of `make bench-ca`: it starts envtest (a real
// kube-apiserver and etcd on loopback), runs the mesh CA in a child process
// the way istiod-lite does (keys from the istio-ca-secret Secret, TokenReview
// authentication, pod lookups from an informer cache, gRPC over TLS), and
// drives CreateCertificate from 50 concurrent callers that impersonate pods
// of their node like ztunnel does. It writes one flat JSON object
// (certs_per_s, ca_p99_ms, cpu_s, rss_mb, ...) and prints a one-line summary.
// As a baseline from the same run it measures bare TokenReview calls with the
// same concurrency, the apiserver round trip every request includes.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/certmanager"
)

const (
	systemNS = "istio-system"
	appNS    = "bench"
	node     = "node-a"
)

func main() {
	out := flag.String("out", "_output/bench/ca.json", "where to write the JSON figures")
	callers := flag.Int("callers", 50, "concurrent CreateCertificate callers")
	duration := flag.Duration("duration", 20*time.Second, "measured load time")
	baseline := flag.Duration("baseline", 5*time.Second, "measured TokenReview baseline time")
	timeout := flag.Duration("timeout", 110*time.Second, "bound on the whole run")
	serve := flag.String("serve", "", "internal: run the CA with this kubeconfig (child mode)")
	flag.Parse()
	if *serve != "" {
		if err := serveCA(*serve); err != nil {
			fmt.Fprintln(os.Stderr, "bench-ca serve:", err)
			os.Exit(1)
		}
		return
	}
	// SIGTERM (make's timeout) or ^C cancel the run so envtest and the CA
	// process are still stopped.
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, *timeout)
	defer cancel()
	fig, err := run(ctx, *callers, *duration, *baseline)
	benchkit.Save("bench-ca", *out, fig, err)
	fmt.Printf("bench-ca: %.0f certs/s, p50 %.1f ms, p99 %.1f ms with %.0f callers (%.0f errors); CA process cpu %.1f s (%.2f ms/cert), peak rss %.0f MB; every request reviewed: %.0f certs/s p99 %.1f ms; bare TokenReview %.0f/s p99 %.1f ms -> %s\n",
		fig["certs_per_s"], fig["ca_p50_ms"], fig["ca_p99_ms"], fig["callers"], fig["errors"], fig["cpu_s"], fig["cpu_ms_per_cert"], fig["rss_mb"],
		fig["uncached_certs_per_s"], fig["uncached_ca_p99_ms"], fig["tokenreview_per_s"], fig["tokenreview_p99_ms"], *out)
}

func run(ctx context.Context, callers int, duration, baseline time.Duration) (map[string]float64, error) {
	apiserver, etcd, err := kubetest.Binaries()
	if err != nil {
		return nil, err
	}
	os.Setenv("TEST_ASSET_KUBE_APISERVER", apiserver)
	os.Setenv("TEST_ASSET_ETCD", etcd)
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start envtest: %w", err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS = -1 // no client-side throttling: the baseline measures the apiserver
	cs, err := kubernetes.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		return nil, err
	}
	ids, ztPod, err := setup(ctx, cs, callers)
	if err != nil {
		return nil, err
	}
	token, err := benchkit.PodToken(ctx, cs, ztPod, ca.Audience)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "bench-ca-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := benchkit.WriteKubeconfig(cfg, kubeconfig); err != nil {
		return nil, err
	}

	// The CA runs in its own process so its CPU and RSS are its own.
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	child := exec.Command(self, "-serve", kubeconfig)
	child.Stderr = os.Stderr
	stdout, err := child.StdoutPipe()
	if err != nil {
		return nil, err
	}
	exited, err := benchkit.StartTied(child, syscall.SIGTERM) // never outlive the driver
	if err != nil {
		return nil, fmt.Errorf("start ca process: %w", err)
	}
	pid := child.Process.Pid
	defer func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		<-exited
	}()
	addrCh := make(chan [2]string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "ADDR" {
				addrCh <- [2]string{f[1], f[2]}
			}
		}
	}()
	addrs := map[string]string{}
	for len(addrs) < 2 {
		select {
		case a := <-addrCh:
			addrs[a[0]] = a[1]
		case <-ctx.Done():
			return nil, fmt.Errorf("ca process did not start: %w", ctx.Err())
		}
	}
	keys, err := ca.LoadKeys(ctx, cs, systemNS)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(keys.RootsPEM())
	clients := map[string]pb.IstioCertificateServiceClient{}
	for mode, addr := range addrs {
		conn, err := certmanager.DialCA(addr, roots, "istiod."+systemNS+".svc")
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients[mode] = pb.NewIstioCertificateServiceClient(conn)
	}

	csrs := make([]string, len(ids))
	for i, id := range ids {
		if csrs[i], err = newCSR(id); err != nil {
			return nil, err
		}
	}
	caller := func(client pb.IstioCertificateServiceClient) func(context.Context, int) error {
		return func(ctx context.Context, i int) error {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			_, err := client.CreateCertificate(ctx, &pb.IstioCertificateRequest{
				Csr: csrs[i%len(csrs)], ValidityDuration: 86400,
				Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{ca.ImpersonatedIdentityKey: structpb.NewStringValue(ids[i%len(ids)])}},
			})
			return err
		}
	}
	// Warm up: informer synced, connections open, one success per identity.
	for _, client := range clients {
		for i := range ids {
			if err := caller(client)(ctx, i); err != nil {
				return nil, fmt.Errorf("warm-up call %d: %w", i, err)
			}
		}
	}

	fig := map[string]float64{"callers": float64(callers)}
	// Baseline: bare TokenReview with the same concurrency and token.
	trLat, trErr := load(ctx, callers, baseline, func(ctx context.Context, _ int) error {
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{ca.Audience}}}, metav1.CreateOptions{})
		if err == nil && !tr.Status.Authenticated {
			err = errors.New(tr.Status.Error)
		}
		return err
	})
	if trErr > 0 {
		return nil, fmt.Errorf("%d TokenReview baseline calls failed", trErr)
	}
	fig["tokenreview_per_s"] = float64(len(trLat)) / baseline.Seconds()
	fig["tokenreview_p99_ms"] = benchkit.Percentile(trLat, 0.99)

	measure := func(client pb.IstioCertificateServiceClient, d time.Duration) (lat []float64, errs int, cpu float64, err error) {
		cpu0, err := benchkit.CPUSeconds(pid)
		if err != nil {
			return nil, 0, 0, err
		}
		lat, errs = load(ctx, callers, d, caller(client))
		cpu1, err := benchkit.CPUSeconds(pid)
		return lat, errs, cpu1 - cpu0, err
	}
	ulat, uerrs, ucpu, err := measure(clients["uncached"], duration/2)
	if err != nil {
		return nil, err
	}
	lat, errs, cpu, err := measure(clients["cached"], duration)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("run interrupted before the measurement ended: %w", err)
	}
	rss, err := benchkit.PeakRSSMB(pid)
	if err != nil {
		return nil, err
	}
	fig["certs_per_s"] = float64(len(lat)) / duration.Seconds()
	fig["ca_p50_ms"] = benchkit.Percentile(lat, 0.50)
	fig["ca_p99_ms"] = benchkit.Percentile(lat, 0.99)
	fig["errors"] = float64(errs + uerrs)
	fig["cpu_s"] = cpu
	fig["rss_mb"] = rss
	fig["duration_s"] = duration.Seconds()
	if len(lat) > 0 {
		fig["cpu_ms_per_cert"] = 1000 * cpu / float64(len(lat))
	}
	fig["uncached_certs_per_s"] = float64(len(ulat)) / (duration / 2).Seconds()
	fig["uncached_ca_p99_ms"] = benchkit.Percentile(ulat, 0.99)
	fig["uncached_cpu_s"] = ucpu
	if len(ulat) > 0 {
		fig["uncached_cpu_ms_per_cert"] = 1000 * ucpu / float64(len(ulat))
	}
	if fig["tokenreview_per_s"] > 0 {
		fig["throughput_ratio_vs_tokenreview"] = fig["certs_per_s"] / fig["tokenreview_per_s"]
		fig["uncached_throughput_ratio_vs_tokenreview"] = fig["uncached_certs_per_s"] / fig["tokenreview_per_s"]
	}
	errs += uerrs
	if errs > 0 {
		return fig, fmt.Errorf("%d CreateCertificate calls failed", errs)
	}
	return fig, nil
}

// load runs fn from n goroutines for d and returns the latencies (ms) of the
// calls that completed inside the window and the error count. Calls get ctx
// (not the window) so none is cut short; one still running when the window
// closes is not counted.
func load(ctx context.Context, n int, d time.Duration, fn func(context.Context, int) error) ([]float64, int) {
	var (
		firstErr sync.Once
		mu       sync.Mutex
		lat      []float64
		errs     int
		wg       sync.WaitGroup
	)
	end := time.Now().Add(d)
	for w := range n {
		wg.Go(func() {
			var mine []float64
			bad := 0
			for i := w; time.Now().Before(end) && ctx.Err() == nil; i += n {
				start := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := fn(cctx, i)
				cancel()
				done := time.Now()
				if done.After(end) {
					break
				}
				if err != nil {
					bad++
					firstErr.Do(func() { fmt.Fprintln(os.Stderr, "bench-ca: first failed call:", err) })
					continue
				}
				mine = append(mine, float64(done.Sub(start).Microseconds())/1000)
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	return lat, errs
}

// setup creates the node, ztunnel's pod and one service account with a pod
// on the node per caller; it returns the identities and ztunnel's pod.
func setup(ctx context.Context, cs kubernetes.Interface, n int) ([]string, *corev1.Pod, error) {
	for _, ns := range []string{systemNS, appNS} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return nil, nil, fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("create node: %w", err)
	}
	mk := func(ns, name string) (*corev1.Pod, error) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create service account %s/%s: %w", ns, name, err)
		}
		p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-0"},
			Spec:       corev1.PodSpec{ServiceAccountName: name, NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "example.invalid/app"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create pod %s/%s: %w", ns, name, err)
		}
		return p, nil
	}
	zt, err := mk(systemNS, "ztunnel")
	if err != nil {
		return nil, nil, err
	}
	var ids []string
	for i := range n {
		sa := "app" + strconv.Itoa(i)
		if _, err := mk(appNS, sa); err != nil {
			return nil, nil, err
		}
		ids = append(ids, "spiffe://cluster.local/ns/"+appNS+"/sa/"+sa)
	}
	return ids, zt, nil
}

func newCSR(id string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(id)
	if err != nil {
		return "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// serveCA is the child: the CA as istiod-lite runs it.
func serveCA(kubeconfig string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctrllog.SetLogger(logr.Discard())
	stopProfile, err := benchkit.CPUProfile("BENCH_CA_CPUPROFILE")
	if err != nil {
		return err
	}
	defer stopProfile()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS = -1 // no client-side throttling of TokenReview in this measurement
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	pods, err := cache.New(cfg, cache.Options{})
	if err != nil {
		return err
	}
	if err := ca.IndexPods(ctx, pods); err != nil {
		return err
	}
	go func() { _ = pods.Start(ctx) }()
	if !pods.WaitForCacheSync(ctx) {
		return errors.New("pod cache did not sync")
	}
	keys, err := ca.EnsureSelfSignedRoot(ctx, cs, systemNS, ca.RootOptions{})
	if err != nil {
		return err
	}
	authority, err := ca.New(keys, ca.Options{})
	if err != nil {
		return err
	}
	// Issuance logs are encoded as in production, then discarded.
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	review := &ca.TokenReviewAuthenticator{Client: cs}
	var wg sync.WaitGroup
	// Two listeners: the production setup (TokenReview results cached 10 s)
	// and every request reviewed, for comparison.
	for _, mode := range []struct {
		name  string
		authn ca.Authenticator
	}{{"cached", &ca.CachingAuthenticator{Next: review}}, {"uncached", review}} {
		srv, err := ca.NewServer(authority, ca.ServerOptions{
			Authenticator: mode.authn, Pods: ca.ClientPods{Reader: pods, Indexed: true}, SystemNamespace: systemNS, Logger: log,
		})
		if err != nil {
			return err
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		g := grpc.NewServer(grpc.Creds(credentials.NewTLS(authority.ServerTLSConfig("istiod." + systemNS + ".svc"))))
		srv.Register(g)
		wg.Go(func() { <-ctx.Done(); g.Stop() })
		wg.Go(func() { _ = g.Serve(lis) })
		fmt.Printf("ADDR %s %s\n", mode.name, lis.Addr())
	}
	wg.Wait()
	return nil
}
