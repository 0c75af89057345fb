package model

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"istio.io/istio/pkg/workloadapi"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// WaypointConfigTypeURL is the type of the waypoint's L7 configuration,
// one ServiceConfig per Service bound to a waypoint.
const WaypointConfigTypeURL = "type.googleapis.com/ambientmesh.waypoint.v1alpha1.ServiceConfig"

// RouteStatusControllerName is the controllerName of the route parent
// statuses istiod-lite writes. Istio writes every route status, mesh
// (GAMMA) parents included, under its Gateway API controller name
// (features.ManagedGatewayController, PILOT_GATEWAY_API_CONTROLLER_NAME),
// not under istio.io/mesh-controller.
const RouteStatusControllerName gatewayv1.GatewayController = "istio.io/gateway-controller"

// RouteConditionResolvedWaypoints is Istio's ambient condition on a route
// parent: whether the parent uses a waypoint, without which a mesh route has
// no effect. As in Istio it is always True; its message says what is missing.
const RouteConditionResolvedWaypoints = "ResolvedWaypoints"

// Route kinds, as in RouteStatus.Kind and HTTPRoute names.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
	KindTCPRoute  = "TCPRoute"
)

// RouteStatus is the part of one route's status istiod-lite owns: one entry
// per parentRef it is responsible for (a Service, or an istio-waypoint
// Gateway), in spec order. Entries of other controllers are not here and
// must be kept by the writer.
type RouteStatus struct {
	Kind      string
	Namespace string
	Name      string
	// Generation is the route generation the conditions describe; every
	// condition carries it as observedGeneration.
	Generation int64
	// Parents have ControllerName RouteStatusControllerName and conditions
	// Accepted, ResolvedRefs and ResolvedWaypoints without
	// lastTransitionTime (the writer sets it when a condition changes).
	Parents []gatewayv1.RouteParentStatus
}

// RouteStatusKey is the key of a route in Resources.RouteStatuses:
// "<kind>/<namespace>/<name>".
func RouteStatusKey(kind, namespace, name string) string {
	return kind + "/" + namespace + "/" + name
}

// routeProblem is a reason a route is not accepted: the field and why.
type routeProblem struct{ field, msg string }

// parentProblem is why a parentRef is not accepted: a Gateway API reason.
type parentProblem struct{ reason, msg string }

// refProblem is a backend reference that did not resolve.
type refProblem struct{ field, reason, msg string }

// httpEntry is one match of one rule of an HTTP or gRPC route, compiled, with
// its precedence keys (Gateway API: exact path, longer prefix, method, more
// headers, more query params; then the oldest route, then namespace/name,
// then rule order).
type httpEntry struct {
	route            *waypointv1alpha1.HTTPRoute
	pathRank         int // exact 3, prefix 2, regex 1, any path (prefix "/") 0
	pathLen          int
	method           bool
	headers, queries int
	src              *routeSource
	rule, match      int
}

// routeSource is a route of any kind, compiled once for all its parents.
type routeSource struct {
	kind       string
	meta       *metav1.ObjectMeta
	parentRefs []gatewayv1.ParentReference
	http       []*httpEntry
	tcp        *waypointv1alpha1.TCPRoute
	problem    *routeProblem // set: not accepted
	refs       []refProblem
}

func (r *routeSource) key() string { return RouteStatusKey(r.kind, r.meta.Namespace, r.meta.Name) }

// isHTTP reports whether the route kind attaches to HTTP-family ports.
func (r *routeSource) isHTTP() bool { return r.kind != KindTCPRoute }

// routeCompiler holds the lookups of one compilation.
type routeCompiler struct {
	mesh     MeshConfig
	idx      *index
	services map[string]*corev1.Service // "ns/name", ExternalName included
	infos    map[string]*serviceInfo    // "ns/name", translated Services
	grants   []*gatewayv1.ReferenceGrant
	limits   rateLimits // LocalRateLimitPolicies, compiled before the routes
	diags    []Diagnostic
}

