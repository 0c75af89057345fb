package model

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
	"k8s.io/apimachinery/pkg/util/validation"
)

// authzInfo is a translated Authorization and how workloads select it.
type authzInfo struct {
	auth *security.Authorization
	// selector is non-nil for WORKLOAD_SELECTOR policies; an empty map
	// selects every workload in scope.
	selector map[string]string
}

// l4WhenKeys are the `when` keys ztunnel can evaluate.
var l4WhenKeys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

func translateAuthorizations(s Snapshot) ([]*authzInfo, []Diagnostic) {
	var out []*authzInfo
	var diags []Diagnostic
	for _, ap := range s.AuthorizationPolicies {
		info, d := convertAuthorizationPolicy(s.Mesh.RootNamespace, ap)
		diags = append(diags, d...)
		if info != nil {
			out = append(out, info)
		}
	}
	for _, pa := range s.PeerAuthentications {
		diags = append(diags, validatePeerAuthentication(s.Mesh.RootNamespace, pa)...)
		if a := convertPeerAuthentication(s, pa); a != nil {
			out = append(out, &authzInfo{auth: a, selector: pa.Spec.GetSelector().GetMatchLabels()})
		}
	}
	if len(s.PeerAuthentications) > 0 {
		out = append(out, &authzInfo{auth: staticStrict(s.Mesh.RootNamespace), selector: map[string]string{}})
	}
	return out, diags
}

func denyWithoutIdentity() *security.Match {
	return &security.Match{NotPrincipals: []*security.StringMatch{presence()}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

func staticStrict(rootNamespace string) *security.Authorization {
	return &security.Authorization{
		Name:      StaticStrictPolicyName,
		Namespace: rootNamespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups:    []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{denyWithoutIdentity()}}}}},
	}
}

func validSelector(sel *typev1beta1.WorkloadSelector) error {
	for k, v := range sel.GetMatchLabels() {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("label key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fmt.Errorf("label value %q: %s", v, strings.Join(errs, "; "))
		}
	}
	return nil
}

// convertAuthorizationPolicy converts the L4 part of an AuthorizationPolicy
// for ztunnel. Attributes ztunnel cannot enforce (HTTP fields, unknown
// conditions, values that do not parse) fail closed: an ALLOW rule containing
// them is dropped (it never matches) and a DENY rule keeps only its L4 part
// (it matches more). Policies with targetRefs belong to waypoints.
func convertAuthorizationPolicy(rootNamespace string, ap *securityv1.AuthorizationPolicy) (*authzInfo, []Diagnostic) {
	spec := &ap.Spec
	diag := func(field, reason, msg string) Diagnostic {
		return Diagnostic{Kind: "AuthorizationPolicy", Namespace: ap.Namespace, Name: ap.Name, Field: field, Reason: reason, Message: msg}
	}
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		return nil, nil
	}
	var diags []Diagnostic
	dryRun := false
	if v, ok := ap.Annotations[AnnotationDryRun]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			diags = append(diags, diag("metadata.annotations["+AnnotationDryRun+"]", "InvalidValue", err.Error()))
		}
		dryRun = b
	}
	if err := validSelector(spec.GetSelector()); err != nil {
		return nil, append(diags, diag("spec.selector.matchLabels", "InvalidSelector", err.Error()))
	}
	out := &security.Authorization{Name: ap.Name, Namespace: ap.Namespace, DryRun: dryRun}
	switch {
	case spec.GetSelector() != nil:
		out.Scope = security.Scope_WORKLOAD_SELECTOR
	case ap.Namespace == rootNamespace:
		out.Scope = security.Scope_GLOBAL
	default:
		out.Scope = security.Scope_NAMESPACE
	}
	switch spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		out.Action = security.Action_ALLOW
	case securityv1beta1.AuthorizationPolicy_DENY:
		out.Action = security.Action_DENY
	default:
		return nil, append(diags, diag("spec.action", "UnsupportedValue",
			"ztunnel does not support the "+spec.GetAction().String()+" action"))
	}
	for i, rule := range spec.GetRules() {
		rules, unsupported := convertRule(out.Action, rule, ap.Namespace, fmt.Sprintf("spec.rules[%d]", i))
		for _, u := range unsupported {
			msg := u.what + "; "
			if out.Action == security.Action_ALLOW {
				msg += "the rule is omitted from this ALLOW policy, which is more restrictive than requested"
			} else {
				msg += "this DENY rule is enforced without it, which is more restrictive than requested"
			}
			diags = append(diags, diag(u.field, "UnsupportedValue", msg))
		}
		if rules != nil {
			out.Groups = append(out.Groups, &security.Group{Rules: rules})
		}
	}
	info := &authzInfo{auth: out}
	if spec.GetSelector() != nil {
		info.selector = spec.GetSelector().GetMatchLabels()
		if info.selector == nil {
			info.selector = map[string]string{}
		}
	}
	return info, diags
}

