// Package state is ztunnel's view of the mesh: the workloads, services and
// authorization policies istiod-lite serves over delta xDS
// (istio.workload.Address and istio.security.Authorization), kept as
// immutable snapshots indexed the way the data path looks them up.
//
// The xDS client (pkg/xds/xdsclient) feeds a Store through Store.Handler; the
// proxy (pkg/ztunnel), routing (pkg/ztunnel/route) and authorization
// (pkg/ztunnel/authz) read Snapshots. The store never clears itself when
// istiod is away: the last applied state stays until a later delta changes it.
//
// It is data-plane code and imports no Kubernetes client or control-plane
// package (internal/archtest).
package state

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// Type URLs of the two resource types ztunnel subscribes to. They are the
// values of pkg/model's constants, copied because ztunnel must not import
// pkg/model.
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// DefaultTrustDomain is used for workloads whose trust_domain is empty.
const DefaultTrustDomain = "cluster.local"

// NetworkAddr is an IP on a network, the key istiod's aliases use
// ("<network>/<ip>").
type NetworkAddr struct {
	Network string
	IP      netip.Addr
}

func (a NetworkAddr) String() string { return a.Network + "/" + a.IP.String() }

// Snapshot is one immutable version of the state. Its maps and the protos they
// point to are never written after the snapshot is published, so readers need
// no lock; treat everything returned from it as read-only.
type Snapshot struct {
	// Version counts applied deltas; it grows by one with each change.
	Version uint64

	workloads     map[string]*workloadapi.Workload      // by uid
	workloadByIP  map[NetworkAddr]*workloadapi.Workload // by network/ip
	services      map[string]*workloadapi.Service       // by "namespace/hostname"
	serviceByIP   map[NetworkAddr]*workloadapi.Service  // by network/VIP
	serviceByHost map[string][]*workloadapi.Service     // by hostname, several namespaces possible
	endpoints     map[string][]*workloadapi.Workload    // service key -> workloads, sorted by uid
	policies      map[string]*security.Authorization    // by "namespace/name"
	policyByNS    map[string][]*security.Authorization  // NAMESPACE-scoped, by namespace, sorted by key
	global        []*security.Authorization             // GLOBAL-scoped, sorted by key
}

// Empty returns a snapshot holding nothing.
func Empty() *Snapshot {
	return &Snapshot{
		workloads:     map[string]*workloadapi.Workload{},
		workloadByIP:  map[NetworkAddr]*workloadapi.Workload{},
		services:      map[string]*workloadapi.Service{},
		serviceByIP:   map[NetworkAddr]*workloadapi.Service{},
		serviceByHost: map[string][]*workloadapi.Service{},
		endpoints:     map[string][]*workloadapi.Workload{},
		policies:      map[string]*security.Authorization{},
		policyByNS:    map[string][]*security.Authorization{},
	}
}

// Workload returns the workload with uid.
func (s *Snapshot) Workload(uid string) *workloadapi.Workload { return s.workloads[uid] }

// WorkloadByIP returns the workload holding ip on network.
func (s *Snapshot) WorkloadByIP(a NetworkAddr) *workloadapi.Workload {
	return s.workloadByIP[NetworkAddr{a.Network, a.IP.Unmap()}]
}

// ServiceByIP returns the service with VIP ip on network.
func (s *Snapshot) ServiceByIP(a NetworkAddr) *workloadapi.Service {
	return s.serviceByIP[NetworkAddr{a.Network, a.IP.Unmap()}]
}

// Service returns the service "namespace/hostname".
func (s *Snapshot) Service(key string) *workloadapi.Service { return s.services[key] }

// ServicesByHostname returns the services with this hostname (one per
// namespace that declares it), sorted by key.
func (s *Snapshot) ServicesByHostname(host string) []*workloadapi.Service {
	return s.serviceByHost[host]
}

// Endpoints returns the workloads that back the service "namespace/hostname"
// (healthy or not), sorted by uid.
func (s *Snapshot) Endpoints(key string) []*workloadapi.Workload { return s.endpoints[key] }