// compileRoutes builds the ServiceConfig of every Service bound to a
// waypoint and the status of every route with a parent istiod-lite owns,
// and of the VirtualServices and LocalRateLimitPolicies it reads.
//
// A Service's HTTP ports take their routes from the Gateway API routes
// attached to any of its ports; only when there are none, from the
// VirtualService for it (mixing both is undefined in Istio; here the
// Gateway API wins and the VirtualService is reported Conflicted). Then
// DestinationRules (backend_policies of every backend referenced),
// LocalRateLimitPolicies and targetRef'd AuthorizationPolicies are added.
func compileRoutes(s Snapshot, idx *index, svcs []*serviceInfo) (map[string]*waypointv1alpha1.ServiceConfig, map[string]*RouteStatus, map[string]*PolicyStatus, []Diagnostic) {
	c := &routeCompiler{mesh: s.Mesh, idx: idx, services: map[string]*corev1.Service{}, infos: map[string]*serviceInfo{}, grants: s.ReferenceGrants}
	for _, svc := range s.Services {
		c.services[svc.Namespace+"/"+svc.Name] = svc
	}
	for _, info := range svcs {
		c.infos[info.source.Namespace+"/"+info.source.Name] = info
	}
	policyStatuses := map[string]*PolicyStatus{}
	drs := c.compileDestinationRules(s)
	c.limits = c.compileRateLimits(s, policyStatuses)
	vsBySvc, allVS := c.resolveVirtualServices(s)
	authz := c.compileWaypointAuthorizations(s, policyStatuses)
	var routes []*routeSource
	for _, r := range s.HTTPRoutes {
		routes = append(routes, c.compileHTTPRoute(r))
	}
	for _, r := range s.GRPCRoutes {
		routes = append(routes, c.compileGRPCRoute(r))
	}
	for _, r := range s.TCPRoutes {
		routes = append(routes, c.compileTCPRoute(r))
	}

	type portKey struct {
		svc  string
		port int32
	}
	attachedHTTP := map[portKey][]*httpEntry{}
	attachedTCP := map[portKey][]*routeSource{}
	attachedTo := map[portKey]map[string]bool{} // route keys already attached to a port
	statuses := map[string]*RouteStatus{}
	for _, r := range routes {
		if r.problem != nil {
			c.diags = append(c.diags, Diagnostic{Kind: r.kind, Namespace: r.meta.Namespace, Name: r.meta.Name,
				Field: r.problem.field, Reason: string(gatewayv1.RouteReasonUnsupportedValue), Message: r.problem.msg})
		}
		for _, p := range r.refs {
			c.diags = append(c.diags, Diagnostic{Kind: r.kind, Namespace: r.meta.Namespace, Name: r.meta.Name,
				Field: p.field, Reason: p.reason, Message: p.msg})
		}
		var parents []gatewayv1.RouteParentStatus
		for i, ref := range r.parentRefs {
			targets, owned, perr, waypointMsg := c.resolveParent(r, ref)
			if !owned {
				continue
			}
			if slices.ContainsFunc(parents, func(p gatewayv1.RouteParentStatus) bool { return sameParentRef(p.ParentRef, ref, r.meta.Namespace) }) {
				continue
			}
			if perr != nil {
				c.diags = append(c.diags, Diagnostic{Kind: r.kind, Namespace: r.meta.Namespace, Name: r.meta.Name,
					Field: "spec.parentRefs[" + itoa(i) + "]", Reason: perr.reason, Message: perr.msg})
			}
			parents = append(parents, r.parentStatus(ref, perr, waypointMsg))
			if perr != nil || r.problem != nil {
				continue
			}
			for _, t := range targets {
				k := portKey{t.svc, t.port}
				if attachedTo[k][r.key()] {
					continue
				}
				if attachedTo[k] == nil {
					attachedTo[k] = map[string]bool{}
				}
				attachedTo[k][r.key()] = true
				if r.isHTTP() {
					attachedHTTP[k] = append(attachedHTTP[k], r.http...)
				} else if r.tcp != nil {
					attachedTCP[k] = append(attachedTCP[k], r)
				}
			}
		}
		if len(parents) > 0 {
			statuses[r.key()] = &RouteStatus{Kind: r.kind, Namespace: r.meta.Namespace, Name: r.meta.Name,
				Generation: r.meta.Generation, Parents: parents}
		}
	}

	configs := map[string]*waypointv1alpha1.ServiceConfig{}
	for _, info := range svcs {
		if info.waypoint == nil {
			continue
		}
		svcKey := info.source.Namespace + "/" + info.source.Name
		sc := &waypointv1alpha1.ServiceConfig{
			Namespace: info.svc.Namespace,
			Hostname:  info.svc.Hostname,
			Waypoints: []string{info.waypoint.namespace + "/" + info.waypoint.name},
		}
		vsRoutes := c.virtualServiceRoutes(vsBySvc[svcKey], info, drs, func(port int32) []*httpEntry { return attachedHTTP[portKey{svcKey, port}] })
		for _, p := range meshPorts(info.source) {
			k := portKey{svcKey, p.Port}
			port := &waypointv1alpha1.Port{Port: uint32(p.Port), Protocol: portProtocol(p)}
			self := &waypointv1alpha1.WeightedBackend{Weight: 1, Backend: &waypointv1alpha1.Backend{
				Namespace: info.svc.Namespace, Hostname: info.svc.Hostname, Port: uint32(p.Port)}}
			if port.Protocol == waypointv1alpha1.Protocol_TCP {
				port.TcpRoute = &waypointv1alpha1.TCPRoute{Name: "default", Backends: []*waypointv1alpha1.WeightedBackend{self}}
				if rs := attachedTCP[k]; len(rs) > 0 {
					// One TCP route per port: the oldest wins, as Gateway
					// API resolves conflicts.
					port.TcpRoute = slices.MinFunc(rs, func(a, b *routeSource) int { return compareSources(a, b) }).tcp
				}
			} else {
				entries := attachedHTTP[k]
				slices.SortFunc(entries, compareEntries)
				for _, e := range entries {
					port.HttpRoutes = append(port.HttpRoutes, e.route)
				}
				if len(port.HttpRoutes) == 0 {
					port.HttpRoutes = vsRoutes[p.Port]
				}
				if len(port.HttpRoutes) == 0 {
					port.HttpRoutes = []*waypointv1alpha1.HTTPRoute{{Name: "default", Backends: []*waypointv1alpha1.WeightedBackend{self}}}
				}
			}
			sc.Ports = append(sc.Ports, port)
		}
		sc.BackendPolicies = backendPolicies(sc, drs)
		sc.RateLimit = c.limits.services[svcKey]
		sc.Authorization = authz[ServiceResourceName(info.svc)]
		configs[ServiceResourceName(info.svc)] = sc
	}
	for _, v := range allVS {
		policyStatuses[RouteStatusKey(KindVirtualService, v.vs.Namespace, v.vs.Name)] = v.status()
	}
	return configs, statuses, policyStatuses, c.diags
}

