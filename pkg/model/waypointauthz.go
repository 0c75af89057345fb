package model

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// headerKey matches Istio's request.headers[<name>] condition key.
var headerKey = regexp.MustCompile(`^request\.headers\[([^\]]+)\]$`)

// ConditionWaypointAccepted is the condition Istio writes on an
// AuthorizationPolicy with targetRefs: whether a waypoint enforces it.
const ConditionWaypointAccepted = "istio.io/WaypointAccepted"

// compileWaypointAuthorizations compiles the AuthorizationPolicies with
// targetRefs, which waypoints enforce (ztunnel ignores them; see
// convertAuthorizationPolicy), keyed by the ServiceConfig they apply to. A
// policy applies to a Service it targets (group "", kind Service), to every
// Service of a waypoint Gateway it targets, and, from the root namespace
// with the GatewayClass istio-waypoint, to every waypoint-bound Service.
// Each such policy gets Istio's istio.io/WaypointAccepted condition in
// statuses.
func (c *routeCompiler) compileWaypointAuthorizations(s Snapshot, statuses map[string]*PolicyStatus) map[string][]*waypointv1alpha1.AuthorizationPolicy {
	out := map[string][]*waypointv1alpha1.AuthorizationPolicy{}
	for _, ap := range s.AuthorizationPolicies {
		if ap.Spec.GetTargetRef() == nil && len(ap.Spec.GetTargetRefs()) == 0 {
			continue
		}
		pol, targets, cond := c.waypointAuthorization(ap)
		for _, k := range targets {
			out[k] = append(out[k], pol)
		}
		statuses[RouteStatusKey(KindAuthorizationPolicy, ap.Namespace, ap.Name)] = &PolicyStatus{Kind: KindAuthorizationPolicy,
			Namespace: ap.Namespace, Name: ap.Name, Generation: ap.Generation, Conditions: []metav1.Condition{cond}}
	}
	for k := range out {
		slices.SortFunc(out[k], func(a, b *waypointv1alpha1.AuthorizationPolicy) int { return cmp.Compare(a.Name, b.Name) })
	}
	return out
}

// KindAuthorizationPolicy is the kind of Istio's AuthorizationPolicy.
const KindAuthorizationPolicy = "AuthorizationPolicy"

