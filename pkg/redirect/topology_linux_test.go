package redirect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The test topology: "pods" are network namespaces this test creates, each
// joined to a "node" namespace (standing in for the host, whose own netns
// the tests never touch) by a veth pair. Names carry the test process's pid
// and a counter so parallel tests and parallel runs do not collide; every
// namespace is deleted in t.Cleanup, which runs even when the test fails.

var (
	nodeIP  = netip.MustParseAddr("10.77.0.1")
	podIP   = netip.MustParseAddr("10.77.0.2")
	nodeIP6 = netip.MustParseAddr("fd00:77::1")
	podIP6  = netip.MustParseAddr("fd00:77::2")
)

// ioTimeout bounds every wait on the network in these tests.
const ioTimeout = 5 * time.Second

var nsSeq atomic.Int64

type testNS struct {
	name string
	h    netns.NsHandle
}

// newNS creates a named netns with loopback up.
func newNS(t testing.TB, role string) testNS {
	t.Helper()
	testenv.RequireRoot(t)
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(t, "needs the %s binary (Debian iproute2, nftables; hack/install-deps.sh): %v", bin, err)
		}
	}
	name := fmt.Sprintf("rdt%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	// No duplicate address detection: IPv6 addresses, link-local ones
	// included, are usable at once instead of after about a second.
	if err := Do(h, func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("netns %s: sysctl accept_dad: %v", name, err)
	}
	nl := nlHandle(t, h)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("netns %s: get lo: %v", name, err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatalf("netns %s: set lo up: %v", name, err)
	}
	return testNS{name: name, h: h}
}

func nlHandle(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// podTopology is a node netns and a pod netns joined by a veth pair, with
// IPv4 and IPv6 addresses and the pod's default routes via the node.
type podTopology struct {
	node, pod testNS
}

func newPodTopology(t *testing.T) podTopology {
	t.Helper()
	node, pod := newNS(t, "node"), newNS(t, "pod")
	nl := nlHandle(t, node.h)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "vpod"},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(pod.h)),
	}
	if err := nl.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	setupLink(t, nl, "vpod", nodeIP, nodeIP6, netip.Addr{}, netip.Addr{})
	podNL := nlHandle(t, pod.h)
	setupLink(t, podNL, "eth0", podIP, podIP6, nodeIP, nodeIP6)
	// The kernel reports carrier asynchronously (linkwatch, up to a second
	// later), IPv6 drops packets on a link without it, and the link-local
	// address and its routes appear after that. Wait until all is in place,
	// so the netns state the tests compare does not change under them.
	waitSettled(t, nl, "vpod")
	waitSettled(t, podNL, "eth0")
	return podTopology{node: node, pod: pod}
}

// waitSettled polls, bounded, until the link is operationally up, has an
// IPv6 link-local address, and every IPv6 address of it is past DAD with its
// local route installed.
func waitSettled(t *testing.T, nl *netlink.Handle, name string) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		why := settled(nl, name)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("link %s not settled after %s: %s", name, ioTimeout, why)
		}
		<-tick.C
	}
}

// settled says what link name still lacks, or "" when it is ready.
func settled(nl *netlink.Handle, name string) string {
	l, err := nl.LinkByName(name)
	if err != nil {
		return err.Error()
	}
	if st := l.Attrs().OperState; st != netlink.OperUp {
		return "operstate " + st.String()
	}
	addrs, err := nl.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return err.Error()
	}
	local, err := nl.RouteListFiltered(netlink.FAMILY_V6,
		&netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return err.Error()
	}
	linkLocal := false
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			linkLocal = true
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return a.IP.String() + " tentative"
		}
		found := false
		for _, r := range local {
			found = found || (r.Dst != nil && r.Dst.IP.Equal(a.IP) && r.Type == unix.RTN_LOCAL)
		}
		if !found {
			return "no local route for " + a.IP.String()
		}
	}
	if !linkLocal {
		return "no IPv6 link-local address"
	}
	return ""
}

// setupLink addresses and raises a link and, given gateways, adds default
// routes through them.
func setupLink(t *testing.T, nl *netlink.Handle, name string, a4, a6, gw4, gw6 netip.Addr) {
	t.Helper()
	l, err := nl.LinkByName(name)
	if err != nil {
		t.Fatalf("get link %s: %v", name, err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(a4, 24), netip.PrefixFrom(a6, 64)} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		addr.Flags = unix.IFA_F_NODAD // usable at once, no DAD wait
		if err := nl.AddrAdd(l, addr); err != nil {
			t.Fatalf("add addr %s to %s: %v", a, name, err)
		}
	}
	if err := nl.LinkSetUp(l); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
	for _, gw := range []netip.Addr{gw4, gw6} {
		if !gw.IsValid() {
			continue
		}
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("add default route via %s: %v", gw, err)
		}
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// listen opens a TCP listener in ns, closed at cleanup.
func listen(t *testing.T, ns testNS, addr string, o SocketOptions) *net.TCPListener {
	t.Helper()
	ln, err := Listen(t.Context(), ns.h, "tcp", addr, o)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dial connects from ns to addr and sends a line, so the receiving side can
// prove which connection it got. The conn is closed at cleanup.
func dial(t *testing.T, ns testNS, addr netip.AddrPort, o SocketOptions, local netip.Addr) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), ioTimeout)
	defer cancel()
	d := net.Dialer{}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	c, err := Dial(ctx, ns.h, d, "tcp", addr.String(), o)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.name, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, "hello "+addr.String()+"\n"); err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	return c
}

// acceptLine waits (bounded) for a connection on ln, reads its first line and
// checks it names want, the address the client dialed.
func acceptLine(t *testing.T, ln *net.TCPListener, want netip.AddrPort) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(ioTimeout))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept on %s (want the connection to %s): %v", ln.Addr(), want, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	line := make([]byte, 0, 64)
	buf := make([]byte, 1)
	for len(line) < 64 {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("read on %s: %v", ln.Addr(), err)
		}
		if buf[0] == '\n' {
			break
		}
		line = append(line, buf[0])
	}
	if got := string(line); got != "hello "+want.String() {
		t.Fatalf("on %s got %q, want the connection to %s", ln.Addr(), got, want)
	}
	return c
}

// noPending checks that ln has no connection waiting. Call it after the
// connection under test was accepted elsewhere: a misrouted one would
// already sit in ln's backlog.
func noPending(t *testing.T, ln *net.TCPListener) {
	t.Helper()
	ln.SetDeadline(time.Now())
	c, err := ln.Accept()
	if err == nil {
		c.Close()
		t.Fatalf("listener %s got a connection it should not have (from %s)", ln.Addr(), c.RemoteAddr())
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func remoteAddr(c net.Conn) netip.Addr {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
}

// netnsState is everything Install may change in a netns, as text.
func netnsState(t *testing.T, ns testNS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "netns", "exec", ns.name, "nft", "list", "ruleset"},
		{"ip", "-n", ns.name, "-4", "rule", "show"},
		{"ip", "-n", ns.name, "-6", "rule", "show"},
		{"ip", "-n", ns.name, "-4", "route", "show", "table", "all"},
		{"ip", "-n", ns.name, "-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "# %s\n%s", strings.Join(args, " "), run(t, args[0], args[1:]...))
	}
	return b.String()
}
