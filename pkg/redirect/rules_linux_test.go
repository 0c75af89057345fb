package redirect

import (
	"errors"
	"flag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the rules installed")

// capturedPod is a pod topology with the capture rules installed (DNS on) and
// ztunnel-style listeners on 15001, 15006, 15008 in the pod, plus an app on
// 8080 in the pod and a server on 8080 in the node.
type capturedPod struct {
	podTopology
	out, in, hbone, app, nodeSrv *net.TCPListener
}

var ztunnelOpts = SocketOptions{Mark: ZtunnelMark, ReusePort: true}

func newCapturedPod(t *testing.T) capturedPod {
	t.Helper()
	topo := newPodTopology(t)
	if err := NewPodRules(PodConfig{DNSCapture: true}, zaptest.NewLogger(t)).Install(topo.pod.h); err != nil {
		t.Fatalf("install: %v", err)
	}
	return capturedPod{
		podTopology: topo,
		out:         listen(t, topo.pod, ":15001", ztunnelOpts),
		in:          listen(t, topo.pod, ":15006", ztunnelOpts),
		hbone:       listen(t, topo.pod, ":15008", ztunnelOpts),
		app:         listen(t, topo.pod, ":8080", SocketOptions{}),
		nodeSrv:     listen(t, topo.node, ":8080", SocketOptions{}),
	}
}

func checkOrigDst(t *testing.T, c net.Conn, want netip.AddrPort) {
	t.Helper()
	got, err := OriginalDst(c)
	if err != nil {
		t.Fatalf("OriginalDst: %v", err)
	}
	if got != want {
		t.Errorf("OriginalDst = %s, want %s", got, want)
	}
}

func TestOutboundLandsOn15001(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	for _, dst := range []netip.AddrPort{ap(nodeIP, 8080), ap(nodeIP6, 8080), ap(netip.MustParseAddr("10.77.0.99"), 443)} {
		t.Run(dst.String(), func(t *testing.T) {
			dial(t, p.pod, dst, SocketOptions{}, netip.Addr{})
			c := acceptLine(t, p.out, dst)
			checkOrigDst(t, c, dst)
			noPending(t, p.nodeSrv)
		})
	}
}

func TestInboundLandsOn15006(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	for _, dst := range []netip.AddrPort{ap(podIP, 8080), ap(podIP6, 8080), ap(podIP, 9999)} {
		t.Run(dst.String(), func(t *testing.T) {
			dial(t, p.node, dst, SocketOptions{}, netip.Addr{})
			c := acceptLine(t, p.in, dst)
			checkOrigDst(t, c, dst)
			if got, want := remoteAddr(c), map[bool]netip.Addr{true: nodeIP, false: nodeIP6}[dst.Addr().Is4()]; got != want {
				t.Errorf("15006 sees client %s, want the node %s (source kept)", got, want)
			}
			noPending(t, p.app)
		})
	}
}

func TestHBONEPortNotRedirected(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	for _, dst := range []netip.AddrPort{ap(podIP, InboundHBONEPort), ap(podIP6, InboundHBONEPort)} {
		dial(t, p.node, dst, SocketOptions{}, netip.Addr{})
		c := acceptLine(t, p.hbone, dst)
		checkOrigDst(t, c, dst) // tracked, not rewritten
		noPending(t, p.in)
	}
}

func TestMarkedAndLoopbackPass(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	t.Run("ztunnel mark out", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{ap(nodeIP, 8080), ap(nodeIP6, 8080)} {
			dial(t, p.pod, dst, SocketOptions{Mark: ZtunnelMark}, netip.Addr{})
			acceptLine(t, p.nodeSrv, dst)
		}
		noPending(t, p.out)
	})
	t.Run("other mark bits do not matter", func(t *testing.T) {
		dst := ap(nodeIP, 8080)
		dial(t, p.pod, dst, SocketOptions{Mark: 0xabc000 | ZtunnelMark}, netip.Addr{})
		acceptLine(t, p.nodeSrv, dst)
		noPending(t, p.out)
	})
	t.Run("unmarked out is captured", func(t *testing.T) {
		dst := ap(nodeIP, 8080)
		dial(t, p.pod, dst, SocketOptions{Mark: 0x538}, netip.Addr{})
		acceptLine(t, p.out, dst)
		noPending(t, p.nodeSrv)
	})
	t.Run("loopback", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{
			ap(netip.MustParseAddr("127.0.0.1"), 8080), ap(netip.IPv6Loopback(), 8080),
			ap(podIP, 8080), ap(podIP6, 8080), // own address: routed over lo
		} {
			dial(t, p.pod, dst, SocketOptions{}, netip.Addr{})
			acceptLine(t, p.app, dst)
		}
		noPending(t, p.out)
		noPending(t, p.in)
	})
}

