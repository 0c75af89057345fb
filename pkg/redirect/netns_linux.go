package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn on a fresh goroutine whose OS thread is locked and switched into
// the network namespace ns, and returns fn's error. The caller's goroutine and
// thread never change namespace.
//
// Sockets fn creates belong to ns for their whole life, wherever they are
// used afterwards. fn must not start goroutines that expect to be in ns (they
// run on other threads), and should not block for long: it holds an OS thread.
//
// A panic in fn is re-raised on the caller's goroutine, after the thread is
// switched back. If the thread cannot be switched back, it is not unlocked,
// so the runtime throws it away rather than reuse a thread in the wrong
// namespace.
func Do(ns netns.NsHandle, fn func() error) error {
	type result struct {
		err      error
		panicked any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("redirect: open current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("redirect: setns into %s: %w", ns, err)}
			return
		}
		var res result
		func() {
			defer func() { res.panicked = recover() }()
			res.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the goroutine exits and the thread dies with it.
			res.err = errors.Join(res.err, fmt.Errorf("redirect: setns back to %s: %w", orig, err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panicked != nil {
		panic(res.panicked)
	}
	return res.err
}

// Control is a net.ListenConfig / net.Dialer Control func setting o.
func (o SocketOptions) Control(network, address string, c syscall.RawConn) error {
	var opErr error
	err := c.Control(func(fd uintptr) {
		opErr = o.apply(int(fd), network)
	})
	if err != nil {
		return fmt.Errorf("redirect: raw conn control: %w", err)
	}
	return opErr
}

func (o SocketOptions) apply(fd int, network string) error {
	if o.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
			return fmt.Errorf("redirect: setsockopt SO_MARK %#x: %w", o.Mark, err)
		}
	}
	if o.ReusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("redirect: setsockopt SO_REUSEPORT: %w", err)
		}
	}
	if o.Transparent {
		// Go opens "tcp"/"udp" sockets as AF_INET6 dual-stack unless the
		// address is IPv4; ask the socket rather than guess from network.
		dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			return fmt.Errorf("redirect: getsockopt SO_DOMAIN: %w", err)
		}
		// Both options set the same socket flag; an AF_INET6 socket (Go's
		// dual-stack default) takes the IPv6 one.
		level, opt, name := unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
		if dom == unix.AF_INET6 {
			level, opt, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
		}
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return fmt.Errorf("redirect: setsockopt %s: %w", name, err)
		}
	}
	return nil
}

// Listen opens a stream listener (network "tcp", "tcp4" or "tcp6") on address
// inside ns with the options o. The listener stays in ns: it accepts
// connections made there and nowhere else.
func Listen(ctx context.Context, ns netns.NsHandle, network, address string, o SocketOptions) (net.Listener, error) {
	var ln net.Listener
	err := Do(ns, func() error {
		lc := net.ListenConfig{Control: o.Control}
		var err error
		ln, err = lc.Listen(ctx, network, address)
		if err != nil {
			return fmt.Errorf("redirect: listen %s %s in netns: %w", network, address, err)
		}
		return nil
	})
	return ln, err
}

// ListenPacket opens a packet socket (e.g. "udp" for DNS on [DNSPort]) on
// address inside ns with the options o.
func ListenPacket(ctx context.Context, ns netns.NsHandle, network, address string, o SocketOptions) (net.PacketConn, error) {
	var pc net.PacketConn
	err := Do(ns, func() error {
		lc := net.ListenConfig{Control: o.Control}
		var err error
		pc, err = lc.ListenPacket(ctx, network, address)
		if err != nil {
			return fmt.Errorf("redirect: listen %s %s in netns: %w", network, address, err)
		}
		return nil
	})
	return pc, err
}

// Dial connects to address from inside ns with the options o; d supplies
// the rest (timeout, LocalAddr, keepalive) and its ControlContext or Control,
// if any, runs after o's. The connection's socket lives in ns. The address
// should be a literal IP: name resolution would also run in ns.
func Dial(ctx context.Context, ns netns.NsHandle, d net.Dialer, network, address string, o SocketOptions) (net.Conn, error) {
	inner, innerCtx := d.Control, d.ControlContext
	d.Control = nil
	d.ControlContext = func(ctx context.Context, network, address string, c syscall.RawConn) error {
		if err := o.Control(network, address, c); err != nil {
			return err
		}
		switch {
		case innerCtx != nil:
			return innerCtx(ctx, network, address, c)
		case inner != nil:
			return inner(network, address, c)
		}
		return nil
	}
	var conn net.Conn
	err := Do(ns, func() error {
		var err error
		conn, err = d.DialContext(ctx, network, address)
		if err != nil {
			return fmt.Errorf("redirect: dial %s %s in netns: %w", network, address, err)
		}
		return nil
	})
	return conn, err
}
