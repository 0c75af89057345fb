// Package authz evaluates Istio authorization policies at L4 for ztunnel's
// inbound connections: the security.Authorization resources istiod-lite
// serves, over the fields a TCP connection carries (source identity and
// namespace, source IP, destination IP and port).
//
// Evaluation is a pure function (Evaluate) of the policies that apply and a
// Conn, in Istio's order (zt:src/state.rs assert_rbac): any matching DENY
// denies; with no ALLOW policy the connection is allowed; a matching ALLOW
// allows; otherwise it is denied. Dry-run policies never decide. Which
// policies apply (global, namespace, workload selector) is
// state.Snapshot.PoliciesFor. The proxy (pkg/ztunnel) imports it.
package authz

import (
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi/security"
)

// Conn is what an L4 policy can see of a connection.
type Conn struct {
	// Source is the peer's verified SPIFFE identity; zero for plaintext.
	Source spiffeid.ID
	SrcIP  netip.Addr
	// Dst is the destination the connection is for (pod IP and target port).
	Dst netip.AddrPort
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allow bool
	// Policy is "namespace/name" of the policy that decided ("" when the
	// absence of ALLOW policies allowed, or none matched).
	Policy string
	// Reason in words, for logs.
	Reason string
}

// Evaluate applies policies to c in Istio's order.
func Evaluate(policies []*security.Authorization, c Conn) Decision {
	hasAllow := false
	for _, p := range policies {
		if p.GetDryRun() || p.GetAction() != security.Action_DENY {
			continue
		}
		if Matches(p, c) {
			return Decision{Allow: false, Policy: key(p), Reason: "denied by policy"}
		}
	}
	for _, p := range policies {
		if p.GetDryRun() || p.GetAction() != security.Action_ALLOW {
			continue
		}
		hasAllow = true
		if Matches(p, c) {
			return Decision{Allow: true, Policy: key(p), Reason: "allowed by policy"}
		}
	}
	if !hasAllow {
		return Decision{Allow: true, Reason: "no allow policy"}
	}
	return Decision{Allow: false, Reason: "no allow policy matched"}
}

func key(p *security.Authorization) string { return p.GetNamespace() + "/" + p.GetName() }

// Matches reports whether policy p matches c: any group matches, a group
// matching when all of its rules do, a rule when any of its matches does
// (zt:src/rbac.rs). A policy without groups matches nothing.
func Matches(p *security.Authorization, c Conn) bool {
	for _, g := range p.GetGroups() {
		if groupMatches(g, c) {
			return true
		}
	}
	return false
}

func groupMatches(g *security.Group, c Conn) bool {
	for _, r := range g.GetRules() {
		ok := false
		for _, m := range r.GetMatches() {
			if matchMatches(m, c) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// matchMatches ANDs the field types of one Match; within a type the values
// are ORed and an empty list does not constrain. A not_ list excludes c when
// any value matches.
func matchMatches(m *security.Match, c Conn) bool {
	ns, sa, hasID := identityParts(c.Source)
	principal := ""
	if hasID {
		principal = strings.TrimPrefix(c.Source.String(), "spiffe://")
	}
	strs := func(list []*security.StringMatch, v string, present bool) bool {
		for _, s := range list {
			if stringMatches(s, v, present) {
				return true
			}
		}
		return false
	}
	check := func(pos, neg []*security.StringMatch, v string, present bool) bool {
		if len(pos) > 0 && !strs(pos, v, present) {
			return false
		}
		return !strs(neg, v, present)
	}
	if !check(m.GetNamespaces(), m.GetNotNamespaces(), ns, hasID) {
		return false
	}
	if !check(m.GetPrincipals(), m.GetNotPrincipals(), principal, hasID) {
		return false
	}
	sas := func(list []*security.ServiceAccountMatch) bool {
		for _, s := range list {
			if hasID && s.GetNamespace() == ns && s.GetServiceAccount() == sa {
				return true
			}
		}
		return false
	}
	if len(m.GetServiceAccounts()) > 0 && !sas(m.GetServiceAccounts()) {
		return false
	}
	if sas(m.GetNotServiceAccounts()) {
		return false
	}
	ips := func(list []*security.Address, ip netip.Addr) bool {
		for _, a := range list {
			if addrMatches(a, ip) {
				return true
			}
		}
		return false
	}
	if len(m.GetSourceIps()) > 0 && !ips(m.GetSourceIps(), c.SrcIP) {
		return false
	}
	if ips(m.GetNotSourceIps(), c.SrcIP) {
		return false
	}
	if len(m.GetDestinationIps()) > 0 && !ips(m.GetDestinationIps(), c.Dst.Addr()) {
		return false
	}
	if ips(m.GetNotDestinationIps(), c.Dst.Addr()) {
		return false
	}
	ports := func(list []uint32) bool {
		for _, p := range list {
			if p == uint32(c.Dst.Port()) {
				return true
			}
		}
		return false
	}
	if len(m.GetDestinationPorts()) > 0 && !ports(m.GetDestinationPorts()) {
		return false
	}
	if ports(m.GetNotDestinationPorts()) {
		return false
	}
	return true
}

// stringMatches matches v (valid only when present) against s. Presence
// matches any present value; exact, prefix and suffix need a value. The
// prefix "*"/suffix "*" forms istiod emits for wildcards arrive as empty
// prefix/suffix and so match any present value.
func stringMatches(s *security.StringMatch, v string, present bool) bool {
	if !present {
		return false
	}
	switch t := s.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		return v == t.Exact
	case *security.StringMatch_Prefix:
		return strings.HasPrefix(v, t.Prefix)
	case *security.StringMatch_Suffix:
		return strings.HasSuffix(v, t.Suffix)
	case *security.StringMatch_Presence:
		return true
	}
	return false
}

func addrMatches(a *security.Address, ip netip.Addr) bool {
	base, ok := netip.AddrFromSlice(a.GetAddress())
	if !ok || !ip.IsValid() {
		return false
	}
	base, ip = base.Unmap(), ip.Unmap()
	// length is the prefix length as sent (istiod sends 32/128 for a single
	// IP; 0 is 0.0.0.0/0), as zt:src/rbac.rs reads it.
	pfx, err := base.Prefix(int(a.GetLength()))
	if err != nil {
		return false
	}
	return pfx.Contains(ip)
}

// identityParts splits an Istio identity .../ns/<ns>/sa/<sa>.
func identityParts(id spiffeid.ID) (ns, sa string, ok bool) {
	if id.IsZero() {
		return "", "", false
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) == 4 && seg[0] == "ns" && seg[2] == "sa" {
		return seg[1], seg[3], true
	}
	return "", "", true
}