type unsupported struct{ field, what string }

func convertRule(action security.Action, rule *securityv1beta1.Rule, ns, path string) ([]*security.Rules, []unsupported) {
	var bad []unsupported
	note := func(field, what string) { bad = append(bad, unsupported{field: path + field, what: what}) }

	rules := []*security.Rules{}
	var to []*security.Match
	for i, t := range rule.GetTo() {
		op := t.GetOperation()
		f := fmt.Sprintf(".to[%d].operation", i)
		for name, v := range map[string][]string{
			"hosts": op.GetHosts(), "notHosts": op.GetNotHosts(), "methods": op.GetMethods(),
			"notMethods": op.GetNotMethods(), "paths": op.GetPaths(), "notPaths": op.GetNotPaths(),
		} {
			if len(v) > 0 {
				note(f+"."+name, "ztunnel cannot enforce HTTP attribute "+name+" (attach the policy to a waypoint with targetRefs)")
			}
		}
		ports, e1 := parsePorts(op.GetPorts())
		notPorts, e2 := parsePorts(op.GetNotPorts())
		if e1 != nil {
			note(f+".ports", e1.Error())
		}
		if e2 != nil {
			note(f+".notPorts", e2.Error())
		}
		to = append(to, &security.Match{DestinationPorts: ports, NotDestinationPorts: notPorts})
	}
	var from []*security.Match
	for i, fr := range rule.GetFrom() {
		src := fr.GetSource()
		f := fmt.Sprintf(".from[%d].source", i)
		for name, v := range map[string][]string{
			"requestPrincipals": src.GetRequestPrincipals(), "notRequestPrincipals": src.GetNotRequestPrincipals(),
			"remoteIpBlocks": src.GetRemoteIpBlocks(), "notRemoteIpBlocks": src.GetNotRemoteIpBlocks(),
			"trustDomains": src.GetTrustDomains(), "notTrustDomains": src.GetNotTrustDomains(),
		} {
			if len(v) > 0 {
				note(f+"."+name, "ztunnel cannot enforce attribute "+name)
			}
		}
		m := &security.Match{
			Namespaces:         stringMatches(src.GetNamespaces()),
			NotNamespaces:      stringMatches(src.GetNotNamespaces()),
			ServiceAccounts:    serviceAccountMatches(src.GetServiceAccounts(), ns),
			NotServiceAccounts: serviceAccountMatches(src.GetNotServiceAccounts(), ns),
		}
		var err error
		if m.Principals, err = principalMatches(src.GetPrincipals()); err != nil {
			note(f+".principals", err.Error())
		}
		if m.NotPrincipals, err = principalMatches(src.GetNotPrincipals()); err != nil {
			note(f+".notPrincipals", err.Error())
		}
		if m.SourceIps, err = parseAddresses(src.GetIpBlocks()); err != nil {
			note(f+".ipBlocks", err.Error())
		}
		if m.NotSourceIps, err = parseAddresses(src.GetNotIpBlocks()); err != nil {
			note(f+".notIpBlocks", err.Error())
		}
		from = append(from, m)
	}
	if len(to) > 0 {
		rules = append(rules, &security.Rules{Matches: to})
	}
	if len(from) > 0 {
		rules = append(rules, &security.Rules{Matches: from})
	}
	for i, when := range rule.GetWhen() {
		f := fmt.Sprintf(".when[%d]", i)
		if !l4WhenKeys[when.GetKey()] {
			note(f+".key", "ztunnel cannot enforce condition "+strconv.Quote(when.GetKey())+" (attach the policy to a waypoint with targetRefs)")
			continue
		}
		m := &security.Match{}
		var err, errNot error
		switch when.GetKey() {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = stringMatches(when.GetValues()), stringMatches(when.GetNotValues())
		case "source.principal":
			m.Principals, err = principalMatches(when.GetValues())
			m.NotPrincipals, errNot = principalMatches(when.GetNotValues())
		case "source.ip":
			m.SourceIps, err = parseAddresses(when.GetValues())
			m.NotSourceIps, errNot = parseAddresses(when.GetNotValues())
		case "destination.ip":
			m.DestinationIps, err = parseAddresses(when.GetValues())
			m.NotDestinationIps, errNot = parseAddresses(when.GetNotValues())
		case "destination.port":
			m.DestinationPorts, err = parsePorts(when.GetValues())
			m.NotDestinationPorts, errNot = parsePorts(when.GetNotValues())
		}
		if err != nil {
			note(f+".values", err.Error())
		}
		if errNot != nil {
			note(f+".notValues", errNot.Error())
		}
		rules = append(rules, &security.Rules{Matches: []*security.Match{m}})
	}
	if action == security.Action_ALLOW && len(bad) > 0 {
		return nil, bad
	}
	return rules, bad
}