// Policy returns the authorization policy "namespace/name".
func (s *Snapshot) Policy(key string) *security.Authorization { return s.policies[key] }

// Workloads returns every workload, sorted by uid.
func (s *Snapshot) Workloads() []*workloadapi.Workload {
	return sortedValues(s.workloads)
}

// Services returns every service, sorted by key.
func (s *Snapshot) Services() []*workloadapi.Service { return sortedValues(s.services) }

// Policies returns every policy, sorted by key.
func (s *Snapshot) Policies() []*security.Authorization { return sortedValues(s.policies) }

// PoliciesFor returns the policies that apply to a workload, in Istio's
// gathering order (zt:src/state.rs assert_rbac): GLOBAL ones, those scoped
// to the workload's namespace, then the selector-based ones the workload
// names in authorization_policies. A nil workload gets the global ones.
func (s *Snapshot) PoliciesFor(w *workloadapi.Workload) []*security.Authorization {
	out := slices.Clone(s.global)
	if w == nil {
		return out
	}
	out = append(out, s.policyByNS[w.GetNamespace()]...)
	for _, key := range w.GetAuthorizationPolicies() {
		if p := s.policies[key]; p != nil && p.GetScope() == security.Scope_WORKLOAD_SELECTOR {
			out = append(out, p)
		}
	}
	return out
}

