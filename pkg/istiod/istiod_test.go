package istiod

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"istio.io/istio/pkg/workloadapi"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/pkg/certmanager"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

// freeAddrs returns n distinct free loopback addresses. The listeners stay
// open until all n are picked: closed one by one, the kernel could hand
// the same port out twice (it did: metrics and debug on one port).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}

func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type harness struct {
	cs    kubernetes.Interface
	dyn   dynamic.Interface
	cfg   Config
	roots *x509.CertPool
}

func (h *harness) pod(t *testing.T, ns, name, sa, node, ip string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name},
			// What the node agent sets once the pod's traffic is captured.
			Annotations: map[string]string{model.AnnotationRedirection: model.RedirectionEnabled}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa, NodeName: node,
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
	if _, err := h.cs.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	p, err := h.cs.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	p, err = h.cs.CoreV1().Pods(ns).UpdateStatus(t.Context(), p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set status of pod %s/%s: %v", ns, name, err)
	}
	return p
}

func (h *harness) token(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	tr, err := h.cs.CoreV1().ServiceAccounts(p.Namespace).CreateToken(t.Context(), p.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:         []string{"istio-ca"},
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request for %s/%s: %v", p.Namespace, p.Name, err)
	}
	return tr.Status.Token
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// TestIstiodLite runs istiod-lite against a real kube-apiserver and checks
// the whole control plane from a ztunnel's point of view: the root is
// published, 15012 serves TLS with a certificate for istiod.<ns>.svc, a
// ztunnel's pod-bound token opens an xDS stream that receives the workload of
// a new ambient pod and its removal when the pod goes, and the same token
// gets a certificate for a pod on its node through CreateCertificate.
// startIstiod runs istiod-lite on a fresh envtest apiserver with namespaces
// istio-system and demo (ambient), waits until it is ready and returns the
// harness with the published root.
func startIstiod(t *testing.T) *harness {
	t.Helper()
	env := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{"../../manifests/crds"}})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{cs: cs, dyn: dyn}
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{model.LabelDataplaneMode: model.DataplaneModeAmbient}}},
	} {
		if _, err := cs.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var fs = newFlagSet(t)
	cfg := Config{}
	cfg.RegisterFlags(fs)
	addrs := freeAddrs(t, 3)
	cfg.GRPCAddr, cfg.MetricsAddr, cfg.DebugAddr = addrs[0], addrs[1], addrs[2]
	cfg.XDSDebounce = 20 * time.Millisecond
	h.cfg = cfg

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, env.Config, zaptest.NewLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v on shutdown, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of cancellation")
		}
	})

	waitFor(t, 60*time.Second, "istiod-lite /ready", func() error {
		resp, err := http.Get("http://" + cfg.DebugAddr + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})

	// The root is published in every namespace.
	var rootPEM string
	waitFor(t, 30*time.Second, "ConfigMap istio-ca-root-cert in demo", func() error {
		cm, err := cs.CoreV1().ConfigMaps("demo").Get(t.Context(), "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			return err
		}
		rootPEM = cm.Data["root-cert.pem"]
		if !strings.Contains(rootPEM, "BEGIN CERTIFICATE") {
			return errors.New("no certificate in root-cert.pem")
		}
		return nil
	})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(rootPEM))

	h.roots = roots
	return h
}

