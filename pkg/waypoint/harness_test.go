package waypoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"istio.io/istio/pkg/workloadapi"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/internal/meshtest"
	"github.com/ambient-mesh/mesh/pkg/hbone"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

const (
	testNS       = "demo"
	waypointName = "demo/waypoint"
)

// leakCheck registers goleak as the last cleanup of t.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// mesh is an in-process mesh on loopback: a test CA, backend pods (each an
// app server behind its own HBONE server on a distinct 127.0.0.x), the
// waypoint under test, and an HBONE client standing in for ztunnel.
type mesh struct {
	t      testing.TB
	ca     *meshtest.CA
	wpSVID *x509svid.SVID
	client *hbone.Client
	caller *x509svid.SVID // the source workload's certificate

	addrs   *state.Store
	routes  *Routes
	reg     *prometheus.Registry
	access  *observer.ObservedLogs
	proxy   *Proxy
	wpAddr  netip.AddrPort
	cancel  context.CancelFunc
	served  chan error
	nextIP  atomic.Uint32
	tunnels sync.Map // "podIP:15008" -> the pod's HBONE listener address

	cleanups []func() // pods, run after the waypoint stopped, last first

	mu        sync.Mutex
	workloads []*workloadapi.Workload
	services  []*workloadapi.Service
}

type meshOptions struct {
	maxReplayBody int
	drainTimeout  time.Duration
	telemetry     func(reg *prometheus.Registry) *Telemetry // OTLP export, built on the waypoint's registry
}

func newMesh(t testing.TB, opts meshOptions) *mesh {
	t.Helper()
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, ca: ca, addrs: state.NewStore(), routes: NewRoutes(), reg: prometheus.NewRegistry()}
	m.nextIP.Store(10)
	if m.wpSVID, err = ca.SVID(testNS, "waypoint"); err != nil {
		t.Fatal(err)
	}
	if m.caller, err = ca.SVID(testNS, "sleep"); err != nil {
		t.Fatal(err)
	}
	m.client, err = hbone.NewClient(hbone.ClientConfig{Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.client.Close() })
	metrics, err := NewMetrics(m.reg)
	if err != nil {
		t.Fatal(err)
	}
	var tel *Telemetry
	if opts.telemetry != nil {
		tel = opts.telemetry(m.reg)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	accessCore, access := observer.New(zap.InfoLevel)
	m.access = access
	m.proxy, err = New(Config{
		Name: waypointName, Addresses: m.addrs, Routes: m.routes,
		SVID: staticSVID{m.wpSVID}, Bundle: ca.Bundle(),
		Dial:          m.dialTunnel,
		MaxReplayBody: opts.maxReplayBody,
		DrainTimeout:  opts.drainTimeout,
		Metrics:       metrics,
		Telemetry:     tel,
		Logger:        log,
		AccessLog:     zap.New(accessCore),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.wpAddr = netip.MustParseAddrPort(ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.served = cancel, make(chan error, 1)
	go func() { m.served <- m.proxy.Serve(ctx, ln) }()
	t.Cleanup(func() {
		m.stop()
		for i := len(m.cleanups) - 1; i >= 0; i-- {
			m.cleanups[i]()
		}
	})
	return m
}

// stop drains the waypoint and waits for Serve.
func (m *mesh) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	m.cancel = nil
	if err := <-m.served; err != nil {
		m.t.Errorf("Serve: %v", err)
	}
	_ = m.proxy.Close()
}

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

// dialTunnel redirects podIP:15008 to the pod's HBONE listener.
func (m *mesh) dialTunnel(ctx context.Context, network, address string, _ netip.Addr) (net.Conn, error) {
	to, ok := m.tunnels.Load(address)
	if !ok {
		return nil, fmt.Errorf("no pod listens on %s", address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to.(string))
}

// pod is one backend workload: an app behind an HBONE server.
type pod struct {
	name    string
	ip      netip.Addr
	appPort uint16
	id      spiffeid.ID
	hits    atomic.Int64
	// handler answers requests; set before traffic.
	handler http.Handler
}

// addPod starts a backend pod of service svcHost serving h over HTTP/1.1
// and h2c (or, for tcp, an echo server). It registers the workload.
func (m *mesh) addPod(name, svcHost string, h http.Handler) *pod {
	m.t.Helper()
	ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(m.nextIP.Add(1))})
	svid, err := m.ca.SVID(testNS, name)
	if err != nil {
		m.t.Fatal(err)
	}
	p := &pod{name: name, ip: ip, id: svid.ID, handler: h}
	appLn, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		m.t.Skipf("loopback %s unavailable: %v", ip, err)
	}
	p.appPort = uint16(appLn.Addr().(*net.TCPAddr).Port)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	app := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		w.Header().Set("X-Backend", p.name)
		p.handler.ServeHTTP(w, r)
	})}
	go func() { _ = app.Serve(appLn) }()
	m.cleanups = append(m.cleanups, func() { _ = app.Close() })
	m.startTunnel(ip, svid, nil)
	m.registerPod(p, svcHost)
	return p
}

// addTCPPod starts a backend pod whose app writes its name on every
// connection and closes it.
func (m *mesh) addTCPPod(name, svcHost string) *pod {
	m.t.Helper()
	ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(m.nextIP.Add(1))})
	svid, err := m.ca.SVID(testNS, name)
	if err != nil {
		m.t.Fatal(err)
	}
	p := &pod{name: name, ip: ip, id: svid.ID}
	appLn, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		m.t.Skipf("loopback %s unavailable: %v", ip, err)
	}
	p.appPort = uint16(appLn.Addr().(*net.TCPAddr).Port)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := appLn.Accept()
			if err != nil {
				return
			}
			p.hits.Add(1)
			_, _ = io.WriteString(c, name)
			_ = c.Close()
		}
	}()
	m.cleanups = append(m.cleanups, func() { _ = appLn.Close(); <-done })
	m.startTunnel(ip, svid, nil)
	m.registerPod(p, svcHost)
	return p
}