// meshPorts are the TCP ports of a Service a waypoint can carry, one per
// port number, in spec order.
func meshPorts(svc *corev1.Service) []corev1.ServicePort {
	var out []corev1.ServicePort
	seen := map[int32]bool{}
	for _, p := range svc.Spec.Ports {
		if p.Port <= 0 || p.Port > 65535 || (p.Protocol != "" && p.Protocol != corev1.ProtocolTCP) || seen[p.Port] {
			continue
		}
		seen[p.Port] = true
		out = append(out, p)
	}
	return out
}

// portProtocol is the waypoint protocol of a Service port, from its
// appProtocol or name prefix as Istio selects it; anything else is TCP.
func portProtocol(p corev1.ServicePort) waypointv1alpha1.Protocol {
	switch appProtocol(p) {
	case workloadapi.AppProtocol_HTTP11:
		return waypointv1alpha1.Protocol_HTTP
	case workloadapi.AppProtocol_HTTP2:
		return waypointv1alpha1.Protocol_HTTP2
	case workloadapi.AppProtocol_GRPC:
		return waypointv1alpha1.Protocol_GRPC
	}
	return waypointv1alpha1.Protocol_TCP
}

func compareSources(a, b *routeSource) int {
	return cmp.Or(a.meta.CreationTimestamp.Compare(b.meta.CreationTimestamp.Time),
		cmp.Compare(a.meta.Namespace, b.meta.Namespace), cmp.Compare(a.meta.Name, b.meta.Name), cmp.Compare(a.kind, b.kind))
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// compareEntries orders route matches by Gateway API precedence. Regex paths,
// whose rank Gateway API leaves to implementations, come after prefixes, as
// in Istio, but before matches on any path (prefix "/", no path or no
// match), which would otherwise hide them.
func compareEntries(a, b *httpEntry) int {
	return cmp.Or(cmp.Compare(b.pathRank, a.pathRank), cmp.Compare(b.pathLen, a.pathLen),
		cmp.Compare(boolRank(b.method), boolRank(a.method)), cmp.Compare(b.headers, a.headers), cmp.Compare(b.queries, a.queries),
		compareSources(a.src, b.src), cmp.Compare(a.rule, b.rule), cmp.Compare(a.match, b.match))
}

// parentTarget is a Service port a route attaches to.
type parentTarget struct {
	svc  string // "ns/name"
	port int32
}

// resolveParent finds what a parentRef attaches the route to. owned is false
// for parents istiod-lite does not manage (other Gateways, other kinds); a
// non-nil problem means Accepted=False.
func (c *routeCompiler) resolveParent(r *routeSource, ref gatewayv1.ParentReference) (targets []parentTarget, owned bool, problem *parentProblem, waypointMsg string) {
	group := gatewayv1.GroupName
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	kind := "Gateway"
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	ns := r.meta.Namespace
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	key := ns + "/" + string(ref.Name)
	waypointMsg = "All waypoints resolved"
	switch {
	case (group == "" || group == "core") && kind == "Service":
		svc := c.services[key]
		if svc == nil {
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonNoMatchingParent), fmt.Sprintf("parent service %q not found", key)}, "parent not found"
		}
		if ns != r.meta.Namespace {
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonUnsupportedValue),
				fmt.Sprintf("consumer routes are not supported: the route is in namespace %s, its parent Service in %s; create the route in %s", r.meta.Namespace, ns, ns)}, waypointMsg
		}
		if info := c.infos[key]; info == nil || info.waypoint == nil {
			waypointMsg = "istio.io/use-waypoint label missing from parent and parent namespace, or its waypoint is not ready; in ambient mode, route will not be respected"
		}
		var candidates []corev1.ServicePort
		for _, p := range meshPorts(svc) {
			switch {
			case ref.Port != nil && p.Port != *ref.Port:
			case ref.SectionName != nil && p.Name != string(*ref.SectionName):
			default:
				candidates = append(candidates, p)
			}
		}
		if len(candidates) == 0 {
			what := "ports"
			if ref.Port != nil {
				what = "port " + itoa(int(*ref.Port))
			} else if ref.SectionName != nil {
				what = "port named " + string(*ref.SectionName)
			}
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonNoMatchingParent), fmt.Sprintf("parent service %q has no TCP %s", key, what)}, waypointMsg
		}
		for _, p := range candidates {
			if (portProtocol(p) == waypointv1alpha1.Protocol_TCP) != !r.isHTTP() {
				continue
			}
			targets = append(targets, parentTarget{key, p.Port})
		}
		if len(targets) == 0 {
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonNotAllowedByListeners),
				fmt.Sprintf("%s does not attach to the %s of parent service %q: %s", r.kind, portsNoun(ref), key, protocolNeed(r))}, waypointMsg
		}
		return targets, true, nil, waypointMsg
	case group == gatewayv1.GroupName && kind == "Gateway":
		wp := c.idx.waypointGateways[key]
		if wp == nil {
			return nil, false, nil, "" // not a waypoint: another controller's Gateway
		}
		if ref.Port != nil && *ref.Port != HBONEPort {
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonNoMatchingParent), fmt.Sprintf("port %d not found on waypoint %s", *ref.Port, key)}, waypointMsg
		}
		if ref.SectionName != nil && (wp.listener == "" || string(*ref.SectionName) != wp.listener) {
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonNoMatchingParent), fmt.Sprintf("sectionName %q not found on waypoint %s", *ref.SectionName, key)}, waypointMsg
		}
		if !wp.allows(c.idx, r.meta.Namespace) {
			return nil, true, &parentProblem{string(gatewayv1.RouteReasonNotAllowedByListeners),
				fmt.Sprintf("waypoint %s does not allow routes from namespace %s", key, r.meta.Namespace)}, waypointMsg
		}
		// Every Service that uses the waypoint, on its ports of a
		// protocol the route kind applies to.
		for _, info := range c.infos {
			if info.waypoint != wp {
				continue
			}
			for _, p := range meshPorts(info.source) {
				if (portProtocol(p) == waypointv1alpha1.Protocol_TCP) == !r.isHTTP() {
					targets = append(targets, parentTarget{info.source.Namespace + "/" + info.source.Name, p.Port})
				}
			}
		}
		return targets, true, nil, waypointMsg
	}
	return nil, false, nil, ""
}