// TestZtunnelDialsAppAsClient is ztunnel's inbound delivery: a transparent,
// marked socket in the pod dials the app from the original client's address;
// the app's replies must come back to it (connmark + table 100).
func TestZtunnelDialsAppAsClient(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	for _, client := range []netip.Addr{netip.MustParseAddr("10.99.0.5"), netip.MustParseAddr("fd00:99::5")} {
		dst := ap(podIP, 8080)
		if client.Is6() {
			dst = ap(podIP6, 8080)
		}
		c := dial(t, p.pod, dst, SocketOptions{Mark: ZtunnelMark, Transparent: true}, client)
		s := acceptLine(t, p.app, dst)
		if got := remoteAddr(s); got != client {
			t.Errorf("app sees %s, want the original client %s", got, client)
		}
		// Reply path: app -> spoofed client address -> ztunnel's socket.
		if _, err := s.Write([]byte("pong")); err != nil {
			t.Fatalf("app write: %v", err)
		}
		buf := make([]byte, 4)
		if _, err := c.Read(buf); err != nil || string(buf) != "pong" {
			t.Fatalf("ztunnel read reply = %q, %v; want pong", buf, err)
		}
	}
	noPending(t, p.in)
}

func TestProbeFromHostPasses(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	host := NewHostRules(zaptest.NewLogger(t))
	if err := host.Install(p.node.h, []netip.Addr{podIP, podIP6}); err != nil {
		t.Fatalf("host install: %v", err)
	}
	t.Cleanup(func() {
		if err := host.Remove(p.node.h); err != nil {
			t.Errorf("host remove: %v", err)
		}
	})
	for _, dst := range []netip.AddrPort{ap(podIP, 8080), ap(podIP6, 8080)} {
		dial(t, p.node, dst, SocketOptions{}, netip.Addr{})
		c := acceptLine(t, p.app, dst)
		want := ProbeSNATIPv4
		if dst.Addr().Is6() {
			want = ProbeSNATIPv6
		}
		if got := remoteAddr(c); got != want {
			t.Errorf("app sees probe from %s, want %s", got, want)
		}
		noPending(t, p.in)
	}

	// Without the pod in the set, the node's connection is ordinary
	// inbound traffic and is captured.
	if err := host.RemovePods(p.node.h, podIP, podIP6); err != nil {
		t.Fatalf("remove pods: %v", err)
	}
	if err := host.RemovePods(p.node.h, podIP); err != nil {
		t.Fatalf("remove absent pod: %v", err)
	}
	dst := ap(podIP, 8080)
	dial(t, p.node, dst, SocketOptions{}, netip.Addr{})
	acceptLine(t, p.in, dst)
	noPending(t, p.app)

	if err := host.AddPods(p.node.h, podIP); err != nil {
		t.Fatalf("add pod: %v", err)
	}
	if err := host.AddPods(p.node.h, podIP); err != nil {
		t.Fatalf("add pod twice: %v", err)
	}
	dial(t, p.node, dst, SocketOptions{}, netip.Addr{})
	acceptLine(t, p.app, dst)
	noPending(t, p.in)
}

func TestDNSCapture(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	dnsTCP := listen(t, p.pod, ":15053", ztunnelOpts)
	dst := ap(nodeIP, 53)
	dial(t, p.pod, dst, SocketOptions{}, netip.Addr{})
	c := acceptLine(t, dnsTCP, dst)
	checkOrigDst(t, c, dst)
	noPending(t, p.out)

	pc, err := ListenPacket(t.Context(), p.pod.h, "udp", ":15053", ztunnelOpts)
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	var uc net.Conn
	if err := Do(p.pod.h, func() error {
		var err error
		uc, err = net.Dial("udp", dst.String())
		return err
	}); err != nil {
		t.Fatalf("dial udp: %v", err)
	}
	t.Cleanup(func() { uc.Close() })
	if _, err := uc.Write([]byte("query")); err != nil {
		t.Fatalf("udp write: %v", err)
	}
	pc.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 16)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "query" {
		t.Fatalf("15053/udp read = %q from %v, %v; want the query", buf[:n], from, err)
	}

	// ztunnel forwards the query upstream with its mark, from the same pod:
	// it reaches the real server and the answer comes back (conntrack zone).
	upstream, err := ListenPacket(t.Context(), p.node.h, "udp", dst.String(), SocketOptions{})
	if err != nil {
		t.Fatalf("listen udp in node: %v", err)
	}
	t.Cleanup(func() { upstream.Close() })
	var zc net.Conn
	if err := Do(p.pod.h, func() error {
		var err error
		d := net.Dialer{Control: ztunnelOpts.Control}
		zc, err = d.Dial("udp", dst.String())
		return err
	}); err != nil {
		t.Fatalf("dial udp with mark: %v", err)
	}
	t.Cleanup(func() { zc.Close() })
	if _, err := zc.Write([]byte("upstream")); err != nil {
		t.Fatalf("udp write: %v", err)
	}
	upstream.SetReadDeadline(time.Now().Add(ioTimeout))
	n, from, err = upstream.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "upstream" {
		t.Fatalf("node :53 read = %q, %v; want ztunnel's query", buf[:n], err)
	}
	if _, err := upstream.WriteTo([]byte("answer"), from); err != nil {
		t.Fatalf("udp answer: %v", err)
	}
	zc.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := zc.Read(buf); err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("ztunnel read = %q, %v; want the answer", buf[:n], err)
	}
}

