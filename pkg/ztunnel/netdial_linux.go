package ztunnel

import (
	"fmt"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/mesh/pkg/redirect"
)

// nsControl returns a net.Dialer Control func that moves the socket being
// dialed into the pod's netns: it opens a socket of the same family inside
// ns and dup3()s it over the fd the dialer created, before the dialer binds,
// connects or registers the fd with the poller (Control runs before all
// three), then applies o. This lets pkg/hbone's pooled client, which dials
// on its own goroutines, open each tunnel connection from inside the source
// pod's netns, as ztunnel does in in-pod mode. (A Dial hook on
// hbone.ClientConfig would make this unnecessary.)
func nsControl(ns netns.NsHandle, o redirect.SocketOptions) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var opErr error
		err := c.Control(func(fd uintptr) {
			domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
			if err != nil {
				opErr = fmt.Errorf("getsockopt SO_DOMAIN: %w", err)
				return
			}
			v6only := -1
			if domain == unix.AF_INET6 {
				if v6only, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil {
					opErr = fmt.Errorf("getsockopt IPV6_V6ONLY: %w", err)
					return
				}
			}
			nfd := -1
			if err := redirect.Do(ns, func() error {
				var err error
				nfd, err = unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
				return err
			}); err != nil {
				opErr = fmt.Errorf("socket in pod netns: %w", err)
				return
			}
			defer unix.Close(nfd)
			if v6only >= 0 {
				if err := unix.SetsockoptInt(nfd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
					opErr = fmt.Errorf("setsockopt IPV6_V6ONLY: %w", err)
					return
				}
			}
			if err := unix.Dup3(nfd, int(fd), unix.O_CLOEXEC); err != nil {
				opErr = fmt.Errorf("dup3 pod socket: %w", err)
			}
		})
		if err != nil {
			return err
		}
		if opErr != nil {
			return opErr
		}
		return o.Control(network, address, c)
	}
}
