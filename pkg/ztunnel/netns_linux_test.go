package ztunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambient-mesh/mesh/internal/meshtest"
	"github.com/ambient-mesh/mesh/internal/testenv"
	"github.com/ambient-mesh/mesh/pkg/redirect"
	ztdns "github.com/ambient-mesh/mesh/pkg/ztunnel/dns"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// Topology: a "node" netns joined to two "pod" netns A and B by veth pairs,
// forwarding between them. All namespaces are created here and deleted at
// cleanup; nothing touches the host's own netns.
var (
	nodeA  = netip.MustParseAddr("10.78.1.1")
	podA   = netip.MustParseAddr("10.78.1.2")
	nodeB  = netip.MustParseAddr("10.78.2.1")
	podB   = netip.MustParseAddr("10.78.2.2")
	svcVIP = netip.MustParseAddr("10.96.78.10")
	nodeA6 = netip.MustParseAddr("fd00:78:1::1")
	podA6  = netip.MustParseAddr("fd00:78:1::2")
	nodeB6 = netip.MustParseAddr("fd00:78:2::1")
	podB6  = netip.MustParseAddr("fd00:78:2::2")
)

const ioTimeout = 5 * time.Second

// drainTimeout is the proxies' drain deadline in these tests.
const drainTimeout = time.Second

var nsSeq atomic.Int64

func newNS(t testing.TB, role string) (string, netns.NsHandle) {
	t.Helper()
	name := fmt.Sprintf("zt%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	// No duplicate address detection, link-local addresses included: NDP
	// needs a usable link-local source, which DAD would delay by seconds.
	if err := redirect.Do(h, func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("netns %s: accept_dad: %v", name, err)
	}
	nl := nlHandle(t, h)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return name, h
}

func nlHandle(t testing.TB, h netns.NsHandle) *netlink.Handle {
	t.Helper()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

func addr(t testing.TB, nl *netlink.Handle, link string, a netip.Addr, gw netip.Addr) {
	t.Helper()
	l, err := nl.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	bits := 24
	if a.Is6() {
		bits = 64
	}
	// No duplicate address detection: IPv6 addresses are usable at once.
	if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}, Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatalf("addr %s on %s: %v", a, link, err)
	}
	if err := nl.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if gw.IsValid() {
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
}

// waitUp polls (bounded) until the link reports carrier: IPv6 drops
// packets on a link without it, and veth carrier arrives asynchronously.
func waitUp(t testing.TB, nl *netlink.Handle, name string) {
	t.Helper()
	waitFor(t, "link "+name+" up", func() bool {
		l, err := nl.LinkByName(name)
		return err == nil && l.Attrs().OperState == netlink.OperUp
	})
}

type topo struct {
	nodeName     string
	a, b         netns.NsHandle
	aName, bName string
}

func newTopo(t testing.TB, capture bool) topo {
	t.Helper()
	testenv.RequireRoot(t)
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(t, "needs %s: %v", bin, err)
		}
	}
	nodeName, node := newNS(t, "node")
	aName, a := newNS(t, "a")
	bName, b := newNS(t, "b")
	nl := nlHandle(t, node)
	for _, p := range []struct {
		veth      string
		pod       netns.NsHandle
		gw, ip    netip.Addr
		gw6, ip6  netip.Addr
		podHandle *netlink.Handle
	}{{"va", a, nodeA, podA, nodeA6, podA6, nlHandle(t, a)}, {"vb", b, nodeB, podB, nodeB6, podB6, nlHandle(t, b)}} {
		if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.veth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.pod))}); err != nil {
			t.Fatalf("veth %s: %v", p.veth, err)
		}
		addr(t, nl, p.veth, p.gw, netip.Addr{})
		addr(t, nl, p.veth, p.gw6, netip.Addr{})
		addr(t, p.podHandle, "eth0", p.ip, p.gw)
		addr(t, p.podHandle, "eth0", p.ip6, p.gw6)
		waitUp(t, nl, p.veth)
		waitUp(t, p.podHandle, "eth0")
	}
	if err := redirect.Do(node, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
	}); err != nil {
		t.Fatal(err)
	}
	rules := redirect.NewPodRules(redirect.PodConfig{DNSCapture: true}, nil)
	for _, h := range []netns.NsHandle{a, b} {
		if !capture {
			break
		}
		if err := rules.Install(h); err != nil {
			t.Fatalf("install capture rules: %v", err)
		}
	}
	return topo{nodeName: nodeName, a: a, b: b, aName: aName, bName: bName}
}