// waypointAuthorization compiles one policy with targetRefs: the policy,
// the ServiceConfigs it applies to, and its WaypointAccepted condition
// (True when a waypoint enforces it, else False with the first reason).
func (c *routeCompiler) waypointAuthorization(ap *securityv1.AuthorizationPolicy) (*waypointv1alpha1.AuthorizationPolicy, []string, metav1.Condition) {
	cond := metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, ObservedGeneration: ap.Generation}
	diag := func(field, reason, msg string) {
		c.diags = append(c.diags, Diagnostic{Kind: KindAuthorizationPolicy, Namespace: ap.Namespace, Name: ap.Name, Field: field, Reason: reason, Message: msg})
		if cond.Reason == "" {
			cond.Reason, cond.Message = reason, field+": "+msg
		}
	}
	type refAt struct {
		ref   *typev1beta1.PolicyTargetReference
		field string
	}
	var refs []refAt
	if r := ap.Spec.GetTargetRef(); r != nil {
		refs = append(refs, refAt{r, "spec.targetRef"})
	}
	for i, r := range ap.Spec.GetTargetRefs() {
		refs = append(refs, refAt{r, "spec.targetRefs[" + itoa(i) + "]"})
	}
	if ap.Spec.GetSelector() != nil {
		diag("spec.selector", "UnsupportedValue", "selector and targetRefs are exclusive; the policy is enforced by waypoints for its targetRefs only")
	}
	pol := c.waypointPolicy(ap, diag)
	if pol == nil {
		return nil, nil, cond
	}
	targets := map[string]bool{}
	waypoints := map[string]bool{}
	bind := func(info *serviceInfo) {
		targets[ServiceResourceName(info.svc)] = true
		waypoints[info.waypoint.namespace+"/"+info.waypoint.name] = true
	}
	for _, at := range refs {
		ref, f := at.ref, at.field
		if ref.GetNamespace() != "" && ref.GetNamespace() != ap.Namespace {
			diag(f+".namespace", "UnsupportedValue", "a targetRef must be in the policy's namespace; ignored")
			continue
		}
		key := ap.Namespace + "/" + ref.GetName()
		switch {
		case (ref.GetGroup() == "" || ref.GetGroup() == "core") && ref.GetKind() == "Service":
			info := c.infos[key]
			switch {
			case info == nil:
				diag(f, "TargetNotFound", fmt.Sprintf("Service %s not found", key))
			case info.waypoint == nil:
				diag(f, "NoWaypoint", fmt.Sprintf("Service %s does not use a waypoint; the policy is not enforced until it does (ztunnel ignores policies with targetRefs)", key))
			default:
				bind(info)
			}
		case ref.GetGroup() == "gateway.networking.k8s.io" && ref.GetKind() == "Gateway":
			wp := c.idx.waypointGateways[key]
			if wp == nil {
				diag(f, "TargetNotFound", fmt.Sprintf("waypoint Gateway %s not found (gatewayClassName %s)", key, WaypointGatewayClassName))
				continue
			}
			for _, info := range c.infos {
				if info.waypoint != nil && info.waypoint.namespace == wp.namespace && info.waypoint.name == wp.name {
					bind(info)
				}
			}
		case ref.GetGroup() == "gateway.networking.k8s.io" && ref.GetKind() == "GatewayClass" && ref.GetName() == WaypointGatewayClassName && ap.Namespace == c.mesh.RootNamespace:
			for _, info := range c.infos {
				if info.waypoint != nil {
					bind(info)
				}
			}
		default:
			diag(f, "UnsupportedValue", fmt.Sprintf("target %s %q in group %q is not supported; use a Service or a waypoint Gateway (or GatewayClass %s from %s)",
				ref.GetKind(), ref.GetName(), ref.GetGroup(), WaypointGatewayClassName, c.mesh.RootNamespace))
		}
	}
	if len(targets) > 0 {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, "Accepted", "bound to "+strings.Join(slices.Sorted(maps.Keys(waypoints)), ", ")
	} else if cond.Reason == "" {
		cond.Reason, cond.Message = "NoWaypoint", "no target uses a waypoint"
	}
	return pol, slices.Sorted(maps.Keys(targets)), cond
}

// waypointPolicy compiles an AuthorizationPolicy's rules for the waypoint.
// What the waypoint cannot evaluate fails closed: such a rule never matches
// in an ALLOW policy (it is dropped) and always matches in a DENY policy
// (it is kept with no conditions). nil: the policy does not apply.
func (c *routeCompiler) waypointPolicy(ap *securityv1.AuthorizationPolicy, diag func(field, reason, msg string)) *waypointv1alpha1.AuthorizationPolicy {
	out := &waypointv1alpha1.AuthorizationPolicy{Name: ap.Namespace + "/" + ap.Name}
	switch ap.Spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		out.Action = waypointv1alpha1.AuthorizationPolicy_ALLOW
	case securityv1beta1.AuthorizationPolicy_DENY:
		out.Action = waypointv1alpha1.AuthorizationPolicy_DENY
	default:
		diag("spec.action", "UnsupportedValue", "the waypoint does not support the "+ap.Spec.GetAction().String()+" action; the policy is ignored")
		return nil
	}
	if _, dry := ap.Annotations[AnnotationDryRun]; dry {
		diag("metadata.annotations["+AnnotationDryRun+"]", "UnsupportedValue", "dry-run is not supported by the waypoint; the policy is enforced")
	}
	for i, rule := range ap.Spec.GetRules() {
		f := "spec.rules[" + itoa(i) + "]"
		r, bad := c.waypointRule(rule, ap.Namespace, f)
		if len(bad) == 0 {
			out.Rules = append(out.Rules, r)
			continue
		}
		for _, u := range bad {
			msg := u.what + "; "
			if out.Action == waypointv1alpha1.AuthorizationPolicy_ALLOW {
				msg += "this ALLOW rule never matches (fails closed)"
			} else {
				msg += "this DENY rule matches every request (fails closed)"
			}
			diag(u.field, "UnsupportedValue", msg)
		}
		if out.Action == waypointv1alpha1.AuthorizationPolicy_DENY {
			out.Rules = append(out.Rules, &waypointv1alpha1.AuthorizationRule{})
		}
	}
	return out
}

