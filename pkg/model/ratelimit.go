package model

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/ambient-mesh/mesh/api/policy/v1alpha1"
	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// KindLocalRateLimitPolicy is the kind of policyv1alpha1.LocalRateLimitPolicy.
const KindLocalRateLimitPolicy = "LocalRateLimitPolicy"

// PolicyControllerName is the controllerName of the policy ancestor
// statuses istiod-lite writes on its own policies.
const PolicyControllerName gatewayv1.GatewayController = "ambient-mesh.io/istiod-lite"

// PolicyConditionAccepted is the condition istiod-lite writes on the
// VirtualServices it reads (into Istio's status.conditions), as on policies.
const PolicyConditionAccepted = string(gatewayv1.PolicyConditionAccepted)

// PolicyStatus is the part of a policy's status istiod-lite owns. For a
// LocalRateLimitPolicy: Ancestors (Gateway API policy status, one per
// targetRef, controllerName PolicyControllerName). For a VirtualService:
// Conditions (Accepted), written into Istio's status.conditions. Conditions
// carry observedGeneration and no lastTransitionTime (the writer sets it).
type PolicyStatus struct {
	Kind       string
	Namespace  string
	Name       string
	Generation int64
	Ancestors  []gatewayv1.PolicyAncestorStatus
	Conditions []metav1.Condition
}

// rateLimits are the compiled LocalRateLimitPolicies by target.
type rateLimits struct {
	services map[string]*waypointv1alpha1.LocalRateLimit // Service "ns/name"
	routes   map[string]*waypointv1alpha1.LocalRateLimit // HTTPRoute "ns/name" (every rule)
	rules    map[string]*waypointv1alpha1.LocalRateLimit // HTTPRoute "ns/name/<rule name>"
}

// forRule is the limit of one HTTPRoute rule: a policy naming the rule
// (sectionName) wins over one targeting the whole route.
func (r rateLimits) forRule(ns, name string, rule *gatewayv1.SectionName) *waypointv1alpha1.LocalRateLimit {
	if rule != nil {
		if l := r.rules[ns+"/"+name+"/"+string(*rule)]; l != nil {
			return l
		}
	}
	return r.routes[ns+"/"+name]
}

// bucket converts a policy's limit to the waypoint's token bucket:
// {requests, unit} is a bucket of requests tokens refilled every unit.
func bucket(p *policyv1alpha1.LocalRateLimitPolicy) (*waypointv1alpha1.LocalRateLimit, *routeProblem) {
	out := &waypointv1alpha1.LocalRateLimit{Name: p.Namespace + "/" + p.Name}
	switch l, b := p.Spec.Limit, p.Spec.Bucket; {
	case (l == nil) == (b == nil):
		return nil, &routeProblem{"spec", "exactly one of limit and bucket must be set"}
	case l != nil:
		if l.Requests < 1 {
			return nil, &routeProblem{"spec.limit.requests", "must be at least 1"}
		}
		unit := map[policyv1alpha1.RateLimitUnit]time.Duration{
			policyv1alpha1.RateLimitUnitSecond: time.Second, policyv1alpha1.RateLimitUnitMinute: time.Minute, policyv1alpha1.RateLimitUnitHour: time.Hour,
		}[l.Unit]
		if unit == 0 {
			return nil, &routeProblem{"spec.limit.unit", fmt.Sprintf("unit %q is not one of Second, Minute, Hour", l.Unit)}
		}
		out.MaxTokens, out.TokensPerFill, out.FillInterval = uint32(l.Requests), uint32(l.Requests), durationpb.New(unit)
	default:
		if b.MaxTokens < 1 {
			return nil, &routeProblem{"spec.bucket.maxTokens", "must be at least 1"}
		}
		if b.TokensPerFill < 1 {
			return nil, &routeProblem{"spec.bucket.tokensPerFill", "must be at least 1"}
		}
		d, err := time.ParseDuration(string(b.FillInterval))
		if err != nil || d < time.Millisecond {
			return nil, &routeProblem{"spec.bucket.fillInterval", fmt.Sprintf("%q is not a duration of at least 1ms", b.FillInterval)}
		}
		out.MaxTokens, out.TokensPerFill, out.FillInterval = uint32(b.MaxTokens), uint32(b.TokensPerFill), durationpb.New(d)
	}
	return out, nil
}