func portsNoun(ref gatewayv1.ParentReference) string {
	switch {
	case ref.Port != nil:
		return "port " + itoa(int(*ref.Port))
	case ref.SectionName != nil:
		return "port named " + string(*ref.SectionName)
	}
	return "ports"
}

func protocolNeed(r *routeSource) string {
	if r.isHTTP() {
		return "it needs an http, http2 or grpc port (appProtocol or name prefix)"
	}
	return "it needs a port that is not http, http2 or grpc"
}

func sameParentRef(a, b gatewayv1.ParentReference, ns string) bool {
	str := func(p gatewayv1.ParentReference) string {
		g, k, n, sec, port := gatewayv1.GroupName, "Gateway", ns, "", ""
		if p.Group != nil {
			g = string(*p.Group)
		}
		if p.Kind != nil {
			k = string(*p.Kind)
		}
		if p.Namespace != nil {
			n = string(*p.Namespace)
		}
		if p.SectionName != nil {
			sec = string(*p.SectionName)
		}
		if p.Port != nil {
			port = itoa(int(*p.Port))
		}
		return strings.Join([]string{g, k, n, string(p.Name), sec, port}, "/")
	}
	return str(a) == str(b)
}

// parentStatus builds the conditions of one parent.
func (r *routeSource) parentStatus(ref gatewayv1.ParentReference, perr *parentProblem, waypointMsg string) gatewayv1.RouteParentStatus {
	gen := r.meta.Generation
	accepted := metav1.Condition{Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.RouteReasonAccepted), Message: "Route was valid", ObservedGeneration: gen}
	switch {
	case perr != nil:
		accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, perr.reason, perr.msg
	case r.problem != nil:
		accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.RouteReasonUnsupportedValue), r.problem.field+": "+r.problem.msg
	}
	resolved := metav1.Condition{Type: string(gatewayv1.RouteConditionResolvedRefs), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.RouteReasonResolvedRefs), Message: "All references resolved", ObservedGeneration: gen}
	if len(r.refs) > 0 {
		msgs := make([]string, len(r.refs))
		for i, p := range r.refs {
			msgs[i] = p.field + ": " + p.msg
		}
		resolved.Status, resolved.Reason, resolved.Message = metav1.ConditionFalse, r.refs[0].reason, strings.Join(msgs, "; ")
	}
	return gatewayv1.RouteParentStatus{
		ParentRef:      ref,
		ControllerName: RouteStatusControllerName,
		Conditions: []metav1.Condition{accepted, resolved, {Type: RouteConditionResolvedWaypoints, Status: metav1.ConditionTrue,
			Reason: RouteConditionResolvedWaypoints, Message: waypointMsg, ObservedGeneration: gen}},
	}
}

// backend resolves a backendRef of a route in namespace ns. A reference that
// does not resolve gives an invalid Backend (requests to it get 500) and a
// problem for ResolvedRefs.
func (c *routeCompiler) backend(kind, ns string, ref gatewayv1.BackendObjectReference, field string) (*waypointv1alpha1.Backend, *refProblem) {
	bns := ns
	if ref.Namespace != nil {
		bns = string(*ref.Namespace)
	}
	b := &waypointv1alpha1.Backend{Namespace: bns, Hostname: serviceHostname(string(ref.Name), bns, c.mesh.DomainSuffix)}
	if ref.Port != nil {
		b.Port = uint32(*ref.Port)
	}
	fail := func(reason gatewayv1.RouteConditionReason, msg string) (*waypointv1alpha1.Backend, *refProblem) {
		b.Invalid = true
		return b, &refProblem{field: field, reason: string(reason), msg: msg}
	}
	if (ref.Group != nil && *ref.Group != "" && *ref.Group != "core") || (ref.Kind != nil && *ref.Kind != "Service") {
		g, k := "", "Service"
		if ref.Group != nil {
			g = string(*ref.Group)
		}
		if ref.Kind != nil {
			k = string(*ref.Kind)
		}
		return fail(gatewayv1.RouteReasonInvalidKind, fmt.Sprintf("backend kind %s in group %q is not supported; only Service", k, g))
	}
	key := bns + "/" + string(ref.Name)
	if bns != ns && !c.granted(kind, ns, bns, string(ref.Name)) {
		return fail(gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf("backend %s is in another namespace and no ReferenceGrant in %s allows %s from %s", key, bns, kind, ns))
	}
	svc := c.services[key]
	if svc == nil {
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend service %s not found", key))
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend service %s is of type ExternalName, which the mesh does not route to", key))
	}
	if ref.Port == nil {
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend service %s: port is required", key))
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == *ref.Port }) {
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend service %s has no port %d", key, *ref.Port))
	}
	return b, nil
}