func stringMatches(v []string) []*security.StringMatch {
	out := make([]*security.StringMatch, 0, len(v))
	for _, s := range v {
		switch {
		case s == "*":
			out = append(out, presence())
		case strings.HasPrefix(s, "*"):
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: strings.TrimPrefix(s, "*")}})
		case strings.HasSuffix(s, "*"):
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: strings.TrimSuffix(s, "*")}})
		default:
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}})
		}
	}
	return out
}

// principalMatches rejects principals written as URIs: ztunnel compares
// against "<td>/ns/<ns>/sa/<sa>", so "spiffe://..." would silently never match.
func principalMatches(v []string) ([]*security.StringMatch, error) {
	for _, p := range v {
		if strings.Contains(p, "://") {
			return stringMatches(v), fmt.Errorf("principal %q must be written without a URI scheme, as <trust-domain>/ns/<namespace>/sa/<account>", p)
		}
	}
	return stringMatches(v), nil
}

func serviceAccountMatches(v []string, ns string) []*security.ServiceAccountMatch {
	out := make([]*security.ServiceAccountMatch, 0, len(v))
	for _, s := range v {
		if n, sa, ok := strings.Cut(s, "/"); ok {
			out = append(out, &security.ServiceAccountMatch{Namespace: n, ServiceAccount: sa})
		} else {
			out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: s})
		}
	}
	return out
}

func parsePorts(v []string) ([]uint32, error) {
	out := make([]uint32, 0, len(v))
	var firstErr error
	for _, s := range v {
		p, err := strconv.ParseUint(s, 10, 32)
		if err != nil || p == 0 || p > 65535 {
			firstErr = cmp.Or(firstErr, fmt.Errorf("invalid port %q", s))
			continue
		}
		out = append(out, uint32(p))
	}
	return out, firstErr
}

func parseAddresses(v []string) ([]*security.Address, error) {
	out := make([]*security.Address, 0, len(v))
	var firstErr error
	for _, s := range v {
		var addr netip.Addr
		var bits int
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				firstErr = cmp.Or(firstErr, fmt.Errorf("invalid CIDR %q", s))
				continue
			}
			addr, bits = p.Addr(), p.Bits()
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil {
				firstErr = cmp.Or(firstErr, fmt.Errorf("invalid IP %q", s))
				continue
			}
			addr, bits = a, a.BitLen()
		}
		out = append(out, &security.Address{Address: addr.AsSlice(), Length: uint32(bits)})
	}
	return out, firstErr
}

// --- PeerAuthentication ---

type mtlsMode = securityv1beta1.PeerAuthentication_MutualTLS_Mode

const (
	modeUnset      = securityv1beta1.PeerAuthentication_MutualTLS_UNSET
	modeStrict     = securityv1beta1.PeerAuthentication_MutualTLS_STRICT
	modePermissive = securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
	modeDisable    = securityv1beta1.PeerAuthentication_MutualTLS_DISABLE
)

