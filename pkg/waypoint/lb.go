package waypoint

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// errNoEndpoints: the backend Service has no ready endpoint (503, UH).
var errNoEndpoints = errors.New("no healthy upstream")

// endpoint is one ready workload of a backend Service port.
type endpoint struct {
	addr     netip.AddrPort // podIP:targetPort, the HBONE :authority
	host     string         // addr.String(), the upstream URL host
	workload *workloadapi.Workload
	identity spiffeid.ID
	service  *workloadapi.Service // nil when the Address state lacks it
	active   *atomic.Int64        // requests in flight (LEAST_REQUEST)
}

// endpointSet is the ready endpoints of one (Service, port), with its
// round-robin cursor.
type endpointSet struct {
	eps  []endpoint
	lb   waypointv1alpha1.TrafficPolicy_LoadBalancer
	next atomic.Uint64
}

type lbKey struct {
	svc    string // "<namespace>/<hostname>"
	port   uint32
	policy *targetPolicy // subset and balancer; nil: all endpoints, round-robin
}

// balancer picks endpoints round-robin. Endpoint lists are derived lazily
// from one state snapshot and cached until the snapshot changes.
//
// Concurrency: mu guards snap, sets and active; a set, once built, is
// read-only except for its atomic cursor. The in-flight counters
// (LEAST_REQUEST) are per endpoint address and outlive snapshots, since
// the Address state changes whenever any workload does: a counter is
// dropped at a snapshot change only when it reads 0.
type balancer struct {
	mu     sync.Mutex
	snap   *state.Snapshot
	sets   map[lbKey]*endpointSet
	active map[netip.AddrPort]*atomic.Int64
}

// pick returns the next ready endpoint of ref in snap, by the policy's
// balancer: round-robin (default), random, or the less loaded of two
// random endpoints (LEAST_REQUEST).
func (b *balancer) pick(snap *state.Snapshot, ref backendRef) (*endpoint, error) {
	return b.endpoints(snap, ref).pick()
}

// endpoints is ref's endpoint set in snap.
func (b *balancer) endpoints(snap *state.Snapshot, ref backendRef) *endpointSet {
	return b.set(snap, lbKey{ref.key, ref.port, ref.policy})
}

// pick returns the set's next endpoint by its balancer.
func (set *endpointSet) pick() (*endpoint, error) {
	n := len(set.eps)
	if n == 0 {
		return nil, errNoEndpoints
	}
	switch set.lb {
	case waypointv1alpha1.TrafficPolicy_RANDOM:
		return &set.eps[rand.IntN(n)], nil
	case waypointv1alpha1.TrafficPolicy_LEAST_REQUEST:
		a, c := &set.eps[rand.IntN(n)], &set.eps[rand.IntN(n)]
		if c.active.Load() < a.active.Load() {
			return c, nil
		}
		return a, nil
	}
	i := set.next.Add(1) - 1
	return &set.eps[i%uint64(n)], nil
}

func (b *balancer) set(snap *state.Snapshot, k lbKey) *endpointSet {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.snap != snap {
		b.snap = snap
		b.sets = map[lbKey]*endpointSet{}
		for a, n := range b.active {
			if n.Load() == 0 {
				delete(b.active, a)
			}
		}
	}
	s := b.sets[k]
	if s == nil {
		s = &endpointSet{eps: resolveEndpoints(snap, k.svc, k.port, k.policy)}
		if b.active == nil {
			b.active = map[netip.AddrPort]*atomic.Int64{}
		}
		for i := range s.eps {
			ep := &s.eps[i]
			if n := b.active[ep.addr]; n != nil {
				ep.active = n
			} else {
				b.active[ep.addr] = ep.active
			}
		}
		if k.policy != nil {
			s.lb = k.policy.lb
		}
		b.sets[k] = s
	}
	return s
}

// resolveEndpoints lists the HEALTHY workloads whose services map holds
// svcKey (and, with a subset, that the subset names), each with its target
// port for servicePort.
func resolveEndpoints(snap *state.Snapshot, svcKey string, servicePort uint32, pol *targetPolicy) []endpoint {
	if pol != nil && pol.unknown {
		return nil
	}
	svc := snap.Service(svcKey)
	var out []endpoint
	for _, w := range snap.Endpoints(svcKey) {
		if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY {
			continue
		}
		if pol != nil && pol.uids != nil && !pol.uids[w.GetUid()] {
			continue
		}
		ips := state.IPs(w)
		if len(ips) == 0 {
			continue
		}
		id, err := state.Identity(w)
		if err != nil {
			continue
		}
		tp := targetPort(w, svcKey, svc, servicePort)
		addr := netip.AddrPortFrom(ips[0], uint16(tp))
		out = append(out, endpoint{addr: addr, host: addr.String(), workload: w, identity: id, service: svc, active: new(atomic.Int64)})
	}
	return out
}

// targetPort maps a service port to the workload's port: the workload's own
// mapping for the service, else the Service's target_port, else the port.
func targetPort(w *workloadapi.Workload, svcKey string, svc *workloadapi.Service, servicePort uint32) uint32 {
	for _, p := range w.GetServices()[svcKey].GetPorts() {
		if p.GetServicePort() == servicePort && p.GetTargetPort() != 0 {
			return p.GetTargetPort()
		}
	}
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == servicePort && p.GetTargetPort() != 0 {
			return p.GetTargetPort()
		}
	}
	return servicePort
}

// pickWeighted chooses a backend with probability weight/total; nil when
// every weight is zero.
func pickWeighted(bs []weightedBackend, total uint32) *weightedBackend {
	if total == 0 {
		return nil
	}
	n := rand.Uint32N(total)
	for i := range bs {
		if n < bs[i].weight {
			return &bs[i]
		}
		n -= bs[i].weight
	}
	return nil
}
