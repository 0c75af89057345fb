package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/internal/otelcoltest"
	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/hbone"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
)

func TestFlagsFromEnv(t *testing.T) {
	t.Setenv("GATEWAY_NAME", "wp")
	t.Setenv("POD_NAMESPACE", "demo")
	t.Setenv("POD_IP", "10.1.2.3")
	t.Setenv("TERMINATION_GRACE_PERIOD_SECONDS", "30")
	var cfg Config
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--xds-address", "istiod.mesh.svc:15012"}); err != nil {
		t.Fatal(err)
	}
	if cfg.XDSAddress != "istiod.mesh.svc:15012" || cfg.GatewayName != "wp" || cfg.PodNamespace != "demo" || cfg.InstanceIP != "10.1.2.3" ||
		cfg.DrainTimeout != 25*time.Second || cfg.HBONEAddr != ":15008" || cfg.MetricsAddr != ":15020" || cfg.ReadinessAddr != ":15021" ||
		cfg.AdminAddr != "localhost:15000" || cfg.MaxReplayBody != 64<<10 || !cfg.AccessLog {
		t.Errorf("config = %+v", cfg)
	}
}

// controlPlane is istiod-lite in miniature: the real CA and xDS services on
// one TLS gRPC server on loopback.
type controlPlane struct {
	ca   *ca.CA
	xds  *xds.Server
	addr string
}

type fakeCAAuth map[string]ca.Caller

func (f fakeCAAuth) Authenticate(_ context.Context, token string) (*ca.Caller, error) {
	c, ok := f[token]
	if !ok {
		return nil, fmt.Errorf("unknown token")
	}
	return &c, nil
}

type noPods struct{}