func modeOf(m *securityv1beta1.PeerAuthentication_MutualTLS) mtlsMode { return m.GetMode() }

func olderPA(a, b *securityv1.PeerAuthentication) bool {
	if b == nil {
		return true
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

func isWorkloadPA(pa *securityv1.PeerAuthentication) bool {
	return len(pa.Spec.GetSelector().GetMatchLabels()) > 0
}

// namespacePA returns the oldest selector-less PeerAuthentication of ns.
func namespacePA(s Snapshot, ns string) *securityv1.PeerAuthentication {
	var out *securityv1.PeerAuthentication
	for _, pa := range s.PeerAuthentications {
		if pa.Namespace == ns && !isWorkloadPA(pa) && olderPA(pa, out) {
			out = pa
		}
	}
	return out
}

func convertedPAName(pa *securityv1.PeerAuthentication) string {
	return ConvertedPeerAuthenticationPrefix + pa.Name
}

// convertPeerAuthentication turns a workload PeerAuthentication with
// port-level modes into a DENY Authorization carrying its port exceptions,
// merged with the inherited STRICT mode where needed. Other PeerAuthentications
// are expressed by attaching the static STRICT policy (see peerAuthKeys).
func convertPeerAuthentication(s Snapshot, pa *securityv1.PeerAuthentication) *security.Authorization {
	root := s.Mesh.RootNamespace
	spec := &pa.Spec
	if pa.Namespace == root || spec.GetSelector() == nil || len(spec.GetPortLevelMtls()) == 0 {
		return nil
	}
	nsCfg, rootCfg := namespacePA(s, pa.Namespace), namespacePA(s, root)
	mode := modeOf(spec.GetMtls())
	nsMode, rootMode := modeUnset, modeUnset
	if nsCfg != nil {
		nsMode = modeOf(nsCfg.Spec.GetMtls())
	}
	if rootCfg != nil {
		rootMode = modeOf(rootCfg.Spec.GetMtls())
	}
	// inheritedStrict: the mode this workload gets from its parents.
	inheritedStrict := nsMode == modeStrict || (nsMode == modeUnset && rootMode == modeStrict)

	var rules []*security.Rules
	var groups []*security.Group
	if mode == modeStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{denyWithoutIdentity()}})
	}
	foundNonStrict := false
	ports := slices.Sorted(maps.Keys(spec.GetPortLevelMtls()))
	for _, port := range ports {
		if port == 0 || port > 65535 {
			continue // reported by validatePeerAuthentication
		}
		switch modeOf(spec.GetPortLevelMtls()[port]) {
		case modeStrict:
			if mode == modeStrict || (mode == modeUnset && inheritedStrict) {
				continue // the parent mode already enforces it
			}
			groups = append(groups, &security.Group{Rules: []*security.Rules{{Matches: []*security.Match{{
				NotPrincipals:    []*security.StringMatch{presence()},
				DestinationPorts: []uint32{port},
			}}}}})
		case modePermissive, modeDisable:
			if mode == modePermissive || mode == modeDisable {
				continue
			}
			if mode == modeUnset && !inheritedStrict {
				continue
			}
			foundNonStrict = true
			rules = append(rules, &security.Rules{Matches: []*security.Match{{NotDestinationPorts: []uint32{port}}}})
		}
	}
	if mode == modeStrict && !foundNonStrict {
		return nil
	}
	if len(rules) == 0 && len(groups) == 0 {
		return nil
	}
	if inheritedStrict && foundNonStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{denyWithoutIdentity()}})
	}
	if len(rules) > 0 {
		groups = append(groups, &security.Group{Rules: rules})
	}
	return &security.Authorization{
		Name:      convertedPAName(pa),
		Namespace: pa.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups:    groups,
	}
}