// granted reports whether a ReferenceGrant in namespace to lets routes of
// kind in namespace from refer to Service name.
func (c *routeCompiler) granted(kind, from, to, name string) bool {
	for _, g := range c.grants {
		if g.Namespace != to {
			continue
		}
		okFrom := slices.ContainsFunc(g.Spec.From, func(f gatewayv1.ReferenceGrantFrom) bool {
			return string(f.Group) == gatewayv1.GroupName && string(f.Kind) == kind && string(f.Namespace) == from
		})
		okTo := slices.ContainsFunc(g.Spec.To, func(t gatewayv1.ReferenceGrantTo) bool {
			return (t.Group == "" || t.Group == "core") && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == name)
		})
		if okFrom && okTo {
			return true
		}
	}
	return false
}

func ruleName(kind string, meta *metav1.ObjectMeta, rule int) string {
	return kind + "/" + meta.Namespace + "/" + meta.Name + "/" + itoa(rule)
}

func (c *routeCompiler) compileHTTPRoute(hr *gatewayv1.HTTPRoute) *routeSource {
	r := &routeSource{kind: KindHTTPRoute, meta: &hr.ObjectMeta, parentRefs: hr.Spec.ParentRefs}
	for i, rule := range hr.Spec.Rules {
		field := "spec.rules[" + itoa(i) + "]"
		base := &waypointv1alpha1.HTTPRoute{Name: ruleName(r.kind, r.meta, i), RateLimit: c.limits.forRule(r.meta.Namespace, r.meta.Name, rule.Name)}
		var err *routeProblem
		base.Filters, err = c.httpFilters(r, rule.Filters, rule.Matches, field+".filters")
		if err == nil {
			base.Backends, err = c.httpBackends(r, rule.BackendRefs, rule.Matches, field)
		}
		if err == nil {
			err = ruleTimeouts(base, rule, field)
		}
		if err != nil {
			r.problem = err
			return r
		}
		matches := rule.Matches
		if len(matches) == 0 {
			// Gateway API's default: one match on PathPrefix "/".
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for j, m := range matches {
			e, err := httpMatch(m, field+".matches["+itoa(j)+"]")
			if err != nil {
				r.problem = err
				return r
			}
			e.route = withMatch(base, e.route.Matches[0])
			e.src, e.rule, e.match = r, i, j
			r.http = append(r.http, e)
		}
	}
	return r
}

// withMatch returns a copy of route with one match (the rest is shared).
func withMatch(route *waypointv1alpha1.HTTPRoute, m *waypointv1alpha1.HTTPMatch) *waypointv1alpha1.HTTPRoute {
	return &waypointv1alpha1.HTTPRoute{
		Name: route.Name, Matches: []*waypointv1alpha1.HTTPMatch{m}, Filters: route.Filters, Backends: route.Backends,
		RequestTimeout: route.RequestTimeout, BackendRequestTimeout: route.BackendRequestTimeout, Retry: route.Retry,
		Fault: route.Fault, RateLimit: route.RateLimit,
	}
}

// httpMatch compiles one HTTPRouteMatch into an entry holding a route with
// that single match, and its precedence keys.
func httpMatch(m gatewayv1.HTTPRouteMatch, field string) (*httpEntry, *routeProblem) {
	e := &httpEntry{pathLen: 1}
	// No path is Gateway API's default PathPrefix "/", written out so that
	// ReplacePrefixMatch always has the PREFIX match the waypoint requires.
	out := &waypointv1alpha1.HTTPMatch{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: "/"}}
	if m.Path != nil {
		typ, val := gatewayv1.PathMatchPathPrefix, "/"
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			val = *m.Path.Value
		}
		switch typ {
		case gatewayv1.PathMatchExact:
			out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_EXACT, Value: val}
			e.pathRank = 3
		case gatewayv1.PathMatchPathPrefix:
			if len(val) > 1 {
				val = strings.TrimSuffix(val, "/")
			}
			out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: val}
			if val != "/" {
				e.pathRank = 2 // "/" matches any path: rank 0
			}
		case gatewayv1.PathMatchRegularExpression:
			if _, err := regexp.Compile(val); err != nil {
				return nil, &routeProblem{field + ".path.value", "invalid regular expression: " + err.Error()}
			}
			out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: val}
			e.pathRank = 1
		default:
			return nil, &routeProblem{field + ".path.type", "unsupported path match type " + string(typ)}
		}
		e.pathLen = len(val)
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		name := strings.ToLower(string(h.Name))
		if seen[name] {
			continue // Gateway API: only the first of equivalent names counts
		}
		seen[name] = true
		sm, err := stringMatch(string(h.Name), h.Value, (*string)(h.Type), field+".headers["+itoa(i)+"]")
		if err != nil {
			return nil, err
		}
		out.Headers = append(out.Headers, sm)
	}
	seen = map[string]bool{}
	for i, q := range m.QueryParams {
		if seen[string(q.Name)] {
			continue
		}
		seen[string(q.Name)] = true
		sm, err := stringMatch(string(q.Name), q.Value, (*string)(q.Type), field+".queryParams["+itoa(i)+"]")
		if err != nil {
			return nil, err
		}
		out.QueryParams = append(out.QueryParams, sm)
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
		e.method = true
	}
	e.headers, e.queries = len(out.Headers), len(out.QueryParams)
	e.route = &waypointv1alpha1.HTTPRoute{Matches: []*waypointv1alpha1.HTTPMatch{out}}
	return e, nil
}