func TestInstallTwiceEqualsOnce(t *testing.T) {
	t.Parallel()
	for _, cfg := range []PodConfig{{DNSCapture: true}, {DNSCapture: false}} {
		topo := newPodTopology(t)
		r := NewPodRules(cfg, zaptest.NewLogger(t))
		if err := r.Install(topo.pod.h); err != nil {
			t.Fatalf("install: %v", err)
		}
		once := netnsState(t, topo.pod)
		if err := r.Install(topo.pod.h); err != nil {
			t.Fatalf("second install: %v", err)
		}
		if twice := netnsState(t, topo.pod); twice != once {
			t.Errorf("DNS=%v: after two installs:\n%s\nafter one:\n%s", cfg.DNSCapture, twice, once)
		}
		// Switching config replaces, it does not add.
		other := NewPodRules(PodConfig{DNSCapture: !cfg.DNSCapture}, zaptest.NewLogger(t))
		if err := other.Install(topo.pod.h); err != nil {
			t.Fatalf("install other config: %v", err)
		}
		if err := r.Install(topo.pod.h); err != nil {
			t.Fatalf("reinstall: %v", err)
		}
		if again := netnsState(t, topo.pod); again != once {
			t.Errorf("DNS=%v: after switching config back:\n%s\nwant:\n%s", cfg.DNSCapture, again, once)
		}
	}
}

func TestRemoveRestoresNetns(t *testing.T) {
	t.Parallel()
	topo := newPodTopology(t)
	// The primary CNI's own state, which must survive untouched.
	nftScript(t, topo.pod, `
table ip primary-cni {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.77.0.0/24 oifname "eth0" counter masquerade
	}
	chain output {
		type nat hook output priority -100; policy accept;
		tcp dport 15001 counter accept
	}
}
table inet filter {
	chain input {
		type filter hook input priority 0; policy accept;
		ct state established accept
	}
}
`)
	run(t, "ip", "-n", topo.pod.name, "rule", "add", "fwmark", "0x4000/0x4000", "lookup", "200", "pref", "1000")
	run(t, "ip", "-n", topo.pod.name, "route", "add", "10.200.0.0/16", "via", nodeIP.String(), "table", "200")
	before := netnsState(t, topo.pod)

	r := NewPodRules(PodConfig{DNSCapture: true}, zaptest.NewLogger(t))
	if err := r.Remove(topo.pod.h); err != nil {
		t.Fatalf("remove before install: %v", err)
	}
	if got := netnsState(t, topo.pod); got != before {
		t.Fatalf("remove of nothing changed the netns:\n%s\nwant:\n%s", got, before)
	}
	for range 2 {
		if err := r.Install(topo.pod.h); err != nil {
			t.Fatalf("install: %v", err)
		}
	}
	installed := netnsState(t, topo.pod)
	for _, want := range []string{"table inet " + PodTable, "fwmark 0x111/0xfff lookup 100", "local default dev lo table 100"} {
		if !strings.Contains(installed, want) {
			t.Errorf("installed state lacks %q:\n%s", want, installed)
		}
	}
	if ok, err := Installed(topo.pod.h); err != nil || !ok {
		t.Errorf("Installed = %v, %v; want true", ok, err)
	}
	for range 2 {
		if err := r.Remove(topo.pod.h); err != nil {
			t.Fatalf("remove: %v", err)
		}
	}
	if after := netnsState(t, topo.pod); after != before {
		t.Errorf("after install+remove:\n%s\nwant (before install):\n%s", after, before)
	}
	if ok, err := Installed(topo.pod.h); err != nil || ok {
		t.Errorf("Installed = %v, %v; want false", ok, err)
	}
}

