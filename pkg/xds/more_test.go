package xds_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

func TestOnDemandByAddress(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	e.srv.Update(resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", true)))
	c := newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL, OnDemand: true})
	runClient(t, t.Context(), c)

	// ztunnel asks for "<network>/<ip>" when it meets an unknown address.
	if err := c.Subscribe(t.Context(), model.AddressTypeURL, "/10.0.0.2"); err != nil {
		t.Fatal(err)
	}
	d := rec.nextChange(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("b")}) {
		t.Fatalf("alias subscription delta %v, want [%s]", got, uid("b"))
	}
	if got := d.Updated[0].Aliases; !slices.Equal(got, []string{"/10.0.0.2"}) {
		t.Errorf("on-demand resource aliases = %v, want [/10.0.0.2]", got)
	}

	// An address nobody has is answered as removed, so the client stops waiting.
	if err := c.Subscribe(t.Context(), model.AddressTypeURL, "/10.9.9.9"); err != nil {
		t.Fatal(err)
	}
	d = rec.nextChange(t, model.AddressTypeURL)
	if len(d.Updated) != 0 || !slices.Equal(d.Removed, []string{"/10.9.9.9"}) {
		t.Fatalf("unknown address: updated %v removed %v, want removed [/10.9.9.9]", names(d), d.Removed)
	}
	e.srv.Update(resources(workload("a", "10.0.0.1", true)))
	d = rec.nextChange(t, model.AddressTypeURL)
	if !slices.Equal(d.Removed, []string{uid("b")}) || len(d.Updated) != 0 {
		t.Errorf("after b left: updated %v removed %v, want removed [%s]", names(d), d.Removed, uid("b"))
	}
}