// echoApp listens on :8080 in ns; each connection first gets
// "from <client ip>\n", then its bytes echoed back.
type echoApp struct {
	accepted atomic.Int64
}

func startEcho(t testing.TB, ns netns.NsHandle) *echoApp {
	t.Helper()
	ln, err := redirect.Listen(t.Context(), ns, "tcp", ":8080", redirect.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	app := &echoApp{}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			app.accepted.Add(1)
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "from %s\n", addrIP(c.RemoteAddr()))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return app
}

func clientWorkload(ips []netip.Addr, ns, sa string, svcs ...string) *workloadapi.Workload {
	w := &workloadapi.Workload{Uid: "Kubernetes//Pod/" + ns + "/" + sa, Name: sa, Namespace: ns, ServiceAccount: sa,
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE, Services: map[string]*workloadapi.PortList{}}
	for _, a := range ips {
		w.Addresses = append(w.Addresses, a.AsSlice())
	}
	for _, s := range svcs {
		w.Services[s] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
	return w
}

// dialApp connects from the app in ns to dst and reads the greeting line.
func dialFromApp(t testing.TB, ns netns.NsHandle, dst netip.AddrPort) (net.Conn, *bufio.Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), ioTimeout)
	defer cancel()
	c, err := redirect.Dial(ctx, ns, net.Dialer{}, "tcp", dst.String(), redirect.SocketOptions{})
	if err != nil {
		t.Fatalf("app dial %s: %v", dst, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	return c, bufio.NewReader(c)
}

func expectEcho(t testing.TB, c net.Conn, r *bufio.Reader, wantFrom netip.Addr) {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if want := "from " + wantFrom.String() + "\n"; line != want {
		t.Fatalf("greeting %q, want %q (the app must see the original source IP)", line, want)
	}
	msg := "ping " + time.Now().String() + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
}

// expectClosed waits (bounded by the conn's deadline) for the connection to
// end without data.
func expectClosed(t testing.TB, c net.Conn, r *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := r.ReadByte()
	if err == nil {
		t.Fatalf("connection still carries data (%q), want it closed", b)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %s, want it closed", ioTimeout)
	}
}

func principal(ns, sa string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/" + ns + "/sa/" + sa}}
}

// mesh is the two-pod topology with capture rules installed and a Proxy
// serving both pods (capture false: the same topology, no mesh).
type mesh struct {
	topo
	store       *state.Store
	reg         *prometheus.Registry
	proxy       *Proxy
	setPolicies func(ps ...*security.Authorization)
	// withoutB publishes a state that lacks pod B's workload.
	withoutB func()
	// extraW and extraS are added to every state setPolicies publishes.
	extraW []*workloadapi.Workload
	extraS []*workloadapi.Service
	ca     *meshtest.CA // the static certificates' CA (nil with other Certs)
}

// newMesh builds the topology; certs nil serves static certificates from a
// test CA.
func newMesh(t testing.TB, capture bool, log *zap.Logger, certs Certs) *mesh {
	t.Helper()
	tp := newTopo(t, capture)
	m := &mesh{topo: tp}
	if !capture {
		return m
	}
	if certs == nil {
		ca, err := meshtest.NewCA("cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		m.ca = ca
		static := &StaticCerts{Bundle: ca.Bundle()}
		for _, id := range [][2]string{{"a", "client"}, {"b", "server"}} {
			s, err := ca.SVID(id[0], id[1])
			if err != nil {
				t.Fatal(err)
			}
			static.Add(s)
		}
		certs = static
	}
	svcKey := "b/server.b.svc.cluster.local"
	wA := clientWorkload([]netip.Addr{podA, podA6}, "a", "client")
	wB := clientWorkload([]netip.Addr{podB, podB6}, "b", "server", svcKey)
	svc := &workloadapi.Service{Name: "server", Namespace: "b", Hostname: "server.b.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: svcVIP.AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	m.store = state.NewStore()
	m.setPolicies = func(ps ...*security.Authorization) {
		m.store.Replace(state.NewSnapshot(append([]*workloadapi.Workload{wA, wB}, m.extraW...), append([]*workloadapi.Service{svc}, m.extraS...), ps))
	}
	m.setPolicies()
	m.withoutB = func() {
		m.store.Replace(state.NewSnapshot([]*workloadapi.Workload{wA}, []*workloadapi.Service{svc}, nil))
	}

	m.reg = prometheus.NewRegistry()
	metrics, err := telemetry.NewMetrics(m.reg)
	if err != nil {
		t.Fatal(err)
	}
	m.proxy, err = New(Config{Store: m.store, Certs: certs, Metrics: metrics, DrainTimeout: drainTimeout, ConnectTimeout: ioTimeout, Logger: log,
		DNS: &DNSConfig{Upstreams: []string{netip.AddrPortFrom(nodeA, 53).String()}}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- m.proxy.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	for _, p := range []struct {
		name, ns, sa string
	}{{tp.aName, "a", "client"}, {tp.bName, "b", "server"}} {
		h, err := netns.GetFromName(p.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.proxy.AddPod(t.Context(), PodInfo{UID: p.ns + "-uid", Name: p.sa, Namespace: p.ns, ServiceAccount: p.sa}, h); err != nil {
			t.Fatalf("AddPod %s: %v", p.ns, err)
		}
	}
	return m
}

func TestPodsOverHBONE(t *testing.T) {
	m := newMesh(t, true, zaptest.NewLogger(t), nil)
	tp, reg, proxy, setPolicies := m.topo, m.reg, m.proxy, m.setPolicies
	app := startEcho(t, tp.b)

	t.Run("pod ip over hbone", func(t *testing.T) {
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
	})
	t.Run("ipv6 pod ip over hbone", func(t *testing.T) {
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB6, 8080))
		expectEcho(t, c, r, podA6)
	})
	t.Run("metrics", func(t *testing.T) {
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
		c.Close()
		dstLabels := map[string]string{"reporter": "destination", "source_principal": "spiffe://cluster.local/ns/a/sa/client",
			"destination_principal": "spiffe://cluster.local/ns/b/sa/server", "source_workload": "client", "destination_workload_namespace": "b",
			"connection_security_policy": "mutual_tls", "response_flags": "-", "request_protocol": "tcp"}
		srcLabels := map[string]string{"reporter": "source", "source_principal": "spiffe://cluster.local/ns/a/sa/client", "destination_workload": "server"}
		waitFor(t, "closed connections reported by both sides", func() bool {
			return counter(t, reg, "istio_tcp_connections_closed_total", dstLabels) >= 1 && counter(t, reg, "istio_tcp_connections_closed_total", srcLabels) >= 1
		})
		if got := counter(t, reg, "istio_tcp_connections_opened_total", dstLabels); got < 1 {
			t.Errorf("opened (destination) = %v, want >= 1", got)
		}
		// The app sent its greeting (from 10.78.1.2\n) and one echo: the
		// response direction is the larger one.
		recv, sent := counter(t, reg, "istio_tcp_received_bytes_total", dstLabels), counter(t, reg, "istio_tcp_sent_bytes_total", dstLabels)
		if recv <= 0 || sent <= recv {
			t.Errorf("destination bytes received %v, sent %v: want both > 0 and sent > received", recv, sent)
		}
	})
	t.Run("service vip", func(t *testing.T) {
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(svcVIP, 80))
		expectEcho(t, c, r, podA)
	})
	t.Run("allow not matching denies", func(t *testing.T) {
		setPolicies(&security.Authorization{Name: "only-x", Namespace: "b", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{principal("x", "y")}}}}}}}})
		before := app.accepted.Load()
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectClosed(t, c, r)
		if got := app.accepted.Load(); got != before {
			t.Errorf("the app accepted %d connections while denied", got-before)
		}
		if got := counter(t, reg, "istio_tcp_connections_closed_total", map[string]string{"reporter": "destination", "response_flags": "DENY"}); got < 1 {
			t.Errorf("denied connections (destination, DENY) = %v, want >= 1", got)
		}
		setPolicies(&security.Authorization{Name: "only-a", Namespace: "b", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{principal("a", "client")}}}}}}}})
		c, r = dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
	})
	t.Run("deny added closes open connection", func(t *testing.T) {
		setPolicies()
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
		setPolicies(&security.Authorization{Name: "deny-a", Namespace: "b", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{principal("a", "client")}}}}}}}})
		expectClosed(t, c, r)
	})
	t.Run("plaintext inbound strict vs permissive", func(t *testing.T) {
		// The node netns is outside the mesh: its connection to B lands on
		// B's 15006.
		node, err := netns.GetFromName(tp.nodeName)
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		setPolicies()
		c, r := dialFromApp(t, node, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, nodeB)
		strict := &security.Authorization{Name: "istio_converted_peer_authentication_strict", Namespace: "b", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}}}}}}}
		setPolicies(strict)
		expectClosed(t, c, r) // the open plaintext connection is re-checked too
		c, r = dialFromApp(t, node, netip.AddrPortFrom(podB, 8080))
		expectClosed(t, c, r)
		c, r = dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA) // mTLS still passes STRICT
		setPolicies()
	})
	t.Run("outside the mesh passthrough", func(t *testing.T) {
		// The node's own address is not in the state: plain TCP from A.
		ln, err := redirect.Listen(t.Context(), mustNS(t, tp.nodeName), "tcp", nodeA.String()+":9000", redirect.SocketOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, _ := dialFromApp(t, tp.a, netip.AddrPortFrom(nodeA, 9000))
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(ioTimeout))
		sc, err := ln.Accept()
		if err != nil {
			t.Fatalf("passthrough connection never arrived: %v", err)
		}
		defer sc.Close()
		if got := addrIP(sc.RemoteAddr()); got != podA {
			t.Errorf("passthrough arrived from %s, want %s", got, podA)
		}
		c.Close()
	})
	t.Run("unknown local workload refused", func(t *testing.T) {
		// B is not in the state: A sends plain TCP, B's 15006 does not know
		// which policies apply and refuses rather than guess.
		m.withoutB()
		defer setPolicies()
		before := app.accepted.Load()
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectClosed(t, c, r)
		if got := app.accepted.Load(); got != before {
			t.Errorf("the app accepted %d connections for an unknown workload", got-before)
		}
	})
	t.Run("add twice and retain keep serving", func(t *testing.T) {
		h, err := netns.GetFromName(tp.bName)
		if err != nil {
			t.Fatal(err)
		}
		if err := proxy.AddPod(t.Context(), PodInfo{UID: "b-uid", Name: "server", Namespace: "b", ServiceAccount: "server"}, h); err != nil {
			t.Fatalf("second AddPod: %v", err)
		}
		if err := proxy.RetainPods(t.Context(), []string{"a-uid", "b-uid", "gone-uid"}); err != nil {
			t.Fatal(err)
		}
		if got := len(proxy.Pods()); got != 2 {
			t.Fatalf("%d pods served, want 2", got)
		}
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
	})
	t.Run("dns proxy", func(t *testing.T) {
		startFakeResolver(t, mustNS(t, tp.nodeName), netip.AddrPortFrom(nodeA, 53))
		for _, tc := range []struct {
			from   netns.NsHandle
			gw     netip.Addr
			net, q string
			want   string
		}{
			{tp.b, nodeB, "udp", "server.", svcVIP.String()},                     // short name, B's own namespace
			{tp.a, nodeA, "udp", "server.b.", svcVIP.String()},                   // namespace-qualified
			{tp.a, nodeA, "tcp", "server.b.svc.cluster.local.", svcVIP.String()}, // FQDN over TCP
			{tp.a, nodeA, "udp", "example.org.", "192.0.2.53"},                   // forwarded upstream from A's netns
			{tp.a, nodeA, "tcp", "example.org.", "192.0.2.53"},
			{tp.b, nodeB, "udp", "example.org.", "192.0.2.53"},
			{tp.a, nodeA6, "udp", "server.b.", svcVIP.String()}, // an IPv6 resolver: REDIRECT to ::1
			{tp.a, nodeA6, "tcp", "server.b.", svcVIP.String()},
		} {
			// The app asks its gateway on :53; capture sends it to 15053.
			ctx, cancel := context.WithTimeout(t.Context(), ioTimeout)
			c, err := redirect.Dial(ctx, tc.from, net.Dialer{}, tc.net, netip.AddrPortFrom(tc.gw, 53).String(), redirect.SocketOptions{})
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			m := new(mdns.Msg)
			m.SetQuestion(tc.q, mdns.TypeA)
			resp, err := ztdns.Exchange(ctx, m, c, tc.net)
			c.Close()
			cancel()
			if err != nil {
				t.Fatalf("%s %s: %v", tc.net, tc.q, err)
			}
			if len(resp.Answer) != 1 || resp.Answer[0].(*mdns.A).A.String() != tc.want {
				t.Errorf("%s %s: answer %v, want %s", tc.net, tc.q, resp.Answer, tc.want)
			}
		}
	})
	t.Run("connection accepted as its pod starts draining is served", func(t *testing.T) {
		// The drain of A begins between the accept of A's outbound
		// connection and its handling: it is served like the connections
		// already open, not dropped.
		removed := make(chan error, 1)
		var once sync.Once
		hook := func(pd *pod) {
			if pd.info.UID != "a-uid" {
				return
			}
			once.Do(func() {
				go func() { removed <- proxy.RemovePod(context.Background(), "a-uid") }()
				<-pd.ctx.Done()
			})
		}
		testHookAccepted.Store(&hook)
		defer testHookAccepted.Store(nil)
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
		c.Close()
		if err := <-removed; err != nil {
			t.Fatal(err)
		}
		testHookAccepted.Store(nil)
		h, err := netns.GetFromName(tp.aName)
		if err != nil {
			t.Fatal(err)
		}
		if err := proxy.AddPod(t.Context(), PodInfo{UID: "a-uid", Name: "client", Namespace: "a", ServiceAccount: "client"}, h); err != nil {
			t.Fatal(err)
		}
		c, r = dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
	})
	t.Run("removed pod drains and closes", func(t *testing.T) {
		c, r := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
		expectEcho(t, c, r, podA)
		start := time.Now()
		removed := make(chan error, 1)
		go func() { removed <- proxy.RemovePod(t.Context(), "b-uid") }()
		// Draining: new connections are refused (B's listeners are
		// closed) while the open one still carries data.
		waitFor(t, "new connections to B refused", func() bool {
			nc, nr := dialFromApp(t, tp.a, netip.AddrPortFrom(podB, 8080))
			defer nc.Close()
			nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err := nr.ReadByte()
			return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
		})
		msg := "still draining\n"
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write while draining: %v", err)
		}
		if got, err := r.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("echo while draining = %q, %v (%s after RemovePod began; drain is %s)", got, err, time.Since(start), drainTimeout)
		}
		if err := <-removed; err != nil {
			t.Fatal(err)
		}
		t.Logf("RemovePod returned %s after it began", time.Since(start))
		if d := time.Since(start); d < drainTimeout || d > drainTimeout+2*time.Second {
			t.Errorf("RemovePod returned after %s with an open connection and a %s drain", d, drainTimeout)
		}
		expectClosed(t, c, r)
		c.Close() // A's side was half-closed (EOF); the app ends it
		if err := proxy.RetainPods(t.Context(), nil); err != nil {
			t.Fatal(err)
		}
		if got := proxy.Pods(); len(got) != 0 {
			t.Errorf("pods %v still served after RetainPods(nil)", got)
		}
	})
}