// TestRulesGolden pins the exact table, as nft prints it, for review.
// Refresh with: go test ./pkg/redirect -run TestRulesGolden -update
func TestRulesGolden(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]PodConfig{"pod-rules-dns": {DNSCapture: true}, "pod-rules-nodns": {}} {
		t.Run(name, func(t *testing.T) {
			ns := newNS(t, "golden")
			if err := NewPodRules(cfg, zaptest.NewLogger(t)).Install(ns.h); err != nil {
				t.Fatalf("install: %v", err)
			}
			got := run(t, "ip", "netns", "exec", ns.name, "nft", "list", "table", "inet", PodTable)
			compareGolden(t, name, got)
		})
	}
	t.Run("host-rules", func(t *testing.T) {
		ns := newNS(t, "golden")
		pods := []netip.Addr{podIP, podIP6, netip.MustParseAddr("10.77.0.3")}
		if err := NewHostRules(zaptest.NewLogger(t)).Install(ns.h, pods); err != nil {
			t.Fatalf("host install: %v", err)
		}
		got := run(t, "ip", "netns", "exec", ns.name, "nft", "list", "table", "inet", HostTable)
		compareGolden(t, "host-rules", got)
	})
}

func compareGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (refresh with -update): %v", err)
	}
	if got != string(want) {
		t.Errorf("nft list table differs from %s (refresh with -update):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func nftScript(t *testing.T, ns testNS, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v: %s", ns.name, err, out)
	}
}

// TestReinstallHasNoWindow: while the rules are replaced again and again,
// every outbound connection is still captured; a window with the table half
// built (or absent) would let one through to the node.
func TestReinstallHasNoWindow(t *testing.T) {
	t.Parallel()
	p := newCapturedPod(t)
	r := NewPodRules(PodConfig{DNSCapture: true}, nil)
	const wantInstalls, maxDials = 50, 20000

	var installs atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := r.Install(p.pod.h); err != nil {
				done <- err
				return
			}
			installs.Add(1)
		}
	}()
	dst := ap(nodeIP, 8080)
	dials := 0
	for ; dials < maxDials && installs.Load() < wantInstalls; dials++ {
		c, err := Dial(t.Context(), p.pod.h, net.Dialer{Timeout: ioTimeout}, "tcp", dst.String(), SocketOptions{})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		p.out.SetDeadline(time.Now().Add(ioTimeout))
		s, err := p.out.Accept()
		c.Close()
		if err != nil {
			t.Fatalf("dial %d: accept on 15001: %v", dials, err)
		}
		s.Close()
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("install: %v", err)
	}
	noPending(t, p.nodeSrv)
	t.Logf("%d dials captured during %d reinstalls", dials, installs.Load())
	if installs.Load() < wantInstalls {
		t.Errorf("only %d reinstalls overlapped the dials, want %d", installs.Load(), wantInstalls)
	}
}

// TestConcurrentInstalls: PodRules may be used from many goroutines, also
// on the same netns; the result is the same as one install.
func TestConcurrentInstalls(t *testing.T) {
	t.Parallel()
	topo := newPodTopology(t)
	r := NewPodRules(PodConfig{DNSCapture: true}, nil)
	if err := r.Install(topo.pod.h); err != nil {
		t.Fatalf("install: %v", err)
	}
	once := netnsState(t, topo.pod)
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- r.Install(topo.pod.h) }()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("concurrent install: %v", err)
		}
	}
	if got := netnsState(t, topo.pod); got != once {
		t.Errorf("after concurrent installs:\n%s\nwant:\n%s", got, once)
	}
}

// TestInstallIPv4OnlyNetns: with IPv6 disabled in the pod, the IPv6 policy
// route is skipped (adding it would fail) and the rest works as usual.
func TestInstallIPv4OnlyNetns(t *testing.T) {
	t.Parallel()
	ns := newNS(t, "v4only")
	if err := Do(ns.h, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0)
	}); err != nil {
		t.Fatalf("disable ipv6: %v", err)
	}
	before := netnsState(t, ns)
	r := NewPodRules(PodConfig{DNSCapture: true}, zaptest.NewLogger(t))
	if err := r.Install(ns.h); err != nil {
		t.Fatalf("install: %v", err)
	}
	got := run(t, "ip", "-n", ns.name, "-4", "rule", "show")
	if !strings.Contains(got, "fwmark 0x111/0xfff lookup 100") {
		t.Errorf("no IPv4 policy rule after install:\n%s", got)
	}
	if got := run(t, "ip", "-n", ns.name, "-6", "rule", "show"); strings.Contains(got, "lookup 100") {
		t.Errorf("IPv6 policy rule in a netns without IPv6:\n%s", got)
	}
	if err := r.Remove(ns.h); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if after := netnsState(t, ns); after != before {
		t.Errorf("after install+remove:\n%s\nwant:\n%s", after, before)
	}
}

