//go:build !linux

package redirect

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netns"
)

// Stubs: capture needs Linux network namespaces and nftables.

func (r *PodRules) Install(netns.NsHandle) error                 { return ErrUnsupported }
func (r *PodRules) Remove(netns.NsHandle) error                  { return ErrUnsupported }
func Installed(netns.NsHandle) (bool, error)                     { return false, ErrUnsupported }
func (h *HostRules) Install(netns.NsHandle, []netip.Addr) error  { return ErrUnsupported }
func (h *HostRules) AddPods(netns.NsHandle, ...netip.Addr) error { return ErrUnsupported }
func (h *HostRules) RemovePods(netns.NsHandle, ...netip.Addr) error {
	return ErrUnsupported
}
func (h *HostRules) Remove(netns.NsHandle) error { return ErrUnsupported }
func Do(netns.NsHandle, func() error) error      { return ErrUnsupported }
func (o SocketOptions) Control(string, string, syscall.RawConn) error {
	return ErrUnsupported
}
func Listen(context.Context, netns.NsHandle, string, string, SocketOptions) (net.Listener, error) {
	return nil, ErrUnsupported
}
func ListenPacket(context.Context, netns.NsHandle, string, string, SocketOptions) (net.PacketConn, error) {
	return nil, ErrUnsupported
}
func Dial(context.Context, netns.NsHandle, net.Dialer, string, string, SocketOptions) (net.Conn, error) {
	return nil, ErrUnsupported
}
func OriginalDst(net.Conn) (netip.AddrPort, error) { return netip.AddrPort{}, ErrUnsupported }
