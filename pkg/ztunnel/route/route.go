// Package route decides where ztunnel sends an outbound connection: a pure
// function (Outbound) of a state snapshot, the source workload and the
// original destination, returning a Request that says whether to open an
// HBONE stream (tunnel address, :authority, expected peer identities) or a
// plain TCP connection, following DESIGN.md §5 and
// istio-ambient-facts §1.9 (zt:src/proxy/outbound.rs build_request).
//
// The proxy (pkg/ztunnel) imports it; the tests are tables of snapshots.
package route

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// Ports ztunnel listens on in every pod; a connection to one of them on the
// pod's own address or loopback would loop back into ztunnel.
const (
	OutboundPort         = 15001
	InboundPlaintextPort = 15006
	HBONEPort            = 15008
	DNSPort              = 15053
)

// OwnPorts are the ports Outbound refuses on a loop destination.
var OwnPorts = []uint16{OutboundPort, InboundPlaintextPort, HBONEPort, DNSPort}

// Kind says how to reach the destination.
type Kind uint8

const (
	// Passthrough is plain TCP to Dial (out of the mesh, or NONE protocol).
	Passthrough Kind = iota
	// HBONE is an HBONE stream to Dial (a tunnel port) with Authority.
	HBONE
)

func (k Kind) String() string {
	if k == HBONE {
		return "hbone"
	}
	return "passthrough"
}

// Request describes the upstream of one outbound connection.
type Request struct {
	Kind Kind
	// Dial is the TCP address to connect to: podIP:15008 (or the waypoint's
	// HBONE port) for HBONE, the destination itself for passthrough.
	Dial netip.AddrPort
	// Authority is the CONNECT target for HBONE: podIP:targetPort, or the
	// original VIP:port (or podIP:port) when sent through a waypoint.
	Authority string
	// Identities the tunnel peer may present (HBONE only).
	Identities []spiffeid.ID
	// Service is the destination service when the connection was addressed
	// to a VIP; Workload the chosen endpoint (or the waypoint's workload).
	Service  *workloadapi.Service
	Workload *workloadapi.Workload
	// Waypoint is set when the request goes through a waypoint.
	Waypoint bool
}

// Errors Outbound returns.
var (
	// ErrLoop: the destination is one of ztunnel's own listeners.
	ErrLoop = errors.New("destination is ztunnel's own port")
	// ErrNoHealthyUpstream: a service with no healthy endpoint.
	ErrNoHealthyUpstream = errors.New("no healthy upstream")
	// ErrUnknownWaypoint: the waypoint a destination names is not in the state.
	ErrUnknownWaypoint = errors.New("unknown waypoint")
)

// Source is the outbound connection's origin.
type Source struct {
	// Workload is the source pod's workload, if the state has it.
	Workload *workloadapi.Workload
	// IP is the pod's own address (the captured connection's source).
	IP netip.Addr
	// Network defaults to the workload's network.
	Network string
}

// Outbound routes a connection from src to the original destination dst.
// pick selects among n healthy endpoints (round robin: a counter modulo n);
// it is only called with n > 0. Outbound reads snap and nothing else.
func Outbound(snap *state.Snapshot, src Source, dst netip.AddrPort, pick func(n int) int) (*Request, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	network := src.Network
	if network == "" && src.Workload != nil {
		network = src.Workload.GetNetwork()
	}
	if isLoop(src, dst) {
		return nil, fmt.Errorf("%w: %s", ErrLoop, dst)
	}
	na := state.NetworkAddr{Network: network, IP: dst.Addr()}
	if svc := snap.ServiceByIP(na); svc != nil {
		if svc.GetWaypoint() != nil && !fromWaypoint(snap, src, svc.GetWaypoint(), network) {
			r, err := viaWaypoint(snap, svc.GetWaypoint(), network, dst, pick)
			if err != nil {
				return nil, fmt.Errorf("service %s: %w", state.ServiceKey(svc), err)
			}
			r.Service = svc
			return r, nil
		}
		ep, port, err := pickEndpoint(snap, svc, network, dst.Port(), pick)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", state.ServiceKey(svc), err)
		}
		r, err := toWorkload(ep, netip.AddrPortFrom(port.Addr(), port.Port()))
		if err != nil {
			return nil, err
		}
		r.Service = svc
		if r.Kind == HBONE {
			for _, san := range svc.GetSubjectAltNames() {
				if id, err := spiffeid.FromString(san); err == nil {
					r.Identities = append(r.Identities, id)
				}
			}
		}
		return r, nil
	}
	if w := snap.WorkloadByIP(na); w != nil {
		if w.GetWaypoint() != nil && !fromWaypoint(snap, src, w.GetWaypoint(), network) {
			r, err := viaWaypoint(snap, w.GetWaypoint(), network, dst, pick)
			if err != nil {
				return nil, fmt.Errorf("workload %s: %w", w.GetUid(), err)
			}
			return r, nil
		}
		return toWorkload(w, dst)
	}
	return &Request{Kind: Passthrough, Dial: dst}, nil
}

// isLoop: ztunnel's own ports on loopback, an unspecified address or the
// source pod's own IP.
func isLoop(src Source, dst netip.AddrPort) bool {
	a := dst.Addr()
	self := a.IsLoopback() || a.IsUnspecified() || (src.IP.IsValid() && src.IP.Unmap() == a)
	if !self && src.Workload != nil {
		for _, ip := range state.IPs(src.Workload) {
			self = self || ip == a
		}
	}
	if !self {
		return false
	}
	for _, p := range OwnPorts {
		if dst.Port() == p {
			return true
		}
	}
	return false
}