// dial opens a gRPC connection to istiod-lite's 15012 with a bearer token.
func (h *harness) dial(t *testing.T, tok string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(h.cfg.GRPCAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: h.roots, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS12})),
		grpc.WithPerRPCCredentials(bearer(tok)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestIstiodLite(t *testing.T) {
	h := startIstiod(t)
	cs, cfg, roots := h.cs, h.cfg, h.roots
	zt := h.pod(t, "istio-system", "ztunnel-a", "ztunnel", "node-a", "198.18.16.10")
	tok := h.token(t, zt)
	conn := h.dial(t, tok)

	// xDS: the ztunnel sees workloads come and go.
	var mu sync.Mutex
	held := map[string]*workloadapi.Address{}
	client, err := xdsclient.New(xdsclient.Config{
		Conn:          conn,
		Node:          &core.Node{Id: "ztunnel~198.18.16.10~ztunnel-a.istio-system~istio-system.svc.cluster.local"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: model.AddressTypeURL}, {TypeURL: model.AuthorizationTypeURL}},
		Handler: func(d xdsclient.Delta) error {
			if d.TypeURL != model.AddressTypeURL {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range d.Updated {
				var a workloadapi.Address
				if err := r.UnmarshalTo(&a); err != nil {
					return err
				}
				held[r.Name] = &a
			}
			for _, n := range d.Removed {
				delete(held, n)
			}
			return nil
		},
		Logger:         zaptest.NewLogger(t),
		InitialBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(t.Context())
	cdone := make(chan struct{})
	go func() { defer close(cdone); _ = client.Run(cctx) }()
	defer func() { ccancel(); <-cdone }()

	app := h.pod(t, "demo", "app", "default", "node-a", "198.18.16.11")
	findApp := func() (string, *workloadapi.Workload) {
		mu.Lock()
		defer mu.Unlock()
		for name, a := range held {
			if w := a.GetWorkload(); w != nil && w.Name == "app" && w.Namespace == "demo" {
				return name, w
			}
		}
		return "", nil
	}
	waitFor(t, 30*time.Second, "workload demo/app delivered over xDS", func() error {
		_, w := findApp()
		if w == nil {
			return errors.New("not received")
		}
		if w.ServiceAccount != "default" || w.Node != "node-a" || w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
			return fmt.Errorf("workload = sa %q node %q tunnel %v, want default, node-a, HBONE", w.ServiceAccount, w.Node, w.TunnelProtocol)
		}
		return nil
	})

	// CA: the ztunnel's token gets demo/default's certificate (pod on its node).
	ca := certmanager.NewCAClient(conn, func(context.Context) (string, error) { return tok, nil }, certmanager.CAClientOptions{Impersonate: true})
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/default")
	chain, err := ca.Fetch(t.Context(), id, csrFor(t, id), time.Hour)
	if err != nil {
		t.Fatalf("CreateCertificate for %s: %v", id, err)
	}
	if len(chain) == 0 || len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id.String() {
		t.Fatalf("issued chain leaf URIs = %v, want [%s]", chain[0].URIs, id)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("issued leaf does not verify against the published root: %v", err)
	}
	// ... and is refused an identity with no pod on its node.
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/nobody")
	if _, err := ca.Fetch(t.Context(), other, csrFor(t, other), time.Hour); err == nil {
		t.Errorf("CreateCertificate for %s (no pod on node-a) succeeded, want a refusal", other)
	}

	// The pod goes: the ztunnel is told to drop it.
	if err := cs.CoreV1().Pods("demo").Delete(t.Context(), app.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "removal of demo/app delivered over xDS", func() error {
		if name, _ := findApp(); name != "" {
			return fmt.Errorf("%s still held", name)
		}
		return nil
	})

	// The debug endpoint lists the connected ztunnel.
	resp, err := http.Get("http://" + cfg.DebugAddr + "/debug/connections")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = fmt.Fprint(&b, readAll(t, resp))
	if !strings.Contains(b.String(), "ztunnel-a") {
		t.Errorf("/debug/connections does not list ztunnel-a:\n%s", b.String())
	}
}

func csrFor(t *testing.T, id spiffeid.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id.String())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// addressLog records every delta a client applies, in order.
type addressLog struct {
	mu     sync.Mutex
	held   map[string]*workloadapi.Address
	events []string // "+name" or "-name", in arrival order
	nack   string   // workload name to refuse (NACK)
}

func (l *addressLog) handle(d xdsclient.Delta) error {
	if d.TypeURL != model.AddressTypeURL {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range d.Updated {
		var a workloadapi.Address
		if err := r.UnmarshalTo(&a); err != nil {
			return err
		}
		if w := a.GetWorkload(); w != nil && l.nack != "" && w.Name == l.nack {
			return fmt.Errorf("workload %s: refused by the test", w.Name)
		}
	}
	for _, r := range d.Updated {
		var a workloadapi.Address
		_ = r.UnmarshalTo(&a)
		l.held[r.Name] = &a
		l.events = append(l.events, "+"+r.Name)
	}
	for _, n := range d.Removed {
		delete(l.held, n)
		l.events = append(l.events, "-"+n)
	}
	return nil
}

func (l *addressLog) workload(name string) (string, *workloadapi.Workload) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, a := range l.held {
		if w := a.GetWorkload(); w != nil && w.Name == name {
			return n, w
		}
	}
	return "", nil
}

func (l *addressLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

func (l *addressLog) since(i int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events[i:]...)
}

// TestXDSStreams covers the stream's life on a real apiserver: a bad token
// is refused, a pod's label change arrives as an update, a reconnect with
// initial_resource_versions is sent only what changed while it was away, and
// a NACK is counted in istiod-lite's metrics.
func TestXDSStreams(t *testing.T) {
	h := startIstiod(t)
	zt := h.pod(t, "istio-system", "ztunnel-b", "ztunnel", "node-b", "198.18.16.20")
	node := &core.Node{Id: "ztunnel~198.18.16.20~ztunnel-b.istio-system~istio-system.svc.cluster.local"}
	subs := []xdsclient.Subscription{{TypeURL: model.AddressTypeURL}}

	// A bad token: the stream is refused as unauthenticated.
	errc := make(chan error, 1)
	bctx, bcancel := context.WithCancel(t.Context())
	badCfg := xdsclient.Config{Conn: h.dial(t, "not-a-token"), Node: node, Subscriptions: subs,
		Handler: func(xdsclient.Delta) error { return nil }, InitialBackoff: time.Hour,
		OnStreamError: func(err error) {
			select {
			case errc <- err:
			default:
			}
			bcancel()
		}}
	bad, err := xdsclient.New(badCfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = bad.Run(bctx) }()
	select {
	case err := <-errc:
		if status.Code(errors.Unwrap(err)) != codes.Unauthenticated && status.Code(err) != codes.Unauthenticated && !strings.Contains(err.Error(), "Unauthenticated") {
			t.Errorf("stream with a bad token ended with %v, want Unauthenticated", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stream with a bad token was not refused within 30s")
	}

	log := &addressLog{held: map[string]*workloadapi.Address{}}
	client, err := xdsclient.New(xdsclient.Config{Conn: h.dial(t, h.token(t, zt)), Node: node, Subscriptions: subs,
		Handler: log.handle, InitialBackoff: 50 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); _ = client.Run(ctx) }()
		return func() { cancel(); <-done }
	}
	stop := run()

	web := h.pod(t, "demo", "web", "default", "node-b", "198.18.16.21")
	waitFor(t, 30*time.Second, "workload demo/web", func() error {
		if _, w := log.workload("web"); w == nil {
			return errors.New("not received")
		}
		return nil
	})

	// Update: relabelling the pod changes its canonical revision.
	web.Labels["version"] = "v2"
	if _, err := h.cs.CoreV1().Pods("demo").Update(t.Context(), web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "update of demo/web with revision v2", func() error {
		if _, w := log.workload("web"); w == nil || w.CanonicalRevision != "v2" {
			return fmt.Errorf("workload = %v", w)
		}
		return nil
	})

	// Reconnect: while the client is away one pod arrives; on reconnect with
	// initial_resource_versions only that pod is sent, nothing it held.
	stop()
	h.pod(t, "demo", "late", "default", "node-b", "198.18.16.22")
	m := log.mark()
	stop = run()
	defer func() { stop() }()
	waitFor(t, 30*time.Second, "workload demo/late after reconnect", func() error {
		if _, w := log.workload("late"); w == nil {
			return errors.New("not received")
		}
		return nil
	})
	lateName, _ := log.workload("late")
	for _, e := range log.since(m) {
		if e != "+"+lateName {
			t.Errorf("after reconnect the client received %s; want only +%s (resources it held must not be resent)", e, lateName)
		}
	}

	// NACK: the client refuses a workload; istiod-lite counts the rejection.
	log.mu.Lock()
	log.nack = "refused"
	log.mu.Unlock()
	h.pod(t, "demo", "refused", "default", "node-b", "198.18.16.23")
	waitFor(t, 30*time.Second, "NACK counted in pilot_total_xds_rejects", func() error {
		body, err := h.metrics(t)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "pilot_total_xds_rejects") && !strings.HasSuffix(line, " 0") {
				return nil
			}
		}
		return errors.New("no non-zero pilot_total_xds_rejects sample on /metrics")
	})
	if n, _ := log.workload("refused"); n != "" {
		t.Errorf("client holds %s although it NACKed it", n)
	}

	// The clients' pod-bound tokens were checked by istiod-lite itself
	// (the API server's keys and its caches); only the bad token went to
	// TokenReview.
	body, err := h.metrics(t)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, `istiod_token_checks_total{by="next"} 1`) || strings.Contains(body, `istiod_token_checks_total{by="local"} 0`) ||
		!strings.Contains(body, `istiod_token_checks_total{by="local"}`) {
		t.Errorf("token checks on /metrics: want the good ones local, the bad one by TokenReview:\n%s", grepLines(body, "istiod_token_checks_total"))
	}
}