func stringMatch(name, value string, typ *string, field string) (*waypointv1alpha1.StringMatch, *routeProblem) {
	sm := &waypointv1alpha1.StringMatch{Name: name, Value: value}
	t := "Exact"
	if typ != nil {
		t = *typ
	}
	switch t {
	case "Exact":
	case "RegularExpression":
		if _, err := regexp.Compile(value); err != nil {
			return nil, &routeProblem{field + ".value", "invalid regular expression: " + err.Error()}
		}
		sm.Type = waypointv1alpha1.StringMatch_REGEX
	default:
		return nil, &routeProblem{field + ".type", "unsupported match type " + t}
	}
	return sm, nil
}

// httpFilters compiles the filters of a rule or a backendRef. matches are the
// rule's, which ReplacePrefixMatch needs to be PathPrefix.
func (c *routeCompiler) httpFilters(r *routeSource, fs []gatewayv1.HTTPRouteFilter, matches []gatewayv1.HTTPRouteMatch, field string) ([]*waypointv1alpha1.HTTPFilter, *routeProblem) {
	var out []*waypointv1alpha1.HTTPFilter
	for i, f := range fs {
		ff := field + "[" + itoa(i) + "]"
		switch {
		case f.Type == gatewayv1.HTTPRouteFilterRequestHeaderModifier && f.RequestHeaderModifier != nil:
			hm, err := headerModifier(f.RequestHeaderModifier, ff+".requestHeaderModifier")
			if err != nil {
				return nil, err
			}
			out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: hm}})
		case f.Type == gatewayv1.HTTPRouteFilterResponseHeaderModifier && f.ResponseHeaderModifier != nil:
			hm, err := headerModifier(f.ResponseHeaderModifier, ff+".responseHeaderModifier")
			if err != nil {
				return nil, err
			}
			out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: hm}})
		case f.Type == gatewayv1.HTTPRouteFilterURLRewrite && f.URLRewrite != nil:
			rw := &waypointv1alpha1.URLRewrite{}
			if f.URLRewrite.Hostname != nil {
				rw.Hostname = string(*f.URLRewrite.Hostname)
			}
			pm, err := pathModifier(f.URLRewrite.Path, matches, ff+".urlRewrite.path")
			if err != nil {
				return nil, err
			}
			rw.Path = pm
			out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_UrlRewrite{UrlRewrite: rw}})
		case f.Type == gatewayv1.HTTPRouteFilterRequestRedirect && f.RequestRedirect != nil:
			rd := &waypointv1alpha1.Redirect{}
			if f.RequestRedirect.Scheme != nil {
				rd.Scheme = *f.RequestRedirect.Scheme
			}
			if f.RequestRedirect.Hostname != nil {
				rd.Hostname = string(*f.RequestRedirect.Hostname)
			}
			if f.RequestRedirect.Port != nil {
				rd.Port = uint32(*f.RequestRedirect.Port)
			}
			if sc := f.RequestRedirect.StatusCode; sc != nil {
				switch *sc {
				case 301, 302, 303, 307, 308:
				default:
					return nil, &routeProblem{ff + ".requestRedirect.statusCode", fmt.Sprintf("status code %d is not supported; use 301, 302, 303, 307 or 308", *sc)}
				}
				rd.StatusCode = uint32(*sc)
			}
			pm, err := pathModifier(f.RequestRedirect.Path, matches, ff+".requestRedirect.path")
			if err != nil {
				return nil, err
			}
			rd.Path = pm
			out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestRedirect{RequestRedirect: rd}})
		case f.Type == gatewayv1.HTTPRouteFilterRequestMirror && f.RequestMirror != nil:
			b, p := c.backend(r.kind, r.meta.Namespace, f.RequestMirror.BackendRef, ff+".requestMirror.backendRef")
			if p != nil {
				// An unresolved mirror is reported and not configured.
				r.refs = append(r.refs, *p)
				continue
			}
			frac, err := mirrorFraction(f.RequestMirror, ff+".requestMirror")
			if err != nil {
				return nil, err
			}
			out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestMirror{RequestMirror: &waypointv1alpha1.Mirror{Backend: b, FractionPerMillion: frac}}})
		default:
			return nil, &routeProblem{ff + ".type", "filter type " + string(f.Type) + " is not supported (or its configuration is missing)"}
		}
	}
	return out, nil
}

func headerModifier(h *gatewayv1.HTTPHeaderFilter, field string) (*waypointv1alpha1.HeaderModifier, *routeProblem) {
	out := &waypointv1alpha1.HeaderModifier{}
	for _, l := range []struct {
		name string
		in   []gatewayv1.HTTPHeader
		out  *[]*waypointv1alpha1.Header
	}{{"set", h.Set, &out.Set}, {"add", h.Add, &out.Add}} {
		for i, hd := range l.in {
			at := field + "." + l.name + "[" + itoa(i) + "]"
			if !httpguts.ValidHeaderFieldName(string(hd.Name)) {
				return nil, &routeProblem{at + ".name", fmt.Sprintf("%q is not a header name", hd.Name)}
			}
			if !httpguts.ValidHeaderFieldValue(hd.Value) {
				return nil, &routeProblem{at + ".value", "not a valid header value"}
			}
			*l.out = append(*l.out, &waypointv1alpha1.Header{Name: string(hd.Name), Value: hd.Value})
		}
	}
	for i, n := range h.Remove {
		if !httpguts.ValidHeaderFieldName(n) {
			return nil, &routeProblem{field + ".remove[" + itoa(i) + "]", fmt.Sprintf("%q is not a header name", n)}
		}
		out.Remove = append(out.Remove, n)
	}
	return out, nil
}