func (c *routeCompiler) waypointRule(rule *securityv1beta1.Rule, ns, path string) (*waypointv1alpha1.AuthorizationRule, []unsupported) {
	var bad []unsupported
	note := func(field, what string) { bad = append(bad, unsupported{field: path + field, what: what}) }
	out := &waypointv1alpha1.AuthorizationRule{}
	principals := func(v []string, field string) []string {
		for _, p := range v {
			if strings.Contains(p, "://") {
				note(field, fmt.Sprintf("principal %q must be written without a URI scheme, as <trust-domain>/ns/<namespace>/sa/<account>", p))
			}
		}
		return v
	}
	for i, fr := range rule.GetFrom() {
		src := fr.GetSource()
		f := ".from[" + itoa(i) + "].source"
		for name, v := range map[string][]string{
			"requestPrincipals": src.GetRequestPrincipals(), "notRequestPrincipals": src.GetNotRequestPrincipals(),
			"ipBlocks": src.GetIpBlocks(), "notIpBlocks": src.GetNotIpBlocks(),
			"remoteIpBlocks": src.GetRemoteIpBlocks(), "notRemoteIpBlocks": src.GetNotRemoteIpBlocks(),
			"trustDomains": src.GetTrustDomains(), "notTrustDomains": src.GetNotTrustDomains(),
		} {
			if len(v) > 0 {
				note(f+"."+name, "the waypoint cannot evaluate "+name)
			}
		}
		s := &waypointv1alpha1.AuthorizationSource{
			Principals:    principals(src.GetPrincipals(), f+".principals"),
			NotPrincipals: principals(src.GetNotPrincipals(), f+".notPrincipals"),
			Namespaces:    src.GetNamespaces(),
			NotNamespaces: src.GetNotNamespaces(),
		}
		// serviceAccounts are principals of this mesh's trust domain.
		for _, list := range []struct {
			in  []string
			out *[]string
		}{{src.GetServiceAccounts(), &s.Principals}, {src.GetNotServiceAccounts(), &s.NotPrincipals}} {
			for _, sa := range list.in {
				n, a, ok := strings.Cut(sa, "/")
				if !ok {
					n, a = ns, sa
				}
				*list.out = append(*list.out, c.mesh.TrustDomain+"/ns/"+n+"/sa/"+a)
			}
		}
		out.From = append(out.From, s)
	}
	for i, t := range rule.GetTo() {
		op := t.GetOperation()
		f := ".to[" + itoa(i) + "].operation"
		o := &waypointv1alpha1.AuthorizationOperation{Hosts: op.GetHosts(), NotHosts: op.GetNotHosts(), Methods: op.GetMethods(), NotMethods: op.GetNotMethods()}
		var err error
		if o.Ports, err = parsePorts(op.GetPorts()); err != nil {
			note(f+".ports", err.Error())
		}
		if o.NotPorts, err = parsePorts(op.GetNotPorts()); err != nil {
			note(f+".notPorts", err.Error())
		}
		for _, p := range []struct {
			in   []string
			out  *[]string
			name string
		}{{op.GetPaths(), &o.Paths, "paths"}, {op.GetNotPaths(), &o.NotPaths, "notPaths"}} {
			for _, v := range p.in {
				if strings.Contains(v, "{") {
					note(f+"."+p.name, fmt.Sprintf("path template %q is not supported by the waypoint", v))
				}
				*p.out = append(*p.out, v)
			}
		}
		out.To = append(out.To, o)
	}
	for i, w := range rule.GetWhen() {
		f := ".when[" + itoa(i) + "]"
		cond := &waypointv1alpha1.AuthorizationCondition{Key: w.GetKey(), Values: w.GetValues(), NotValues: w.GetNotValues()}
		switch k := w.GetKey(); {
		case k == "source.principal":
			principals(w.GetValues(), f+".values")
			principals(w.GetNotValues(), f+".notValues")
		case k == "source.namespace":
		case k == "destination.port":
			for _, v := range [][]string{w.GetValues(), w.GetNotValues()} {
				if _, err := parsePorts(v); err != nil {
					note(f+".values", err.Error())
				}
			}
		case headerKey.MatchString(k):
		default:
			note(f+".key", "the waypoint cannot evaluate condition "+strconv.Quote(k))
		}
		out.When = append(out.When, cond)
	}
	return out, bad
}
