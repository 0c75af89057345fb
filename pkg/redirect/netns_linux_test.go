package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestDoRunsInNetnsAndRestores(t *testing.T) {
	t.Parallel()
	ns := newNS(t, "do")
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	var inside bool
	if err := Do(ns.h, func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		inside = cur.Equal(ns.h)
		return nil
	}); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if !inside {
		t.Error("fn did not run in the target netns")
	}

	sentinel := errors.New("from fn")
	if err := Do(ns.h, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want fn's error", err)
	}
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v from Do, want fn's panic", p)
			}
		}()
		Do(ns.h, func() error { panic("boom") })
	}()
	if err := Do(netns.None(), func() error { return nil }); err == nil {
		t.Error("Do into a closed handle: no error")
	}

	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Error("caller's thread changed netns")
	}

	// Threads Do used go back to the pool in the original netns: after many
	// calls, no thread of the process is left in ns.
	for range 50 {
		if err := Do(ns.h, func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.h), &st); err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("net:[%d]", st.Ino)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		link, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err != nil {
			continue // the thread exited meanwhile
		}
		if link == target {
			t.Errorf("thread %s is still in the netns Do used", task.Name())
		}
	}
}

// TestListenerOnlyInItsNetns: a listener opened in one netns accepts there
// and only there.
func TestListenerOnlyInItsNetns(t *testing.T) {
	t.Parallel()
	topo := newPodTopology(t)
	other := newNS(t, "other")
	lo := listen(t, topo.pod, "127.0.0.1:9000", SocketOptions{})
	all := listen(t, topo.pod, ":9001", SocketOptions{})

	dst := ap(netip.MustParseAddr("127.0.0.1"), 9000)
	dial(t, topo.pod, dst, SocketOptions{}, netip.Addr{})
	acceptLine(t, lo, dst)

	// The same address in other namespaces has nothing behind it.
	for _, ns := range []testNS{topo.node, other} {
		_, err := Dial(t.Context(), ns.h, net.Dialer{Timeout: ioTimeout}, "tcp", dst.String(), SocketOptions{})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial %s from %s: err = %v, want connection refused", dst, ns.name, err)
		}
	}
	// The wildcard listener is reachable at the pod's address from the node.
	dst = ap(podIP, 9001)
	dial(t, topo.node, dst, SocketOptions{}, netip.Addr{})
	acceptLine(t, all, dst)
	noPending(t, lo)

	// Sockets belong to the netns they were created in.
	cookie := func(fd int) uint64 {
		v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			t.Fatalf("getsockopt SO_NETNS_COOKIE: %v", err)
		}
		return v
	}
	var podCookie uint64
	if err := Do(topo.pod.h, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		podCookie = cookie(fd)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := withFD(t, lo, cookie); got != podCookie {
		t.Errorf("listener netns cookie = %d, want the pod's %d", got, podCookie)
	}
}

func TestSocketOptionsApplied(t *testing.T) {
	t.Parallel()
	ns := newNS(t, "sockopt")
	o := SocketOptions{Mark: ZtunnelMark, ReusePort: true, Transparent: true}
	for _, addr := range []string{"0.0.0.0:15001", "[::]:15001"} {
		network := "tcp4"
		if addr[0] == '[' {
			network = "tcp6"
		}
		ln, err := Listen(t.Context(), ns.h, network, addr, o)
		if err != nil {
			t.Fatalf("listen %s: %v", addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		// SO_REUSEPORT: a second ztunnel can listen on the same port.
		ln2, err := Listen(t.Context(), ns.h, network, addr, o)
		if err != nil {
			t.Fatalf("second listen %s with SO_REUSEPORT: %v", addr, err)
		}
		ln2.Close()
		if _, err := Listen(t.Context(), ns.h, network, addr, SocketOptions{}); err == nil {
			t.Errorf("listen %s without SO_REUSEPORT succeeded: option not effective", addr)
		}

		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if network == "tcp6" {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		for _, c := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"SO_MARK", unix.SOL_SOCKET, unix.SO_MARK, ZtunnelMark},
			{"SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
			{"transparent", level, opt, 1},
		} {
			got := withFD(t, ln.(*net.TCPListener), func(fd int) int {
				v, err := unix.GetsockoptInt(fd, c.level, c.opt)
				if err != nil {
					t.Fatalf("getsockopt %s: %v", c.name, err)
				}
				return v
			})
			if got != c.want {
				t.Errorf("%s %s = %#x, want %#x", addr, c.name, got, c.want)
			}
		}
	}
}

// TestOriginalDstUntracked: without conntrack (no NAT rule in the netns)
// there is no original destination to read, and OriginalDst says so.
func TestOriginalDstUntracked(t *testing.T) {
	t.Parallel()
	ns := newNS(t, "origdst")
	ln := listen(t, ns, "127.0.0.1:7000", SocketOptions{})
	dst := ap(netip.MustParseAddr("127.0.0.1"), 7000)
	dial(t, ns, dst, SocketOptions{}, netip.Addr{})
	c := acceptLine(t, ln, dst)
	if got, err := OriginalDst(c); !errors.Is(err, unix.ENOENT) {
		t.Errorf("OriginalDst of an untracked conn = %v, %v; want ENOENT", got, err)
	}
	if _, err := OriginalDst(&net.UDPConn{}); err == nil {
		t.Error("OriginalDst of a UDP conn: no error")
	}
}

func withFD[T any](t *testing.T, c syscall.Conn, f func(fd int) T) T {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := rc.Control(func(fd uintptr) { v = f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	return v
}
