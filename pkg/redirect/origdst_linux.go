package redirect

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// which x/sys/unix does not name; it equals SO_ORIGINAL_DST at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination a redirected connection was addressed
// to before REDIRECT rewrote it, read from conntrack with SO_ORIGINAL_DST
// (IPv4, also for v4-mapped connections on a dual-stack socket) or
// IP6T_SO_ORIGINAL_DST (IPv6). For a tracked connection that was not
// redirected it is the connection's own local address; for one conntrack does
// not track (no NAT rule in its netns) the error wraps ENOENT. c must be a
// *net.TCPConn or another syscall.Conn on a TCP socket.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: %T has no socket", c)
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: local address %v is not TCP", c.LocalAddr())
	}
	v4 := local.AddrPort().Addr().Unmap().Is4()
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: %w", err)
	}
	var ap netip.AddrPort
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		if v4 {
			ap, opErr = origDst4(int(fd))
		} else {
			ap, opErr = origDst6(int(fd))
		}
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: raw conn control: %w", err)
	}
	return ap, opErr
}

func origDst4(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unix.SizeofSockaddrInet4); err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: getsockopt SO_ORIGINAL_DST: %w", err)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
}

func origDst6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa), unix.SizeofSockaddrInet6); err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), nil
}

// getsockopt is getsockopt(2) into a caller-sized buffer, which x/sys/unix
// offers only for fixed types.
func getsockopt(fd, level, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
