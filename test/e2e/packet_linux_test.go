package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/mesh/pkg/redirect"
)

// veth is a pod's host-side interface.
type veth struct {
	name  string
	index int
}

// hostVeth finds the host end of the pod's eth0 (a ptp veth pair): the
// peer index eth0 reports inside the pod's netns, looked up on the host.
func hostVeth(t *testing.T, p pod) veth {
	t.Helper()
	h, err := netlink.NewHandleAt(podNetns(t, p))
	if err != nil {
		t.Fatalf("netlink in pod %s: %v", p.Metadata.Name, err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("pod %s: eth0: %v", p.Metadata.Name, err)
	}
	peer, err := netlink.LinkByIndex(eth0.Attrs().ParentIndex)
	if err != nil {
		t.Fatalf("pod %s: host end of eth0 (ifindex %d): %v", p.Metadata.Name, eth0.Attrs().ParentIndex, err)
	}
	return veth{name: peer.Attrs().Name, index: peer.Attrs().Index}
}

// captureStats counts what a capture saw.
type captureStats struct {
	frames   int // every frame read
	hbone    int // IPv4 TCP frames from or to port 15008
	plainTCP int // IPv4 TCP frames from or to port 9000 (the app's, in clear), but kubelet's probes (from the node or its probe SNAT address)
	marker   int // frames whose bytes contain the marker
	// plainSamples describes the first plaintext frames (addresses, ports,
	// TCP flags, payload length), to tell stray handshakes from app data.
	plainSamples []string
}

// capture reads every frame of one interface with an AF_PACKET socket
// (tcpdump is not on the node) until stop.
type capture struct {
	fd     int
	marker []byte
	mu     sync.Mutex
	st     captureStats
	done   chan struct{}
	stopFn func()
}

// startCapture opens the socket on v and counts frames in the background,
// and those that carry marker.
func startCapture(t *testing.T, v veth, marker string) *capture {
	t.Helper()
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("socket(AF_PACKET): %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: v.index}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind AF_PACKET to %s: %v", v.name, err)
	}
	// A short receive timeout lets the reader notice stop.
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatalf("SO_RCVTIMEO: %v", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	c := &capture{fd: fd, marker: []byte(marker), done: make(chan struct{})}
	stopped := make(chan struct{})
	go c.read(stopped)
	var once sync.Once
	c.stopFn = func() { once.Do(func() { close(stopped); <-c.done; unix.Close(fd) }) }
	t.Cleanup(c.stopFn)
	return c
}

func (c *capture) read(stopped chan struct{}) {
	defer close(c.done)
	buf := make([]byte, 256<<10)
	for {
		select {
		case <-stopped:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue // EAGAIN on the timeout, EINTR
		}
		c.count(buf[:n])
	}
}

func (c *capture) count(f []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.frames++
	if bytes.Contains(f, c.marker) {
		c.st.marker++
	}
	// Ethernet (14 bytes; ptp veths carry Ethernet headers), IPv4, TCP.
	if len(f) < 14+20+4 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+4 {
		return
	}
	src, dst := binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
	node := netip.MustParseAddr(nodeIP).As4()
	// kubelet's probes come from the node, SNATed by the capture rules to
	// redirect.ProbeSNATIPv4 so that they bypass ztunnel.
	probe := redirect.ProbeSNATIPv4.As4()
	fromNode := bytes.Equal(ip[12:16], node[:]) || bytes.Equal(ip[16:20], node[:]) ||
		bytes.Equal(ip[12:16], probe[:]) || bytes.Equal(ip[16:20], probe[:])
	switch {
	case src == 15008 || dst == 15008:
		c.st.hbone++
	case (src == 9000 || dst == 9000) && !fromNode:
		c.st.plainTCP++
		if len(ip) < ihl+14 {
			break
		}
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		doff := int(ip[ihl+12]>>4) * 4
		if len(c.st.plainSamples) < 8 {
			c.st.plainSamples = append(c.st.plainSamples, fmt.Sprintf("%s:%d->%s:%d flags=%#02x payload=%d",
				netip.AddrFrom4([4]byte(ip[12:16])), src, netip.AddrFrom4([4]byte(ip[16:20])), dst, ip[ihl+13], total-ihl-doff))
		}
	}
}

// stop ends the capture and returns what it saw.
func (c *capture) stop() captureStats {
	c.stopFn()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
