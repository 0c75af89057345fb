// Package redirect captures a pod's traffic for the node's ztunnel, in the
// pod's own network namespace (Istio ambient's "in-pod" mode).
//
// It has three parts, imported by the CNI plugin, the node agent and ztunnel:
//
//   - Capture rules. [PodRules] installs, inside a pod's netns, one nftables
//     table of our own ([PodTable]) that redirects inbound TCP (except HBONE on
//     15008) to 15006, outbound TCP to 15001 and, optionally, DNS to 15053,
//     while letting ztunnel's own marked packets, loopback and kubelet probes
//     through. [HostRules] installs the node-side half: kubelet probes to
//     captured pods are SNATed to [ProbeSNATIPv4]/[ProbeSNATIPv6], which the
//     pod rules let pass. Both are one netlink batch, so each change is atomic.
//   - Sockets in a pod netns. [Do] runs a function on a locked OS thread inside
//     a netns; [Listen], [ListenPacket] and [Dial] create sockets there that
//     stay there; [SocketOptions.Control] sets SO_MARK, SO_REUSEPORT and
//     IP_TRANSPARENT.
//   - Original destination. [OriginalDst] reads the pre-REDIRECT destination
//     of an accepted connection (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
//
// The rules follow Istio's in-pod iptables rules (REDIRECT, not TPROXY)
// translated to nftables; see ../../shared/reference/istio-ambient-facts.md §5.
// The Linux implementation lives in the _linux.go files; elsewhere the
// functions return [ErrUnsupported].
package redirect

import (
	"errors"
	"net/netip"

	"go.uber.org/zap"
)

// Ports ztunnel listens on inside every captured pod's netns.
const (
	// OutboundPort receives the pod's outbound TCP (REDIRECT).
	OutboundPort = 15001
	// InboundPlaintextPort receives inbound TCP that is not HBONE (REDIRECT).
	InboundPlaintextPort = 15006
	// InboundHBONEPort receives HBONE; it is never redirected.
	InboundHBONEPort = 15008
	// DNSPort receives the pod's DNS (UDP and TCP 53) when DNS capture is on.
	DNSPort = 15053
)

// Marks, masks and routing table, the same values Istio uses so that a
// ztunnel written for Istio works unchanged.
const (
	// ZtunnelMark is the SO_MARK ztunnel puts on every socket it opens in a
	// pod netns; packets carrying it (under ZtunnelMask) are never redirected.
	ZtunnelMark = 0x539
	// ZtunnelMask selects the bits of ZtunnelMark.
	ZtunnelMask = 0xfff
	// ConnMark is put on connections ztunnel opens to a pod's app (connmark),
	// and restored on the app's replies so policy routing delivers them back
	// to ztunnel's transparent socket.
	ConnMark = 0x111
	// ConnMask selects the bits of ConnMark.
	ConnMask = 0xfff
	// RouteTable is the policy-routing table holding `local default dev lo`.
	RouteTable = 100
	// RulePriority is the priority of the `fwmark ConnMark/ConnMask` rule.
	RulePriority = 32764
	// DNSConntrackZone separates ztunnel's upstream DNS from the app's.
	DNSConntrackZone = 1
)

// Table names. Each is the only nftables object we create in its netns, so
// removing it restores the netns exactly.
const (
	// PodTable is the inet table holding the capture rules in a pod netns.
	PodTable = "ambient-mesh"
	// HostTable is the inet table holding the probe SNAT in the node netns.
	HostTable = "ambient-mesh-host"
)

// Kubelet probe source addresses, as in Istio. The node SNATs probes from
// local sockets to captured pods to these; pods let them bypass capture.
var (
	ProbeSNATIPv4 = netip.MustParseAddr("169.254.7.127")
	ProbeSNATIPv6 = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
)

// ErrUnsupported is returned on platforms without network namespaces.
var ErrUnsupported = errors.New("redirect: network namespaces are only supported on linux")

// PodConfig chooses what the capture rules in a pod capture.
type PodConfig struct {
	// DNSCapture redirects the pod's DNS (UDP and TCP to port 53, not over
	// loopback) to ztunnel's DNSPort. Istio's default is on.
	DNSCapture bool
}