// toWorkload reaches workload w at target (its IP and the target port):
// HBONE to w's IP:15008 when it speaks HBONE, plain TCP otherwise.
func toWorkload(w *workloadapi.Workload, target netip.AddrPort) (*Request, error) {
	if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		return &Request{Kind: Passthrough, Dial: target, Workload: w}, nil
	}
	id, err := state.Identity(w)
	if err != nil {
		return nil, err
	}
	return &Request{
		Kind:       HBONE,
		Dial:       netip.AddrPortFrom(target.Addr(), HBONEPort),
		Authority:  target.String(),
		Identities: []spiffeid.ID{id},
		Workload:   w,
	}, nil
}

// pickEndpoint chooses a healthy endpoint of svc on network and resolves the
// service port to the endpoint's target port: the workload's own port map
// for the service, else the service's target_port, else the port itself.
func pickEndpoint(snap *state.Snapshot, svc *workloadapi.Service, network string, port uint16, pick func(int) int) (*workloadapi.Workload, netip.AddrPort, error) {
	key := state.ServiceKey(svc)
	type cand struct {
		w  *workloadapi.Workload
		ip netip.Addr
	}
	var cands []cand
	for _, w := range snap.Endpoints(key) {
		if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY || w.GetNetwork() != network {
			continue
		}
		ips := state.IPs(w)
		if len(ips) == 0 {
			continue
		}
		cands = append(cands, cand{w, ips[0]})
	}
	if len(cands) == 0 {
		return nil, netip.AddrPort{}, ErrNoHealthyUpstream
	}
	c := cands[pick(len(cands))%len(cands)]
	target := port
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(port) && p.GetTargetPort() != 0 {
			target = uint16(p.GetTargetPort())
		}
	}
	if pl := c.w.GetServices()[key]; pl != nil {
		for _, p := range pl.GetPorts() {
			if p.GetServicePort() == uint32(port) && p.GetTargetPort() != 0 {
				target = uint16(p.GetTargetPort())
			}
		}
	}
	return c.w, netip.AddrPortFrom(c.ip, target), nil
}

// waypointWorkload resolves a GatewayAddress to one waypoint workload and
// its HBONE port.
func waypointWorkload(snap *state.Snapshot, g *workloadapi.GatewayAddress, network string, pick func(int) int) (*workloadapi.Workload, netip.Addr, uint16, error) {
	port := uint16(g.GetHboneMtlsPort())
	if port == 0 {
		port = HBONEPort
	}
	var svc *workloadapi.Service
	if na := g.GetAddress(); na != nil {
		ip, _ := netip.AddrFromSlice(na.GetAddress())
		a := state.NetworkAddr{Network: na.GetNetwork(), IP: ip.Unmap()}
		if w := snap.WorkloadByIP(a); w != nil {
			return w, a.IP, port, nil
		}
		svc = snap.ServiceByIP(a)
	} else if h := g.GetHostname(); h != nil {
		svc = snap.Service(h.GetNamespace() + "/" + h.GetHostname())
	}
	if svc == nil {
		return nil, netip.Addr{}, 0, ErrUnknownWaypoint
	}
	w, ap, err := pickEndpoint(snap, svc, network, port, pick)
	if err != nil {
		return nil, netip.Addr{}, 0, fmt.Errorf("waypoint %s: %w", state.ServiceKey(svc), err)
	}
	return w, ap.Addr(), port, nil
}

// viaWaypoint sends to the waypoint's HBONE port with the original
// destination as :authority.
func viaWaypoint(snap *state.Snapshot, g *workloadapi.GatewayAddress, network string, dst netip.AddrPort, pick func(int) int) (*Request, error) {
	w, ip, port, err := waypointWorkload(snap, g, network, pick)
	if err != nil {
		return nil, err
	}
	id, err := state.Identity(w)
	if err != nil {
		return nil, err
	}
	return &Request{
		Kind:       HBONE,
		Dial:       netip.AddrPortFrom(ip, port),
		Authority:  dst.String(),
		Identities: []spiffeid.ID{id},
		Workload:   w,
		Waypoint:   true,
	}, nil
}

// fromWaypoint: the source is (one of) the destination's waypoint workloads,
// which must reach the destination directly (zt check_from_waypoint).
func fromWaypoint(snap *state.Snapshot, src Source, g *workloadapi.GatewayAddress, network string) bool {
	if src.Workload == nil {
		return false
	}
	if na := g.GetAddress(); na != nil {
		ip, _ := netip.AddrFromSlice(na.GetAddress())
		for _, own := range state.IPs(src.Workload) {
			if own == ip.Unmap() {
				return true
			}
		}
		if svc := snap.ServiceByIP(state.NetworkAddr{Network: na.GetNetwork(), IP: ip.Unmap()}); svc != nil {
			_, ok := src.Workload.GetServices()[state.ServiceKey(svc)]
			return ok
		}
		return false
	}
	if h := g.GetHostname(); h != nil {
		_, ok := src.Workload.GetServices()[h.GetNamespace()+"/"+h.GetHostname()]
		return ok
	}
	return false
}

// RoundRobin returns a pick func cycling through endpoints with counter.
func RoundRobin(counter func() uint64) func(n int) int {
	return func(n int) int { return int(counter() % uint64(n)) }
}

// String renders a request for logs and test failures.
func (r *Request) String() string {
	if r.Kind == Passthrough {
		return "tcp " + r.Dial.String()
	}
	s := "hbone " + r.Dial.String() + " authority=" + r.Authority + " ids="
	for i, id := range r.Identities {
		if i > 0 {
			s += ","
		}
		s += id.String()
	}
	if r.Waypoint {
		s += " waypoint"
	}
	return s
}
