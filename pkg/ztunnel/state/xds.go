package state

import (
	"fmt"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

// NACK semantics (decided, following upstream ztunnel's xDS client, which
// handles each resource on its own and reports the rejects): the resources
// of a response that are valid, and every removal, are applied; each invalid
// resource is skipped, keeping the version of it the store already had, if
// any; and the response is NACKed with one line per invalid resource naming
// its type, name, field and reason. xdsclient then keeps its own versions
// as they were, so a reconnect resends the batch and re-applying the valid
// part is idempotent. Rejecting whole batches instead would let one bad pod
// hold every other update back.

// Handler returns the xdsclient handler for both types, dispatching each
// response to the typed handler for its type URL.
func (st *Store) Handler() xdsclient.Handler {
	handlers := map[string]xdsclient.Handler{
		AddressTypeURL:       st.HandleAddress,
		AuthorizationTypeURL: st.HandleAuthorization,
	}
	return func(d xdsclient.Delta) error {
		h, ok := handlers[d.TypeURL]
		if !ok {
			return fmt.Errorf("unexpected type %s", d.TypeURL)
		}
		return h(d)
	}
}

// HandleAddress applies a delta of istio.workload.Address resources.
func (st *Store) HandleAddress(d xdsclient.Delta) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	next := st.cur.Load().clone()
	var errs []error
	for _, name := range d.Removed {
		ref, ok := st.addrNames[name]
		if !ok {
			continue
		}
		delete(st.addrNames, name)
		if ref.service {
			delete(next.services, ref.key)
		} else {
			delete(next.workloads, ref.key)
		}
	}
	for i := range d.Updated {
		r := &d.Updated[i]
		addr := &workloadapi.Address{}
		if err := r.UnmarshalTo(addr); err != nil {
			errs = append(errs, &ResourceError{AddressTypeURL, r.Name, "resource", fmt.Sprintf("cannot decode as istio.workload.Address: %v", err)})
			continue
		}
		if err := validateAddress(r.Name, addr); err != nil {
			errs = append(errs, err)
			continue
		}
		// A name that changes kind (workload <-> service) drops the old entry.
		if old, ok := st.addrNames[r.Name]; ok {
			if old.service {
				delete(next.services, old.key)
			} else {
				delete(next.workloads, old.key)
			}
		}
		if w := addr.GetWorkload(); w != nil {
			next.workloads[w.GetUid()] = w
			st.addrNames[r.Name] = addrRef{key: w.GetUid()}
		} else {
			s := addr.GetService()
			next.services[ServiceKey(s)] = s
			st.addrNames[r.Name] = addrRef{service: true, key: ServiceKey(s)}
		}
	}
	st.publish(next)
	return joinErrors(errs)
}

// HandleAuthorization applies a delta of istio.security.Authorization
// resources.
func (st *Store) HandleAuthorization(d xdsclient.Delta) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	next := st.cur.Load().clone()
	var errs []error
	for _, name := range d.Removed {
		delete(next.policies, name)
	}
	for i := range d.Updated {
		r := &d.Updated[i]
		p := &security.Authorization{}
		if err := r.UnmarshalTo(p); err != nil {
			errs = append(errs, &ResourceError{AuthorizationTypeURL, r.Name, "resource", fmt.Sprintf("cannot decode as istio.security.Authorization: %v", err)})
			continue
		}
		if err := validatePolicy(r.Name, p); err != nil {
			errs = append(errs, err)
			continue
		}
		next.policies[PolicyKey(p)] = p
	}
	st.publish(next)
	return joinErrors(errs)
}