// compileRateLimits resolves every LocalRateLimitPolicy and computes its
// status. Conflicts (several policies on one target) are resolved as
// GEP-713 says: the oldest, then the first by namespace/name, wins.
func (c *routeCompiler) compileRateLimits(s Snapshot, statuses map[string]*PolicyStatus) rateLimits {
	out := rateLimits{services: map[string]*waypointv1alpha1.LocalRateLimit{}, routes: map[string]*waypointv1alpha1.LocalRateLimit{},
		rules: map[string]*waypointv1alpha1.LocalRateLimit{}}
	owner := map[string]string{} // target key -> winning policy "ns/name"
	routes := map[string]*gatewayv1.HTTPRoute{}
	for _, r := range s.HTTPRoutes {
		routes[r.Namespace+"/"+r.Name] = r
	}
	pols := slices.Clone(s.LocalRateLimitPolicies)
	slices.SortFunc(pols, func(a, b *policyv1alpha1.LocalRateLimitPolicy) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, p := range pols {
		st := &PolicyStatus{Kind: KindLocalRateLimitPolicy, Namespace: p.Namespace, Name: p.Name, Generation: p.Generation}
		statuses[RouteStatusKey(KindLocalRateLimitPolicy, p.Namespace, p.Name)] = st
		diag := func(field, reason, msg string) {
			c.diags = append(c.diags, Diagnostic{Kind: KindLocalRateLimitPolicy, Namespace: p.Namespace, Name: p.Name, Field: field, Reason: reason, Message: msg})
		}
		limit, problem := bucket(p)
		if problem != nil {
			diag(problem.field, string(gatewayv1.PolicyReasonInvalid), problem.msg)
		}
		for i, ref := range p.Spec.TargetRefs {
			if i >= 16 {
				break // status.ancestors holds 16
			}
			f := "spec.targetRefs[" + itoa(i) + "]"
			ancestor := gatewayv1.ParentReference{Group: ptr.To(ref.Group), Kind: ptr.To(ref.Kind), Namespace: ptr.To(gatewayv1.Namespace(p.Namespace)),
				Name: ref.Name, SectionName: ref.SectionName}
			reason, msg := string(gatewayv1.PolicyReasonAccepted), "Policy accepted"
			fail := func(r, m string) {
				reason, msg = r, m
				diag(f, r, m)
			}
			key := p.Namespace + "/" + string(ref.Name)
			var target map[string]*waypointv1alpha1.LocalRateLimit
			switch {
			case problem != nil:
				reason, msg = string(gatewayv1.PolicyReasonInvalid), problem.field+": "+problem.msg
			case (ref.Group == "" || ref.Group == "core") && ref.Kind == "Service":
				info := c.infos[key]
				switch {
				case ref.SectionName != nil:
					fail(string(gatewayv1.PolicyReasonInvalid), "sectionName is not supported for a Service target; target the Service, or an HTTPRoute rule by name")
				case c.services[key] == nil:
					fail(string(gatewayv1.PolicyReasonTargetNotFound), fmt.Sprintf("Service %s not found", key))
				default:
					target = out.services
					if info == nil || info.waypoint == nil {
						msg = "Policy accepted; Service " + key + " does not use a waypoint (istio.io/use-waypoint), so no limit applies until it does"
					}
				}
			case ref.Group == gatewayv1.GroupName && ref.Kind == KindHTTPRoute:
				hr := routes[key]
				switch {
				case hr == nil:
					fail(string(gatewayv1.PolicyReasonTargetNotFound), fmt.Sprintf("HTTPRoute %s not found", key))
				case ref.SectionName != nil && !slices.ContainsFunc(hr.Spec.Rules, func(r gatewayv1.HTTPRouteRule) bool {
					return r.Name != nil && *r.Name == *ref.SectionName
				}):
					fail(string(gatewayv1.PolicyReasonTargetNotFound), fmt.Sprintf("HTTPRoute %s has no rule named %q", key, *ref.SectionName))
				case ref.SectionName != nil:
					target, key = out.rules, key+"/"+string(*ref.SectionName)
				default:
					target = out.routes
				}
			default:
				fail(string(gatewayv1.PolicyReasonInvalid), fmt.Sprintf("target kind %s in group %q is not supported; use a Service or an HTTPRoute", ref.Kind, ref.Group))
			}
			if target != nil {
				tk := string(ref.Kind) + "/" + key
				if w, taken := owner[tk]; taken && w != p.Namespace+"/"+p.Name {
					fail(string(gatewayv1.PolicyReasonConflicted), fmt.Sprintf("LocalRateLimitPolicy %s, older, already limits %s %s", w, ref.Kind, key))
				} else {
					owner[tk] = p.Namespace + "/" + p.Name
					target[key] = limit
				}
			}
			status := metav1.ConditionTrue
			if reason != string(gatewayv1.PolicyReasonAccepted) {
				status = metav1.ConditionFalse
			}
			st.Ancestors = append(st.Ancestors, gatewayv1.PolicyAncestorStatus{AncestorRef: ancestor, ControllerName: PolicyControllerName,
				Conditions: []metav1.Condition{{Type: PolicyConditionAccepted, Status: status, Reason: reason, Message: msg, ObservedGeneration: p.Generation}}})
		}
	}
	return out
}