// TestFailedInstallLeavesNothing: an install that fails part way (here: the
// IPv6 local route, refused because loopback is down) reports the error and
// leaves the netns as it was, so a caller never runs half captured.
func TestFailedInstallLeavesNothing(t *testing.T) {
	t.Parallel()
	ns := newNS(t, "fail")
	nl := nlHandle(t, ns.h)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetDown(lo); err != nil {
		t.Fatal(err)
	}
	before := netnsState(t, ns)
	err = NewPodRules(PodConfig{DNSCapture: true}, zaptest.NewLogger(t)).Install(ns.h)
	if err == nil {
		t.Fatal("install with loopback down succeeded, want an error")
	}
	if !strings.Contains(err.Error(), "route replace") {
		t.Errorf("error %q does not name the failing netlink call", err)
	}
	if after := netnsState(t, ns); after != before {
		t.Errorf("after failed install:\n%s\nwant:\n%s", after, before)
	}
}

// TestFailedReinstallKeepsRules: when replacing the rules of a captured pod
// fails, the pod keeps its previous table and policy rule.
func TestFailedReinstallKeepsRules(t *testing.T) {
	t.Parallel()
	ns := newNS(t, "refail")
	r := NewPodRules(PodConfig{DNSCapture: true}, zaptest.NewLogger(t))
	if err := r.Install(ns.h); err != nil {
		t.Fatalf("install: %v", err)
	}
	nl := nlHandle(t, ns.h)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetDown(lo); err != nil {
		t.Fatal(err)
	}
	if err := r.Install(ns.h); err == nil {
		t.Fatal("reinstall with loopback down succeeded, want an error")
	}
	if ok, err := Installed(ns.h); err != nil || !ok {
		t.Errorf("Installed after failed reinstall = %v, %v; want true", ok, err)
	}
	if got := run(t, "ip", "-n", ns.name, "rule", "show"); !strings.Contains(got, "fwmark 0x111/0xfff lookup 100") {
		t.Errorf("policy rule gone after failed reinstall:\n%s", got)
	}
}

// TestRefusesHostNetns: a closed or absent netns handle must not make the
// rules land in the caller's (the node's) netns.
func TestRefusesHostNetns(t *testing.T) {
	r := NewPodRules(PodConfig{}, nil)
	for _, h := range []netns.NsHandle{netns.None(), netns.NsHandle(-1)} {
		if err := r.Install(h); !errors.Is(err, errHostNetns) {
			t.Errorf("Install(%d) = %v, want errHostNetns", h, err)
		}
		if err := r.Remove(h); !errors.Is(err, errHostNetns) {
			t.Errorf("Remove(%d) = %v, want errHostNetns", h, err)
		}
	}
}

// TestInstallEnablesListenerMigration: Install sets tcp_migrate_req in the
// pod's netns (and only there), so a closing ztunnel listener's queued
// connections move to the listener that replaces it.
func TestInstallEnablesListenerMigration(t *testing.T) {
	read := func(ns testNS) string {
		var v string
		if err := Do(ns.h, func() error {
			b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
			v = strings.TrimSpace(string(b))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	cp := newCapturedPod(t)
	if got := read(cp.pod); got != "1" {
		t.Errorf("tcp_migrate_req in the pod = %s, want 1", got)
	}
	if got := read(cp.node); got != "0" {
		t.Errorf("tcp_migrate_req in the node netns = %s, want 0 (untouched)", got)
	}
}

// TestQueuedConnectionMigrates: with the sysctl Install sets, a connection
// the kernel queued on one of two SO_REUSEPORT listeners survives that
// listener's close and is accepted by the other (ztunnel's handover).
func TestQueuedConnectionMigrates(t *testing.T) {
	cp := newCapturedPod(t)
	// Two listeners on one port, as the old and new ztunnel: dial until a
	// connection is queued on the first, then close it unaccepted.
	second := listen(t, cp.pod, ":15008", ztunnelOpts)
	first := cp.hbone
	const n = 16
	for range n {
		dial(t, cp.node, netip.AddrPortFrom(podIP, 15008), SocketOptions{}, netip.Addr{})
	}
	_ = first.Close()
	// Every connection is accepted by the second listener, none reset.
	_ = second.SetDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		c, err := second.Accept()
		if err != nil {
			t.Fatalf("accepted %d of %d connections on the remaining listener: %v", i, n, err)
		}
		c.Close()
	}
}