func validateAddress(name string, a *workloadapi.Address) error {
	bad := func(field, why string, args ...any) error {
		return &ResourceError{AddressTypeURL, name, field, fmt.Sprintf(why, args...)}
	}
	switch {
	case a.GetWorkload() != nil:
		w := a.GetWorkload()
		if w.GetUid() == "" {
			return bad("workload.uid", "empty")
		}
		if name != w.GetUid() {
			return bad("name", "resource name differs from workload.uid %q", w.GetUid())
		}
		for i, b := range w.GetAddresses() {
			if _, ok := netip.AddrFromSlice(b); !ok {
				return bad(fmt.Sprintf("workload.addresses[%d]", i), "%d bytes, want 4 or 16", len(b))
			}
		}
		if _, err := Identity(w); err != nil {
			return bad("workload.trust_domain|namespace|service_account", "not a valid SPIFFE identity: %v", err)
		}
		for svc, pl := range w.GetServices() {
			for i, p := range pl.GetPorts() {
				if p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
					return bad(fmt.Sprintf("workload.services[%q].ports[%d]", svc, i), "port out of range")
				}
			}
		}
		if err := validateGateway(w.GetWaypoint()); err != "" {
			return bad("workload.waypoint", "%s", err)
		}
	case a.GetService() != nil:
		s := a.GetService()
		if s.GetHostname() == "" {
			return bad("service.hostname", "empty")
		}
		if name != ServiceKey(s) {
			return bad("name", "resource name differs from %q (service namespace/hostname)", ServiceKey(s))
		}
		for i, na := range s.GetAddresses() {
			if _, ok := netip.AddrFromSlice(na.GetAddress()); !ok {
				return bad(fmt.Sprintf("service.addresses[%d].address", i), "%d bytes, want 4 or 16", len(na.GetAddress()))
			}
		}
		for i, p := range s.GetPorts() {
			if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
				return bad(fmt.Sprintf("service.ports[%d]", i), "port out of range (service_port %d, target_port %d)", p.GetServicePort(), p.GetTargetPort())
			}
		}
		if err := validateGateway(s.GetWaypoint()); err != "" {
			return bad("service.waypoint", "%s", err)
		}
	default:
		return bad("type", "neither workload nor service")
	}
	return nil
}

func validateGateway(g *workloadapi.GatewayAddress) string {
	if g == nil {
		return ""
	}
	if na := g.GetAddress(); na != nil {
		if _, ok := netip.AddrFromSlice(na.GetAddress()); !ok {
			return fmt.Sprintf("address: %d bytes, want 4 or 16", len(na.GetAddress()))
		}
	} else if h := g.GetHostname(); h == nil || h.GetHostname() == "" {
		return "neither address nor hostname"
	}
	if g.GetHboneMtlsPort() > 65535 {
		return "hbone_mtls_port out of range"
	}
	return ""
}

func validatePolicy(name string, p *security.Authorization) error {
	bad := func(field, why string, args ...any) error {
		return &ResourceError{AuthorizationTypeURL, name, field, fmt.Sprintf(why, args...)}
	}
	if p.GetName() == "" {
		return bad("name", "empty")
	}
	if name != PolicyKey(p) {
		return bad("name", "resource name differs from %q (namespace/name)", PolicyKey(p))
	}
	if _, ok := security.Scope_name[int32(p.GetScope())]; !ok {
		return bad("scope", "unknown value %d", p.GetScope())
	}
	if _, ok := security.Action_name[int32(p.GetAction())]; !ok {
		return bad("action", "unknown value %d", p.GetAction())
	}
	for gi, g := range p.GetGroups() {
		for ri, r := range g.GetRules() {
			for mi, m := range r.GetMatches() {
				at := fmt.Sprintf("groups[%d].rules[%d].matches[%d]", gi, ri, mi)
				for fname, list := range map[string][]*security.Address{
					"source_ips": m.GetSourceIps(), "not_source_ips": m.GetNotSourceIps(),
					"destination_ips": m.GetDestinationIps(), "not_destination_ips": m.GetNotDestinationIps(),
				} {
					for i, a := range list {
						ip, ok := netip.AddrFromSlice(a.GetAddress())
						if !ok {
							return bad(fmt.Sprintf("%s.%s[%d]", at, fname, i), "%d address bytes, want 4 or 16", len(a.GetAddress()))
						}
						if int(a.GetLength()) > ip.BitLen() {
							return bad(fmt.Sprintf("%s.%s[%d]", at, fname, i), "prefix length %d exceeds %d", a.GetLength(), ip.BitLen())
						}
					}
				}
				for fname, list := range map[string][]uint32{"destination_ports": m.GetDestinationPorts(), "not_destination_ports": m.GetNotDestinationPorts()} {
					for i, port := range list {
						if port > 65535 {
							return bad(fmt.Sprintf("%s.%s[%d]", at, fname, i), "port %d out of range", port)
						}
					}
				}
			}
		}
	}
	return nil
}