// metrics returns istiod-lite's /metrics page.
func (h *harness) metrics(t *testing.T) (string, error) {
	resp, err := http.Get("http://" + h.cfg.MetricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	return readAll(t, resp), nil
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestBadPolicyReported: an AuthorizationPolicy ztunnel cannot fully enforce
// (an L7 path on a ztunnel-only path) gets a Warning Event naming the field,
// istiod-lite keeps running, and pushes for other resources go on.
func TestBadPolicyReported(t *testing.T) {
	h := startIstiod(t)
	zt := h.pod(t, "istio-system", "ztunnel-c", "ztunnel", "node-c", "198.18.16.30")
	log := &addressLog{held: map[string]*workloadapi.Address{}}
	client, err := xdsclient.New(xdsclient.Config{Conn: h.dial(t, h.token(t, zt)),
		Node:          &core.Node{Id: "ztunnel~198.18.16.30~ztunnel-c.istio-system~istio-system.svc.cluster.local"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: model.AddressTypeURL}},
		Handler:       log.handle, InitialBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(ctx) }()
	defer func() { cancel(); <-done }()

	ap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "l7-on-ztunnel", "namespace": "demo"},
		"spec": map[string]any{"action": "ALLOW", "rules": []any{map[string]any{
			"to": []any{map[string]any{"operation": map[string]any{"paths": []any{"/admin"}}}},
		}}},
	}}
	gvr := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	if _, err := h.dyn.Resource(gvr).Namespace("demo").Create(t.Context(), ap, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create AuthorizationPolicy: %v", err)
	}
	waitFor(t, 30*time.Second, "Warning event on the policy naming the field", func() error {
		evs, err := h.cs.EventsV1().Events("demo").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Kind == "AuthorizationPolicy" && e.Regarding.Name == "l7-on-ztunnel" && e.Type == corev1.EventTypeWarning &&
				strings.Contains(e.Note, "spec.rules[0].to[0].operation.paths") {
				return nil
			}
		}
		return fmt.Errorf("%d events, none a Warning on l7-on-ztunnel naming spec.rules[0].to[0].operation.paths", len(evs.Items))
	})
	// Other resources still flow.
	h.pod(t, "demo", "after-bad-policy", "default", "node-c", "198.18.16.31")
	waitFor(t, 30*time.Second, "workload pushed after the bad policy", func() error {
		if _, w := log.workload("after-bad-policy"); w == nil {
			return errors.New("not received")
		}
		return nil
	})
}