// PodRules installs and removes the capture rules in pod network namespaces.
//
// What Install puts in the pod netns, and nothing else:
//
//   - the nftables table [PodTable] (family inet, both IPv4 and IPv6), written
//     out in testdata/pod-rules-dns.golden; it is replaced as a whole in one
//     netlink batch, so the pod never sees half of it;
//   - policy routing for replies to ztunnel's transparent sockets:
//     `ip rule fwmark 0x111/0xfff lookup 100 pref 32764` and
//     `ip route add local default dev lo table 100` (and the IPv6 pair when
//     the netns has IPv6). Without the marks the nftables rules set, these are
//     inert, so they are added before the table and removed after it.
//
// Install is idempotent: installing twice leaves what installing once does.
// Remove deletes exactly those objects (and is idempotent too), so a netns
// that had its own nftables tables, rules and routes gets them back unchanged.
//
// How the table differs from Istio's iptables rules (istio-ambient-facts §5.2):
// all traffic leaving through lo passes (Istio still redirects TCP DNS over lo
// to addresses other than 127.0.0.1), and inbound "not to 127.0.0.1" is
// written `iifname "lo" accept`; packets over lo are NATed, if at all, in
// OUTPUT, so the two agree for everything but that DNS corner.
//
// A PodRules holds no state about pods: every call opens its own netlink
// sockets in the target netns, so it is safe for concurrent use, also on the
// same netns (the kernel serialises nftables transactions; concurrent
// installs of the same config converge to the same table). Callers serialise
// Install against Remove for one pod, as the node agent does per pod.
//
// Cost, measured on the 2-core development host: about 13 ms per Install,
// nearly all of it the kernel committing the nftables transaction (the nft
// binary takes as long per transaction).
type PodRules struct {
	cfg PodConfig
	log *zap.Logger
}

// NewPodRules returns a PodRules installing cfg. A nil log discards.
func NewPodRules(cfg PodConfig, log *zap.Logger) *PodRules {
	if log == nil {
		log = zap.NewNop()
	}
	return &PodRules{cfg: cfg, log: log.Named("redirect")}
}

// HostRules is the node-side half of probe handling. Kubelet probes a pod
// from the node's own address, which the pod's capture rules cannot tell from
// any other inbound connection. So, in the node netns, connections that a
// local socket (kubelet, or any host-network process) opens to a captured
// pod's IP are SNATed to [ProbeSNATIPv4] (IPv6: [ProbeSNATIPv6]); the pod's
// rules let those through to the app, and the pod answers along its default
// route to the node, where conntrack undoes the SNAT. This is Istio's
// `-m owner --socket-exists ... -j SNAT --to-source 169.254.7.127`, written as
//
//	table inet ambient-mesh-host {
//		set probe-pods-v4 { type ipv4_addr }
//		set probe-pods-v6 { type ipv6_addr }
//		chain nat-postrouting {
//			type nat hook postrouting priority srcnat - 1; policy accept;
//			meta l4proto tcp ip daddr @probe-pods-v4 meta skuid >= 0 snat ip to 169.254.7.127
//			meta l4proto tcp ip6 daddr @probe-pods-v6 meta skuid >= 0 snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff
//		}
//	}
//
// `meta skuid >= 0` is "sent by a local socket": forwarded packets have none
// and do not match. The node agent keeps the sets equal to the IPs of the
// pods it captured, with [HostRules.AddPods] and [HostRules.RemovePods].
//
// Like [PodRules] a HostRules holds no state; every call is one netlink batch
// in the given netns (the current one if ns is not open), so it is safe for
// concurrent use.
type HostRules struct {
	log *zap.Logger
}

// NewHostRules returns a HostRules. A nil log discards.
func NewHostRules(log *zap.Logger) *HostRules {
	if log == nil {
		log = zap.NewNop()
	}
	return &HostRules{log: log.Named("redirect-host")}
}

// SocketOptions are the socket options ztunnel sets on the sockets it opens in
// a pod netns. The zero value sets none.
type SocketOptions struct {
	// Mark sets SO_MARK (needs CAP_NET_ADMIN). Use [ZtunnelMark] so the
	// capture rules let the socket's packets through. 0 leaves it unset.
	Mark uint32
	// ReusePort sets SO_REUSEPORT, so a new ztunnel can listen beside the
	// old one during an upgrade.
	ReusePort bool
	// Transparent sets IP_TRANSPARENT (IPV6_TRANSPARENT for IPv6 sockets):
	// binding to a non-local address, as when dialing an app from the
	// original client's IP (needs CAP_NET_ADMIN).
	Transparent bool
}