func TestZtunnelNodeVerifier(t *testing.T) {
	verify := xds.ZtunnelNodeVerifier("istio-system/ztunnel")
	zt := xds.Identity{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-abc"}
	tests := []struct {
		name    string
		id      xds.Identity
		node    string
		wantErr bool
	}{
		{"ztunnel", zt, "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local", false},
		{"unbound token", xds.Identity{Namespace: "istio-system", ServiceAccount: "ztunnel"},
			"ztunnel~10.0.0.1~ztunnel-xyz.istio-system~istio-system.svc.cluster.local", false},
		{"other pod", zt, "ztunnel~10.0.0.1~ztunnel-xyz.istio-system~istio-system.svc.cluster.local", true},
		{"other namespace", zt, "ztunnel~10.0.0.1~ztunnel-abc.demo~demo.svc.cluster.local", true},
		{"app account", xds.Identity{Namespace: "demo", ServiceAccount: "web"}, "ztunnel~10.0.0.1~web.demo~demo.svc.cluster.local", true},
		{"sidecar id", zt, "sidecar~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local", true},
		{"garbage", zt, "hello", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := verify(tc.id, &core.Node{Id: tc.node})
			if (err != nil) != tc.wantErr {
				t.Errorf("verify() = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

// serveWith starts a server with custom options on loopback.
func serveWith(t *testing.T, opts xds.Options) (*xds.Server, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	opts.Logger = zaptest.NewLogger(t)
	opts.Registerer = prometheus.NewRegistry()
	opts.Debounce = 10 * time.Millisecond
	srv, err := xds.New(opts)
	if err != nil {
		t.Fatalf("xds.New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Start(ctx) })
	wg.Go(func() {
		if err := srv.Serve(ctx, lis); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return srv, lis.Addr().String()
}

func TestNodeVerificationRefusesImpostor(t *testing.T) {
	srv, addr := serveWith(t, xds.Options{
		Authenticator: xds.NewFakeAuthenticator(map[string]xds.Identity{goodToken: {Namespace: "demo", ServiceAccount: "web"}}),
		VerifyNode:    xds.ZtunnelNodeVerifier("istio-system/ztunnel"),
	})
	srv.Update(resources(workload("a", "10.0.0.1", true)))
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, addr, goodToken)).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: model.AddressTypeURL,
		Node:    &core.Node{Id: "ztunnel~10.0.0.9~web.demo~demo.svc.cluster.local"},
	})
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Recv() error = %v, want PermissionDenied", err)
	}
}

// selfSigned returns a server certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "istiod-lite"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

type tlsBearer string

func (b tlsBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (tlsBearer) RequireTransportSecurity() bool { return true }

func TestServeTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	srv, addr := serveWith(t, xds.Options{
		Authenticator: xds.NewFakeAuthenticator(map[string]xds.Identity{goodToken: {Namespace: "istio-system", ServiceAccount: "ztunnel"}}),
		TLS:           &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	srv.Update(resources(workload("a", "10.0.0.1", true)))
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})),
		grpc.WithPerRPCCredentials(tlsBearer(goodToken)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rec := newRecorder()
	runClient(t, t.Context(), newClient(t, conn, rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL}))
	if got := names(rec.next(t, model.AddressTypeURL)); !slices.Equal(got, []string{uid("a")}) {
		t.Errorf("over TLS got %v, want [%s]", got, uid("a"))
	}
}

// TestModelPodsComeAndGo runs the translation and the server together: a
// client sees Workloads appear, change and go as the snapshot's pods do.
func TestModelPodsComeAndGo(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL}))

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}}
	mkPod := func(name, ip string, ready bool) *corev1.Pod {
		cond := corev1.ConditionTrue
		if !ready {
			cond = corev1.ConditionFalse
		}
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", Labels: map[string]string{"app": "web"},
				Annotations: map[string]string{model.AnnotationRedirection: model.RedirectionEnabled}},
			Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "web"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}},
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.1",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	snap := model.Snapshot{Namespaces: []*corev1.Namespace{ns}, Services: []*corev1.Service{svc},
		Pods: []*corev1.Pod{mkPod("web-1", "10.1.0.1", true)}}
	e.srv.Update(model.Translate(snap))

	const svcName = "demo/web.demo.svc.cluster.local"
	pod1, pod2 := model.PodUID("Kubernetes", "demo", "web-1"), model.PodUID("Kubernetes", "demo", "web-2")
	d := rec.next(t, model.AddressTypeURL)
	if got, want := names(d), sorted([]string{svcName, pod1}); !slices.Equal(got, want) {
		t.Fatalf("initial delta %v, want %v", got, want)
	}
	for _, r := range d.Updated {
		if r.Name != pod1 {
			continue
		}
		w := decodeWorkload(t, r)
		if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE || w.GetServices()[svcName] == nil {
			t.Errorf("pod workload = %v, want HBONE and a member of %s", w, svcName)
		}
	}

	// A second pod comes up not ready: only it travels.
	snap.Pods = append(snap.Pods, mkPod("web-2", "10.1.0.2", false))
	e.srv.Update(model.Translate(snap))
	d = rec.next(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{pod2}) {
		t.Fatalf("scale-up delta %v, want [%s]", got, pod2)
	}
	if st := decodeWorkload(t, d.Updated[0]).GetStatus(); st != workloadapi.WorkloadStatus_UNHEALTHY {
		t.Errorf("new pod status %v, want UNHEALTHY", st)
	}

	// The first pod goes away.
	snap.Pods = snap.Pods[1:]
	e.srv.Update(model.Translate(snap))
	d = rec.next(t, model.AddressTypeURL)
	if len(d.Updated) != 0 || !slices.Equal(d.Removed, []string{pod1}) {
		t.Errorf("scale-down delta updated %v removed %v, want removed [%s]", names(d), d.Removed, pod1)
	}
}

// TestReconnectAfterServerRestart: a new istiod-lite with the same state
// resends nothing the client holds (versions are content hashes), only what
// changed while it was down.
func TestReconnectAfterServerRestart(t *testing.T) {
	auth := xds.NewFakeAuthenticator(map[string]xds.Identity{goodToken: {Namespace: "istio-system", ServiceAccount: "ztunnel"}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	serve := func(lis net.Listener, r model.Resources) (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		srv, err := xds.New(xds.Options{Authenticator: auth, Logger: zaptest.NewLogger(t), Debounce: time.Millisecond, ShutdownGrace: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		srv.Update(r)
		var wg sync.WaitGroup
		wg.Go(func() { _ = srv.Start(ctx) })
		wg.Go(func() { _ = srv.Serve(ctx, lis) })
		stop = func() { cancel(); wg.Wait() }
		t.Cleanup(stop)
		return stop
	}
	stop1 := serve(lis, resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", true)))

	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecureCreds()),
		grpc.WithPerRPCCredentials(bearer(goodToken)),
		grpc.WithConnectParams(fastReconnect))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rec := newRecorder()
	c := newClient(t, conn, rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL})
	runClient(t, t.Context(), c)
	if d := rec.next(t, model.AddressTypeURL); len(d.Updated) != 2 {
		t.Fatalf("first delta has %d resources, want 2", len(d.Updated))
	}
	eventually(t, "versions recorded", func() bool { return len(c.Versions(model.AddressTypeURL)) == 2 })
	stop1()

	lis2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	serve(lis2, resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", false)))
	d := rec.next(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("b")}) || len(d.Removed) != 0 {
		t.Errorf("after restart: updated %v removed %v, want only [%s] updated", got, d.Removed, uid("b"))
	}
}

var fastReconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond},
	MinConnectTimeout: time.Second,
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }

// TestOnDemandServiceBringsItsWorkloads: asking for a Service VIP subscribes
// the client to the Service's Workloads too, including ones that come later.
func TestOnDemandServiceBringsItsWorkloads(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	const svcName = "demo/web.demo.svc.cluster.local"
	svc := &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: "web", Namespace: "demo", Hostname: "web.demo.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.1").AsSlice()}},
	}}}
	member := func(name, ip string) *workloadapi.Address {
		a := workload(name, ip, true)
		a.GetWorkload().Services = map[string]*workloadapi.PortList{svcName: {}}
		return a
	}
	e.srv.Update(resources(svc, member("a", "10.0.0.1"), workload("other", "10.0.0.9", true)))
	rec := newRecorder()
	c := newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL, OnDemand: true})
	runClient(t, t.Context(), c)
	if err := c.Subscribe(t.Context(), model.AddressTypeURL, "/10.96.0.1"); err != nil {
		t.Fatal(err)
	}
	d := rec.nextChange(t, model.AddressTypeURL)
	if got, want := names(d), sorted([]string{svcName, uid("a")}); !slices.Equal(got, want) {
		t.Fatalf("VIP subscription delta %v, want %v", got, want)
	}

	// b joins the service: it is pushed. a leaves: it is removed.
	e.srv.Update(resources(svc, member("a", "10.0.0.1"), member("b", "10.0.0.2"), workload("other", "10.0.0.9", true)))
	d = rec.nextChange(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("b")}) {
		t.Fatalf("after b joined: %v, want [%s]", got, uid("b"))
	}
	e.srv.Update(resources(svc, workload("a", "10.0.0.1", true), member("b", "10.0.0.2"), workload("other", "10.0.0.9", true)))
	d = rec.nextChange(t, model.AddressTypeURL)
	if len(d.Updated) != 0 || !slices.Equal(d.Removed, []string{uid("a")}) {
		t.Errorf("after a left: updated %v removed %v, want removed [%s]", names(d), d.Removed, uid("a"))
	}
}

// TestOnDemandGetsNodeLocalWorkloads: a ztunnel on demand still holds the
// Workloads of its own node, which it serves inbound.
func TestOnDemandGetsNodeLocalWorkloads(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	onNode := func(name, ip, node string) *workloadapi.Address {
		a := workload(name, ip, true)
		a.GetWorkload().Node = node
		return a
	}
	e.srv.Update(resources(onNode("a", "10.0.0.1", "node-1"), onNode("b", "10.0.0.2", "node-2")))
	rec := newRecorder()
	meta, err := structpb.NewStruct(map[string]any{"NODE_NAME": "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := xdsclient.New(xdsclient.Config{
		Conn:          dial(t, e.addr, goodToken),
		Node:          &core.Node{Id: "ztunnel~10.0.0.100~ztunnel-x.istio-system~istio-system.svc.cluster.local", Metadata: meta},
		Subscriptions: []xdsclient.Subscription{{TypeURL: model.AddressTypeURL, OnDemand: true}},
		Handler:       rec.handle,
	})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, t.Context(), c)
	d := rec.nextChange(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("a")}) {
		t.Fatalf("initial on-demand delta %v, want the node-local [%s]", got, uid("a"))
	}
	// A pod scheduled to node-1 arrives without being asked for.
	e.srv.Update(resources(onNode("a", "10.0.0.1", "node-1"), onNode("b", "10.0.0.2", "node-2"), onNode("c", "10.0.0.3", "node-1")))
	if got := names(rec.nextChange(t, model.AddressTypeURL)); !slices.Equal(got, []string{uid("c")}) {
		t.Errorf("after a pod landed on node-1: %v, want [%s]", got, uid("c"))
	}
}