// peerAuthKeys returns the Authorization names a workload must reference to
// enforce its effective PeerAuthentication: the static STRICT policy, and/or
// its converted port-level policy.
func peerAuthKeys(s Snapshot, ns string, podLabels map[string]string) []string {
	root := s.Mesh.RootNamespace
	var meshCfg, nsCfg, wlCfg *securityv1.PeerAuthentication
	for _, pa := range s.PeerAuthentications {
		switch {
		case !isWorkloadPA(pa) && pa.Namespace == root:
			if olderPA(pa, meshCfg) {
				meshCfg = pa
			}
		case pa.Namespace != ns:
		case !isWorkloadPA(pa):
			if olderPA(pa, nsCfg) {
				nsCfg = pa
			}
		case ns != root && selects(pa.Spec.GetSelector().GetMatchLabels(), podLabels):
			if olderPA(pa, wlCfg) {
				wlCfg = pa
			}
		}
	}
	strict := false
	if meshCfg != nil {
		strict = modeOf(meshCfg.Spec.GetMtls()) == modeStrict
	}
	if nsCfg != nil && modeOf(nsCfg.Spec.GetMtls()) != modeUnset {
		strict = modeOf(nsCfg.Spec.GetMtls()) == modeStrict
	}
	portKey := ""
	if wlCfg != nil {
		spec := &wlCfg.Spec
		mode := modeOf(spec.GetMtls())
		switch mode {
		case modeStrict:
			strict = true
		case modePermissive, modeDisable:
			strict = false
		}
		anyPort := func(want ...mtlsMode) bool {
			for _, m := range spec.GetPortLevelMtls() {
				if slices.Contains(want, modeOf(m)) {
					return true
				}
			}
			return false
		}
		key := wlCfg.Namespace + "/" + convertedPAName(wlCfg)
		switch {
		case len(spec.GetPortLevelMtls()) == 0:
		case mode == modeStrict:
			if anyPort(modePermissive, modeDisable) {
				portKey, strict = key, false
			}
		case mode == modePermissive || mode == modeDisable:
			if anyPort(modeStrict) {
				portKey = key
			}
		case strict: // unset, inheriting STRICT
			if anyPort(modePermissive) {
				portKey, strict = key, false
			}
		default: // unset, inheriting PERMISSIVE
			if anyPort(modeStrict) {
				portKey = key
			}
		}
	}
	var out []string
	if strict {
		out = append(out, root+"/"+StaticStrictPolicyName)
	}
	if portKey != "" {
		out = append(out, portKey)
	}
	slices.Sort(out)
	return out
}

// workloadPolicies lists the selector-based Authorizations that apply to a
// workload (namespace-wide and global ones ztunnel finds by itself), sorted,
// followed by its PeerAuthentication-derived ones.
func workloadPolicies(s Snapshot, auths []*authzInfo, ns string, podLabels map[string]string) []string {
	var out []string
	for _, a := range auths {
		if a.selector == nil || a.auth.Name == StaticStrictPolicyName || strings.HasPrefix(a.auth.Name, ConvertedPeerAuthenticationPrefix) {
			continue
		}
		if a.auth.Namespace != ns && a.auth.Namespace != s.Mesh.RootNamespace {
			continue
		}
		if selects(a.selector, podLabels) {
			out = append(out, a.auth.Namespace+"/"+a.auth.Name)
		}
	}
	slices.Sort(out)
	return append(out, peerAuthKeys(s, ns, podLabels)...)
}

// validatePeerAuthentication reports settings ztunnel ignores.
func validatePeerAuthentication(root string, pa *securityv1.PeerAuthentication) []Diagnostic {
	diag := func(field, reason, msg string) Diagnostic {
		return Diagnostic{Kind: "PeerAuthentication", Namespace: pa.Namespace, Name: pa.Name, Field: field, Reason: reason, Message: msg}
	}
	var out []Diagnostic
	if err := validSelector(pa.Spec.GetSelector()); err != nil {
		out = append(out, diag("spec.selector.matchLabels", "InvalidSelector", err.Error()))
	}
	if len(pa.Spec.GetPortLevelMtls()) > 0 && (!isWorkloadPA(pa) || pa.Namespace == root) {
		out = append(out, diag("spec.portLevelMtls", "UnsupportedValue",
			"port-level mTLS applies only to a workload selector outside the root namespace; ignored"))
	}
	for _, port := range slices.Sorted(maps.Keys(pa.Spec.GetPortLevelMtls())) {
		if port == 0 || port > 65535 {
			out = append(out, diag(fmt.Sprintf("spec.portLevelMtls[%d]", port), "InvalidPort", "port out of range"))
		}
	}
	return out
}