func sortedValues[V any](m map[string]V) []V {
	keys := slices.Sorted(maps.Keys(m))
	out := make([]V, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// ServiceKey is a service's resource name, "namespace/hostname".
func ServiceKey(s *workloadapi.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

// PolicyKey is a policy's resource name, "namespace/name".
func PolicyKey(p *security.Authorization) string { return p.GetNamespace() + "/" + p.GetName() }

// Identity is a workload's SPIFFE identity,
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>, with Istio's
// defaults (cluster.local, default) for empty fields.
func Identity(w *workloadapi.Workload) (spiffeid.ID, error) {
	td := w.GetTrustDomain()
	if td == "" {
		td = DefaultTrustDomain
	}
	sa := w.GetServiceAccount()
	if sa == "" {
		sa = "default"
	}
	t, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload %s: trust_domain %q: %w", w.GetUid(), td, err)
	}
	return spiffeid.FromSegments(t, "ns", w.GetNamespace(), "sa", sa)
}

// IPs returns a workload's addresses.
func IPs(w *workloadapi.Workload) []netip.Addr {
	out := make([]netip.Addr, 0, len(w.GetAddresses()))
	for _, b := range w.GetAddresses() {
		if a, ok := netip.AddrFromSlice(b); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// VIPs returns a service's addresses (network and IP).
func VIPs(s *workloadapi.Service) []NetworkAddr {
	out := make([]NetworkAddr, 0, len(s.GetAddresses()))
	for _, na := range s.GetAddresses() {
		if a, ok := netip.AddrFromSlice(na.GetAddress()); ok {
			out = append(out, NetworkAddr{na.GetNetwork(), a.Unmap()})
		}
	}
	return out
}

// Store holds the current Snapshot and applies xDS deltas to it.
//
// Concurrency: mu serialises writers (the xDS handlers); each write builds a
// new Snapshot from the current one and publishes it under mu together with
// a fresh changed channel, closing the old one, so readers (Snapshot,
// Changed) only take mu briefly and never see a half-applied delta.
type Store struct {
	mu sync.Mutex
	// cur is written under mu and read without it: Snapshot is on every
	// request's path (a lock there was about 2% of a waypoint's CPU at
	// its maximum rate).
	cur     atomic.Pointer[Snapshot]
	changed chan struct{}
	// kinds remembers whether each Address resource name is a workload or a
	// service, so a removal by name finds its index.
	addrNames map[string]addrRef
}

type addrRef struct {
	service bool
	key     string // uid or namespace/hostname
}

// NewStore returns a Store holding an empty snapshot.
func NewStore() *Store {
	st := &Store{changed: make(chan struct{}), addrNames: map[string]addrRef{}}
	st.cur.Store(Empty())
	return st
}

// Snapshot returns the current snapshot.
func (st *Store) Snapshot() *Snapshot {
	return st.cur.Load()
}

// Changed returns a channel closed at the next change after this call, and the
// snapshot current at the call.
func (st *Store) Changed() (<-chan struct{}, *Snapshot) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.changed, st.cur.Load()
}

// ResourceError is one rejected resource: its name, the field at fault and
// why. A NACK's message lists them.
type ResourceError struct {
	Type, Name, Field, Reason string
}

func (e *ResourceError) Error() string {
	t := e.Type[strings.LastIndex(e.Type, "/")+1:]
	return fmt.Sprintf("%s %q: %s: %s", t, e.Name, e.Field, e.Reason)
}

// publish installs next and wakes waiters. Caller holds mu.
func (st *Store) publish(next *Snapshot) {
	next.Version = st.cur.Load().Version + 1
	next.rebuild()
	st.cur.Store(next)
	close(st.changed)
	st.changed = make(chan struct{})
}

// clone copies the primary maps; derived indexes are rebuilt by rebuild.
func (s *Snapshot) clone() *Snapshot {
	n := Empty()
	n.workloads = maps.Clone(s.workloads)
	n.services = maps.Clone(s.services)
	n.policies = maps.Clone(s.policies)
	return n
}

// rebuild derives every index from workloads, services and policies. It is
// O(size of the state) per delta, which keeps the snapshot trivially
// consistent; a node's state is thousands of objects, rebuilt in well under a
// millisecond.
func (s *Snapshot) rebuild() {
	s.workloadByIP = map[NetworkAddr]*workloadapi.Workload{}
	s.serviceByIP = map[NetworkAddr]*workloadapi.Service{}
	s.serviceByHost = map[string][]*workloadapi.Service{}
	s.endpoints = map[string][]*workloadapi.Workload{}
	s.policyByNS = map[string][]*security.Authorization{}
	s.global = nil
	for _, uid := range slices.Sorted(maps.Keys(s.workloads)) {
		w := s.workloads[uid]
		for _, ip := range IPs(w) {
			s.workloadByIP[NetworkAddr{w.GetNetwork(), ip}] = w
		}
		for _, svc := range slices.Sorted(maps.Keys(w.GetServices())) {
			s.endpoints[svc] = append(s.endpoints[svc], w)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(s.services)) {
		svc := s.services[key]
		for _, na := range VIPs(svc) {
			s.serviceByIP[na] = svc
		}
		s.serviceByHost[svc.GetHostname()] = append(s.serviceByHost[svc.GetHostname()], svc)
	}
	for _, key := range slices.Sorted(maps.Keys(s.policies)) {
		p := s.policies[key]
		switch p.GetScope() {
		case security.Scope_GLOBAL:
			s.global = append(s.global, p)
		case security.Scope_NAMESPACE:
			s.policyByNS[p.GetNamespace()] = append(s.policyByNS[p.GetNamespace()], p)
		}
	}
}

// joinErrors renders rejected resources as one NACK message.
func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

// NewSnapshot builds a snapshot directly from objects (tests, tools); the
// store builds its snapshots from xDS deltas instead.
func NewSnapshot(workloads []*workloadapi.Workload, services []*workloadapi.Service, policies []*security.Authorization) *Snapshot {
	s := Empty()
	for _, w := range workloads {
		s.workloads[w.GetUid()] = w
	}
	for _, v := range services {
		s.services[ServiceKey(v)] = v
	}
	for _, p := range policies {
		s.policies[PolicyKey(p)] = p
	}
	s.rebuild()
	return s
}

// Replace publishes snap as the store's state (with the store's next
// version), for tests and tools that build state without xDS. Resource names
// for later removals are the canonical ones (uid, namespace/hostname).
func (st *Store) Replace(snap *Snapshot) {
	st.mu.Lock()
	defer st.mu.Unlock()
	next := snap.clone()
	st.addrNames = map[string]addrRef{}
	for uid := range next.workloads {
		st.addrNames[uid] = addrRef{key: uid}
	}
	for key := range next.services {
		st.addrNames[key] = addrRef{service: true, key: key}
	}
	st.publish(next)
}