func (noPods) Pod(context.Context, string, string) (*corev1.Pod, error)     { return nil, nil }
func (noPods) OnNode(context.Context, string, string, string) (bool, error) { return false, nil }

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keys, err := ca.ParseKeys(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(keys, ca.Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	caSrv, err := ca.NewServer(c, ca.ServerOptions{Authenticator: fakeCAAuth{"wp-token": {Namespace: "demo", ServiceAccount: "waypoint"}}, Pods: noPods{}})
	if err != nil {
		t.Fatal(err)
	}
	xdsSrv, err := xds.New(xds.Options{
		Authenticator: xds.NewFakeAuthenticator(map[string]xds.Identity{"wp-token": {Namespace: "demo", ServiceAccount: "waypoint"}}),
		TLS:           c.ServerTLSConfig("localhost"),
		Debounce:      time.Millisecond, MaxDebounce: 10 * time.Millisecond, ShutdownGrace: time.Second,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(xdsSrv.GRPCServerOptions()...)
	ctx, cancel := context.WithCancel(context.Background())
	xdsSrv.Register(ctx, g)
	caSrv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { _ = xdsSrv.Start(ctx); done <- struct{}{} }()
	go func() { _ = g.Serve(lis); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); g.Stop(); <-done; <-done })
	return &controlPlane{ca: c, xds: xdsSrv, addr: lis.Addr().String()}
}

// svid issues a workload certificate from the control plane's CA.
func (cp *controlPlane) svid(t *testing.T, ns, sa string) *x509svid.SVID {
	t.Helper()
	id := spiffeid.RequireFromSegments(cp.ca.TrustDomain(), "ns", ns, "sa", sa)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := cp.ca.Sign(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{issued.Leaf}, PrivateKey: key}
}

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

// TestAppEndToEnd runs the waypoint app against an in-process istiod-lite
// (CA and xDS): it fetches its certificate, turns ready after the first
// Address push, routes a request to a backend pod over HBONE, dumps its
// config without keys, and drains on cancel.
func TestAppEndToEnd(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	cp := startControlPlane(t)
	col := otelcoltest.Start(t)
	bundle := x509bundle.FromX509Authorities(cp.ca.TrustDomain(), []*x509.Certificate{cp.ca.Keys().Root()})

	// A backend pod: an app on loopback behind its HBONE server.
	const svcHost = "echo.demo.svc.cluster.local"
	podIP := netip.MustParseAddr("127.0.0.1")
	seenTrace := make(chan string, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seenTrace <- r.Header.Get("Traceparent"):
		default:
		}
		_, _ = io.WriteString(w, "hello "+r.URL.Path)
	}))
	defer app.Close()
	appPort := netip.MustParseAddrPort(app.Listener.Addr().String()).Port()
	podSrv, err := hbone.NewServer(hbone.ServerConfig{SVID: staticSVID{cp.svid(t, "demo", "echo")}, Bundle: bundle, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	podLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	podCtx, podCancel := context.WithCancel(context.Background())
	podDone := make(chan struct{})
	go func() { defer close(podDone); _ = podSrv.Serve(podCtx, podLn) }()
	defer func() { podCancel(); <-podDone }()

	dir := t.TempDir()
	root := filepath.Join(dir, "root-cert.pem")
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(root, cp.ca.RootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok, []byte("wp-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-xds-address", cp.addr, "-server-name", "localhost", "-root-cert", root, "-token", tok,
		"-gateway-name", "waypoint", "-pod-namespace", "demo", "-pod-name", "waypoint-0", "-instance-ip", "127.0.0.2",
		"-hbone-address", "127.0.0.1:0", "-metrics-address", "0", "-readiness-address", "0", "-admin-address", "0", "-drain-timeout", "2s"}); err != nil {
		t.Fatal(err)
	}
	cfg.TunnelDial = func(ctx context.Context, network, address string, _ netip.Addr) (net.Conn, error) {
		if address != netip.AddrPortFrom(podIP, 15008).String() {
			return nil, fmt.Errorf("no pod tunnel at %s", address)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, podLn.Addr().String())
	}
	cfg.LookupEnv = func(k string) (string, bool) {
		if k == "OTEL_BSP_SCHEDULE_DELAY" {
			return "50", true
		}
		return "", false
	}
	a, err := New(cfg, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := a.node().GetId(); n != "waypoint~127.0.0.2~waypoint-0.demo~demo.svc.cluster.local" {
		t.Errorf("node id %q", n)
	}
	if err := a.Ready(); err == nil {
		t.Error("ready before xDS and certificate")
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	colAddr := netip.MustParseAddrPort(col.GRPCAddr)
	colHost, colPort := colAddr.Addr().String(), colAddr.Port()
	vip := netip.MustParseAddr("10.96.0.10")
	svcKey := "demo/" + svcHost
	ports := []*workloadapi.Port{{ServicePort: 80, TargetPort: uint32(appPort)}}
	cp.xds.Update(model.Resources{
		Addresses: map[string]*workloadapi.Address{
			svcKey: {Type: &workloadapi.Address_Service{Service: &workloadapi.Service{Name: "echo", Namespace: "demo", Hostname: svcHost,
				Addresses: []*workloadapi.NetworkAddress{{Address: vip.AsSlice()}}, Ports: ports}}},
			"echo-uid": {Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "echo-uid", Name: "echo-0", Namespace: "demo",
				ServiceAccount: "echo", Addresses: [][]byte{podIP.AsSlice()}, Services: map[string]*workloadapi.PortList{svcKey: {Ports: ports}}}}},
		},
		WaypointConfigs: map[string]*waypointv1alpha1.ServiceConfig{svcKey: {Namespace: "demo", Hostname: svcHost, Waypoints: []string{"demo/waypoint"},
			Ports: []*waypointv1alpha1.Port{{Port: 80, Protocol: waypointv1alpha1.Protocol_HTTP, HttpRoutes: []*waypointv1alpha1.HTTPRoute{{Name: "default",
				Backends: []*waypointv1alpha1.WeightedBackend{{Weight: 1, Backend: &waypointv1alpha1.Backend{Namespace: "demo", Hostname: svcHost, Port: 80}}}}}}}}},
		Telemetry: map[string]*waypointv1alpha1.Telemetry{"demo/waypoint": {Namespace: "demo", Name: "waypoint", Tracing: &waypointv1alpha1.Tracing{
			Provider:                 &waypointv1alpha1.OpenTelemetryProvider{Name: "otel-tracing", Service: colHost, Port: uint32(colPort)},
			RandomSamplingPercentage: 100}}},
	})
	deadline := time.Now().Add(20 * time.Second)
	for a.Ready() != nil || len(a.routes.Configs()) == 0 || !a.tel.Provider().Enabled() {
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 20s: %v (%d service configs)", a.Ready(), len(a.routes.Configs()))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A request from a mesh client, as its ztunnel would send it.
	client, err := hbone.NewClient(hbone.ClientConfig{Bundle: bundle})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	caller := cp.svid(t, "demo", "sleep")
	wpID := spiffeid.RequireFromSegments(cp.ca.TrustDomain(), "ns", "demo", "sa", "waypoint")
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		c, err := client.Dial(ctx, &hbone.Request{Source: caller, Destinations: []spiffeid.ID{wpID},
			Address: netip.MustParseAddrPort(a.HBONEAddr().String()), Authority: addr})
		if err != nil {
			return nil, err
		}
		return c, nil
	}}
	defer tr.CloseIdleConnections()
	const traceID, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest(http.MethodGet, "http://"+netip.AddrPortFrom(vip, 80).String()+"/hi", nil)
	req.Header.Set("Traceparent", "00-"+traceID+"-"+clientSpan+"-01")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello /hi" {
		t.Errorf("GET through the waypoint: %d %q, want 200 \"hello /hi\"", resp.StatusCode, body)
	}
	tr.CloseIdleConnections()

	admin := httptest.NewServer(a.adminMux())
	defer admin.Close()
	dresp, err := http.Get(admin.URL + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(dresp.Body)
	dresp.Body.Close()
	var dump struct {
		Waypoint       string           `json:"waypoint"`
		ServiceConfigs []map[string]any `json:"service_configs"`
		Certificates   []CertInfo       `json:"certificates"`
		Telemetry      struct {
			Resource        json.RawMessage  `json:"resource"`
			AccessLog       *bool            `json:"access_log"`
			MetricOverrides []map[string]any `json:"metric_overrides"`
		} `json:"telemetry"`
	}
	if err := json.Unmarshal(raw, &dump); err != nil {
		t.Fatal(err)
	}
	if dump.Waypoint != "demo/waypoint" || len(dump.ServiceConfigs) != 1 || len(dump.Certificates) != 1 ||
		dump.Certificates[0].Identity != wpID.String() || dump.Certificates[0].Serial == "" {
		t.Errorf("config dump %s", raw)
	}
	// The Telemetry resource sent above (tracing only): shown, with the
	// ACCESS_LOG default in force since it does not say.
	var res struct {
		Name    string         `json:"name"`
		Tracing map[string]any `json:"tracing"`
	}
	if err := json.Unmarshal(dump.Telemetry.Resource, &res); err != nil || res.Name != "waypoint" || res.Tracing == nil ||
		dump.Telemetry.AccessLog == nil || !*dump.Telemetry.AccessLog || len(dump.Telemetry.MetricOverrides) != 0 {
		t.Errorf("config dump telemetry %s (%v), want the Telemetry resource with tracing, the access log on, no metric overrides", raw, err)
	}
	if strings.Contains(string(raw), "PRIVATE KEY") {
		t.Error("config dump holds a private key")
	}

	cancel()
	if err := <-ran; err != nil {
		t.Errorf("Run: %v", err)
	}
	ran <- nil // for the deferred check

	// The drain flushed the request's span: a child of the client's span,
	// and the parent of what the backend saw.
	spans := col.Spans(t)
	for wait := time.Now().Add(5 * time.Second); len(spans) == 0 && time.Now().Before(wait); spans = col.Spans(t) {
		time.Sleep(20 * time.Millisecond) // the file exporter flushes every 100 ms
	}
	backendTP := <-seenTrace
	if len(spans) != 1 || spans[0].Name != "GET default" || spans[0].ParentSpanID != clientSpan || spans[0].TraceID != traceID ||
		backendTP != "00-"+traceID+"-"+spans[0].SpanID+"-01" || spans[0].Resource["service.name"] != "waypoint.demo" {
		t.Errorf("spans %+v, backend traceparent %q: want one GET default span, child of the client's, parent of the backend's", spans, backendTP)
	}
	if err := a.Ready(); err == nil || !strings.Contains(err.Error(), "stopping") {
		t.Errorf("Ready after stop = %v, want stopping", err)
	}
}