// startFakeResolver serves DNS on addr (UDP and TCP) in ns, answering every
// A query with 192.0.2.53: the upstream the DNS proxy forwards to.
func startFakeResolver(t testing.TB, ns netns.NsHandle, addr netip.AddrPort) {
	t.Helper()
	pc, err := redirect.ListenPacket(t.Context(), ns, "udp", addr.String(), redirect.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := redirect.Listen(t.Context(), ns, "tcp", addr.String(), redirect.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv := &ztdns.Server{Store: state.NewStore(), Forward: func(_ context.Context, q *mdns.Msg, _ string) (*mdns.Msg, error) {
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 53)})
		return m, nil
	}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc, ln) }()
	t.Cleanup(func() { cancel(); <-done; pc.Close(); ln.Close() })
}

func mustNS(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// counter sums the samples of a counter whose labels include want.
func counter(t testing.TB, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// waitFor polls cond every 10 ms until it holds, failing after ioTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", ioTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAddPodAfterStop(t *testing.T) {
	testenv.RequireRoot(t)
	name, _ := newNS(t, "stopped")
	p, err := New(Config{Store: state.NewStore(), Certs: &StaticCerts{}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run = %v", err)
	}
	h, err := netns.GetFromName(name) // AddPod owns (closes) it
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddPod(t.Context(), PodInfo{UID: "u", Namespace: "ns", Name: "p"}, h); !errors.Is(err, errStopped) {
		t.Fatalf("AddPod after Run returned = %v, want errStopped", err)
	}
	if len(p.Pods()) != 0 {
		t.Errorf("pods served after stop: %v", p.Pods())
	}
}