func (m *mesh) registerPod(p *pod, svcHost string) {
	name, ip := p.name, p.ip
	w := &workloadapi.Workload{
		Uid: "cluster/pod/" + testNS + "/" + name, Name: name, Namespace: testNS, WorkloadName: name,
		ServiceAccount: name, Addresses: [][]byte{ip.AsSlice()}, CanonicalName: name, CanonicalRevision: "v1",
		Services: map[string]*workloadapi.PortList{testNS + "/" + svcHost: {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: uint32(p.appPort)}}}},
	}
	m.addWorkload(w)
}

// startTunnel runs the pod's HBONE server (ztunnel inbound stand-in): it
// dials the CONNECT target on loopback, or hands it to dial.
func (m *mesh) startTunnel(ip netip.Addr, svid *x509svid.SVID, dial func(context.Context, *hbone.Inbound) (net.Conn, error)) {
	srv, err := hbone.NewServer(hbone.ServerConfig{SVID: staticSVID{svid}, Bundle: m.ca.Bundle(), DrainTimeout: time.Second,
		Hooks: hbone.Hooks{DialUpstream: dial}})
	if err != nil {
		m.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		m.t.Fatal(err)
	}
	m.tunnels.Store(netip.AddrPortFrom(ip, 15008).String(), ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	m.cleanups = append(m.cleanups, func() { cancel(); <-done })
}

func (m *mesh) addWorkload(w *workloadapi.Workload) {
	m.mu.Lock()
	m.workloads = append(m.workloads, w)
	m.mu.Unlock()
	m.publish()
}

// addService declares a Service with VIP 10.0.0.<n> port 80.
func (m *mesh) addService(host string, vip string) {
	m.mu.Lock()
	m.services = append(m.services, &workloadapi.Service{
		Name: host[:indexDot(host)], Namespace: testNS, Hostname: host,
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80}},
	})
	m.mu.Unlock()
	m.publish()
}

func indexDot(s string) int {
	for i := range len(s) {
		if s[i] == '.' {
			return i
		}
	}
	return len(s)
}

func (m *mesh) publish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.addrs.Replace(state.NewSnapshot(m.workloads, m.services, nil))
}

// tunnel opens one HBONE stream to the waypoint for authority, as ztunnel
// would for the calling pod.
func (m *mesh) tunnel(ctx context.Context, authority string) (net.Conn, error) {
	c, err := m.client.Dial(ctx, &hbone.Request{
		Source:       m.caller,
		Destinations: []spiffeid.ID{m.wpSVID.ID},
		Address:      m.wpAddr,
		Authority:    authority,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// httpClient sends requests through the waypoint: URLs name the VIP, each
// connection is an HBONE stream. h2 selects h2c prior knowledge.
func (m *mesh) httpClient(h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, addr string) (net.Conn, error) { return m.tunnel(ctx, addr) },
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
	}
	if h2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	m.cleanups = append(m.cleanups, tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// get sends a GET and returns status, X-Backend and body.
func get(t testing.TB, c *http.Client, url string, hdr map[string]string) (int, string, string) {
	t.Helper()
	code, from, body, err := tryGet(t, c, url, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return code, from, body
}

func tryGet(t testing.TB, c *http.Client, url string, hdr map[string]string) (int, string, string, error) {
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		return 0, "", "", err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", "", fmt.Errorf("GET %s: read body: %w", url, err)
	}
	return resp.StatusCode, resp.Header.Get("X-Backend"), string(b), nil
}

// text answers 200 with the given body.
func text(s string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, s) })
}

// serviceConfig builds a ServiceConfig for host's port 80 bound to the
// test waypoint.
func serviceConfig(host string, proto waypointv1alpha1.Protocol, routes ...*waypointv1alpha1.HTTPRoute) *waypointv1alpha1.ServiceConfig {
	return &waypointv1alpha1.ServiceConfig{
		Namespace: testNS, Hostname: host, Waypoints: []string{waypointName},
		Ports: []*waypointv1alpha1.Port{{Port: 80, Protocol: proto, HttpRoutes: routes}},
	}
}

func backend(host string, weight uint32) *waypointv1alpha1.WeightedBackend {
	return &waypointv1alpha1.WeightedBackend{Weight: weight, Backend: &waypointv1alpha1.Backend{Namespace: testNS, Hostname: host, Port: 80}}
}

func defaultRoute(host string) *waypointv1alpha1.HTTPRoute {
	return &waypointv1alpha1.HTTPRoute{Name: "default", Backends: []*waypointv1alpha1.WeightedBackend{backend(host, 1)}}
}

func (m *mesh) setRoutes(cfgs ...*waypointv1alpha1.ServiceConfig) {
	m.t.Helper()
	if err := m.routes.Set(cfgs...); err != nil {
		m.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")

func itoa(i int) string { return strconv.Itoa(i) }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// counter sums the samples of a counter whose labels include want.
func (m *mesh) counter(name string, want map[string]string) float64 {
	m.t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		m.t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			n += mt.GetCounter().GetValue()
		}
	}
	return n
}

func (m *mesh) requestCount(want map[string]string) float64 {
	return m.counter("istio_requests_total", want)
}