func pathModifier(p *gatewayv1.HTTPPathModifier, matches []gatewayv1.HTTPRouteMatch, field string) (*waypointv1alpha1.PathModifier, *routeProblem) {
	if p == nil {
		return nil, nil
	}
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil {
			return nil, &routeProblem{field + ".replaceFullPath", "required with type ReplaceFullPath"}
		}
		if !strings.HasPrefix(*p.ReplaceFullPath, "/") {
			return nil, &routeProblem{field + ".replaceFullPath", "must start with /"}
		}
		return &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_FULL_PATH, Value: *p.ReplaceFullPath}, nil
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if p.ReplacePrefixMatch == nil {
			return nil, &routeProblem{field + ".replacePrefixMatch", "required with type ReplacePrefixMatch"}
		}
		for _, m := range matches {
			if m.Path != nil && m.Path.Type != nil && *m.Path.Type != gatewayv1.PathMatchPathPrefix {
				return nil, &routeProblem{field + ".type", "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"}
			}
		}
		if v := *p.ReplacePrefixMatch; v != "" && !strings.HasPrefix(v, "/") {
			return nil, &routeProblem{field + ".replacePrefixMatch", "must start with /"}
		}
		return &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: *p.ReplacePrefixMatch}, nil
	}
	return nil, &routeProblem{field + ".type", "unsupported path modifier " + string(p.Type)}
}

// mirrorFraction converts percent or fraction to millionths (all when unset).
func mirrorFraction(m *gatewayv1.HTTPRequestMirrorFilter, field string) (uint32, *routeProblem) {
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return 0, &routeProblem{field, "only one of percent and fraction may be set"}
	case m.Percent != nil:
		return uint32(min(max(*m.Percent, 0), 100)) * 10000, nil
	case m.Fraction != nil:
		den := int64(100)
		if m.Fraction.Denominator != nil {
			den = int64(*m.Fraction.Denominator)
		}
		num := int64(m.Fraction.Numerator)
		if den <= 0 || num < 0 || num > den {
			return 0, &routeProblem{field + ".fraction", "numerator must be between 0 and the denominator, which must be positive"}
		}
		return uint32(num * 1000000 / den), nil
	}
	return 1000000, nil
}

func (c *routeCompiler) httpBackends(r *routeSource, refs []gatewayv1.HTTPBackendRef, matches []gatewayv1.HTTPRouteMatch, field string) ([]*waypointv1alpha1.WeightedBackend, *routeProblem) {
	var out []*waypointv1alpha1.WeightedBackend
	for i, ref := range refs {
		bf := field + ".backendRefs[" + itoa(i) + "]"
		b, p := c.backend(r.kind, r.meta.Namespace, ref.BackendObjectReference, bf)
		if p != nil {
			r.refs = append(r.refs, *p)
		}
		wb := &waypointv1alpha1.WeightedBackend{Backend: b, Weight: weight(ref.Weight)}
		fs, err := c.httpFilters(r, ref.Filters, matches, bf+".filters")
		if err != nil {
			return nil, err
		}
		wb.Filters = fs
		out = append(out, wb)
	}
	return out, nil
}

func weight(w *int32) uint32 {
	if w == nil {
		return 1
	}
	return uint32(max(*w, 0))
}

func duration(d *gatewayv1.Duration, field string) (*durationpb.Duration, *routeProblem) {
	if d == nil {
		return nil, nil
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil || v < 0 {
		return nil, &routeProblem{field, fmt.Sprintf("invalid duration %q", string(*d))}
	}
	if v == 0 {
		return nil, nil // zero disables the timeout
	}
	return durationpb.New(v), nil
}

// maxRetryAttempts is the most retries the waypoint accepts per route.
const maxRetryAttempts = 100

func ruleTimeouts(out *waypointv1alpha1.HTTPRoute, rule gatewayv1.HTTPRouteRule, field string) *routeProblem {
	var err *routeProblem
	if t := rule.Timeouts; t != nil {
		if out.RequestTimeout, err = duration(t.Request, field+".timeouts.request"); err != nil {
			return err
		}
		if out.BackendRequestTimeout, err = duration(t.BackendRequest, field+".timeouts.backendRequest"); err != nil {
			return err
		}
	}
	if rt := rule.Retry; rt != nil {
		// Attempts default to 2 when unset, Istio's default retry count.
		out.Retry = &waypointv1alpha1.Retry{Attempts: 2}
		if rt.Attempts != nil {
			if *rt.Attempts > maxRetryAttempts {
				return &routeProblem{field + ".retry.attempts", fmt.Sprintf("%d retries exceed the waypoint's limit of %d", *rt.Attempts, maxRetryAttempts)}
			}
			out.Retry.Attempts = uint32(max(*rt.Attempts, 0))
		}
		for _, code := range rt.Codes {
			out.Retry.Codes = append(out.Retry.Codes, uint32(code))
		}
		if out.Retry.Backoff, err = duration(rt.Backoff, field+".retry.backoff"); err != nil {
			return err
		}
	}
	return nil
}

func (c *routeCompiler) compileGRPCRoute(gr *gatewayv1.GRPCRoute) *routeSource {
	r := &routeSource{kind: KindGRPCRoute, meta: &gr.ObjectMeta, parentRefs: gr.Spec.ParentRefs}
	for i, rule := range gr.Spec.Rules {
		field := "spec.rules[" + itoa(i) + "]"
		base := &waypointv1alpha1.HTTPRoute{Name: ruleName(r.kind, r.meta, i)}
		var err *routeProblem
		if base.Filters, err = c.httpFilters(r, grpcFilters(rule.Filters), nil, field+".filters"); err != nil {
			r.problem = err
			return r
		}
		for j, ref := range rule.BackendRefs {
			bf := field + ".backendRefs[" + itoa(j) + "]"
			b, p := c.backend(r.kind, r.meta.Namespace, ref.BackendObjectReference, bf)
			if p != nil {
				r.refs = append(r.refs, *p)
			}
			fs, err := c.httpFilters(r, grpcFilters(ref.Filters), nil, bf+".filters")
			if err != nil {
				r.problem = err
				return r
			}
			base.Backends = append(base.Backends, &waypointv1alpha1.WeightedBackend{Backend: b, Weight: weight(ref.Weight), Filters: fs})
		}
		if len(rule.Matches) == 0 {
			r.http = append(r.http, &httpEntry{route: base, src: r, rule: i})
			continue
		}
		for j, m := range rule.Matches {
			e, err := grpcMatch(m, field+".matches["+itoa(j)+"]")
			if err != nil {
				r.problem = err
				return r
			}
			e.route = withMatch(base, e.route.Matches[0])
			e.src, e.rule, e.match = r, i, j
			r.http = append(r.http, e)
		}
	}
	return r
}

// grpcFilters views gRPC filters as the HTTP filters they are (same types
// and fields).
func grpcFilters(fs []gatewayv1.GRPCRouteFilter) []gatewayv1.HTTPRouteFilter {
	out := make([]gatewayv1.HTTPRouteFilter, len(fs))
	for i, f := range fs {
		out[i] = gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterType(f.Type), RequestHeaderModifier: f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier, RequestMirror: f.RequestMirror, ExtensionRef: f.ExtensionRef}
	}
	return out
}

// grpcMatch turns a gRPC method match into a path match on
// "/<service>/<method>": both set is an exact path, the service alone a
// prefix, anything else (a method alone, or regular expressions) a regex.
func grpcMatch(m gatewayv1.GRPCRouteMatch, field string) (*httpEntry, *routeProblem) {
	e := &httpEntry{}
	out := &waypointv1alpha1.HTTPMatch{}
	if mm := m.Method; mm != nil && (mm.Service != nil || mm.Method != nil) {
		svc, method := "", ""
		if mm.Service != nil {
			svc = *mm.Service
		}
		if mm.Method != nil {
			method = *mm.Method
		}
		typ := gatewayv1.GRPCMethodMatchExact
		if mm.Type != nil {
			typ = *mm.Type
		}
		switch typ {
		case gatewayv1.GRPCMethodMatchExact:
			switch {
			case svc != "" && method != "":
				out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_EXACT, Value: "/" + svc + "/" + method}
				e.pathRank = 3
			case svc != "":
				out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: "/" + svc}
				e.pathRank = 2
			default:
				out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: "/[^/]+/" + regexp.QuoteMeta(method)}
				e.pathRank = 1
			}
		case gatewayv1.GRPCMethodMatchRegularExpression:
			for _, p := range []struct{ v, f string }{{svc, ".method.service"}, {method, ".method.method"}} {
				if _, err := regexp.Compile(p.v); err != nil {
					return nil, &routeProblem{field + p.f, "invalid regular expression: " + err.Error()}
				}
			}
			out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: "/" + cmp.Or(svc, "[^/]+") + "/" + cmp.Or(method, "[^/]+")}
			e.pathRank = 1
		default:
			return nil, &routeProblem{field + ".method.type", "unsupported method match type " + string(typ)}
		}
		e.pathLen = len(out.Path.Value)
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		name := strings.ToLower(string(h.Name))
		if seen[name] {
			continue
		}
		seen[name] = true
		sm, err := stringMatch(string(h.Name), h.Value, (*string)(h.Type), field+".headers["+itoa(i)+"]")
		if err != nil {
			return nil, err
		}
		out.Headers = append(out.Headers, sm)
	}
	e.headers = len(out.Headers)
	e.route = &waypointv1alpha1.HTTPRoute{Matches: []*waypointv1alpha1.HTTPMatch{out}}
	return e, nil
}

// compileTCPRoute uses the first rule: a waypoint port carries one TCP route.
func (c *routeCompiler) compileTCPRoute(tr *gatewayv1.TCPRoute) *routeSource {
	r := &routeSource{kind: KindTCPRoute, meta: &tr.ObjectMeta, parentRefs: tr.Spec.ParentRefs}
	if len(tr.Spec.Rules) > 1 {
		r.problem = &routeProblem{"spec.rules", "a TCPRoute attached to a Service may have one rule only"}
		return r
	}
	r.tcp = &waypointv1alpha1.TCPRoute{Name: ruleName(r.kind, r.meta, 0)}
	for _, rule := range tr.Spec.Rules {
		for j, ref := range rule.BackendRefs {
			b, p := c.backend(r.kind, r.meta.Namespace, ref.BackendObjectReference, "spec.rules[0].backendRefs["+itoa(j)+"]")
			if p != nil {
				r.refs = append(r.refs, *p)
			}
			r.tcp.Backends = append(r.tcp.Backends, &waypointv1alpha1.WeightedBackend{Backend: b, Weight: weight(ref.Weight)})
		}
	}
	return r
}
