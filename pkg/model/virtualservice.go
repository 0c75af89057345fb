package model

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// meshGateway is the VirtualService gateway name of the mesh's own proxies.
const meshGateway = "mesh"

// vsSource is a VirtualService that applies to waypoints.
type vsSource struct {
	vs *networkingv1.VirtualService
	// services are the Services ("ns/name") its hosts name, in host order.
	services []string
	// problem is set when the VirtualService does not compile.
	problem *routeProblem
	// conflicts explain why it is not used for some Services.
	conflicts []string
	// used lists the Services it configures.
	used []string
}

func (v *vsSource) diag(c *routeCompiler, field, reason, msg string) {
	c.diags = append(c.diags, Diagnostic{Kind: KindVirtualService, Namespace: v.vs.Namespace, Name: v.vs.Name, Field: field, Reason: reason, Message: msg})
}

// resolveVirtualServices finds the VirtualServices that apply to waypoints
// (gateways empty or listing "mesh") and, per Service, the one that
// configures it: as for sidecars, several VirtualServices for one host are
// not merged; the oldest (then namespace/name) wins.
func (c *routeCompiler) resolveVirtualServices(s Snapshot) (map[string]*vsSource, []*vsSource) {
	var all []*vsSource
	for _, vs := range s.VirtualServices {
		if gws := vs.Spec.GetGateways(); len(gws) > 0 && !slices.Contains(gws, meshGateway) {
			continue // for ingress gateways only
		}
		src := &vsSource{vs: vs}
		all = append(all, src)
		for i, h := range vs.Spec.GetHosts() {
			f := "spec.hosts[" + itoa(i) + "]"
			svc := c.serviceByHost(h, vs.Namespace)
			switch {
			case svc == nil:
				src.diag(c, f, "HostNotFound", fmt.Sprintf("host %q does not name a Service (a short name in namespace %s or name.namespace.svc.%s); not applied to waypoints", h, vs.Namespace, c.mesh.DomainSuffix))
			case svc.Namespace != vs.Namespace:
				src.diag(c, f, "UnsupportedValue", fmt.Sprintf("Service %s/%s is in another namespace: waypoints apply a VirtualService to Services of its own namespace only (as for HTTPRoutes, no consumer routes)", svc.Namespace, svc.Name))
			default:
				if k := svc.Namespace + "/" + svc.Name; !slices.Contains(src.services, k) {
					src.services = append(src.services, k)
				}
			}
		}
		// Validate once for every port, so that whether it compiles does
		// not depend on the Services it names.
		if _, err := (&vsCompiler{c: c, src: src}).routes(); err != nil {
			src.problem = err
			src.diag(c, err.field, string(gatewayv1.RouteReasonUnsupportedValue), err.msg+"; the VirtualService is not applied")
		}
		if len(vs.Spec.GetTcp()) > 0 || len(vs.Spec.GetTls()) > 0 {
			src.diag(c, "spec.tcp", "UnsupportedValue", "tcp and tls routes of a VirtualService are not supported by waypoints (use a TCPRoute); ignored")
		}
	}
	slices.SortFunc(all, func(a, b *vsSource) int {
		return cmp.Or(a.vs.CreationTimestamp.Compare(b.vs.CreationTimestamp.Time), cmp.Compare(a.vs.Namespace, b.vs.Namespace), cmp.Compare(a.vs.Name, b.vs.Name))
	})
	bySvc := map[string]*vsSource{}
	for _, src := range all {
		for _, k := range src.services {
			if w := bySvc[k]; w != nil {
				msg := fmt.Sprintf("Service %s: VirtualService %s/%s, older, applies", k, w.vs.Namespace, w.vs.Name)
				src.conflicts = append(src.conflicts, msg)
				src.diag(c, "spec.hosts", string(gatewayv1.PolicyReasonConflicted), msg+"; VirtualServices for one host are not merged")
				continue
			}
			bySvc[k] = src
		}
	}
	return bySvc, all
}

// vsStatus is the Accepted condition of a VirtualService.
func (v *vsSource) status() *PolicyStatus {
	cond := metav1.Condition{Type: PolicyConditionAccepted, Status: metav1.ConditionTrue, Reason: string(gatewayv1.PolicyReasonAccepted),
		ObservedGeneration: v.vs.Generation}
	switch {
	case v.problem != nil:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, string(gatewayv1.RouteReasonUnsupportedValue), v.problem.field+": "+v.problem.msg
	case len(v.conflicts) > 0 && len(v.used) == 0:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, string(gatewayv1.PolicyReasonConflicted), strings.Join(v.conflicts, "; ")
	case len(v.services) == 0:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "NoMatchingParent", "no host names a Service of this namespace"
	default:
		cond.Message = "Applied by waypoints to " + strings.Join(v.used, ", ")
		if len(v.used) == 0 {
			cond.Message = "Accepted; no Service it names uses a waypoint"
		}
		if len(v.conflicts) > 0 {
			cond.Message += "; not applied: " + strings.Join(v.conflicts, "; ")
		}
	}
	return &PolicyStatus{Kind: KindVirtualService, Namespace: v.vs.Namespace, Name: v.vs.Name, Generation: v.vs.Generation, Conditions: []metav1.Condition{cond}}
}

// vsCompiler compiles a VirtualService's http routes for one Service port.
type vsCompiler struct {
	c    *routeCompiler
	src  *vsSource
	drs  destinationRules
	port int32 // 0: every match, to validate the whole VirtualService
	// dropped reports problems that only remove a part (an unresolved
	// backend or mirror, an unsupported retry condition).
	dropped []Diagnostic
}

func (v *vsCompiler) note(field, reason, msg string) {
	v.dropped = append(v.dropped, Diagnostic{Kind: KindVirtualService, Namespace: v.src.vs.Namespace, Name: v.src.vs.Name, Field: field, Reason: reason, Message: msg})
}

// routes compiles the http routes that apply to the port, in order (a
// VirtualService's routes are first-match; a request that matches none
// gets 404, as in Istio).
func (v *vsCompiler) routes() ([]*waypointv1alpha1.HTTPRoute, *routeProblem) {
	var out []*waypointv1alpha1.HTTPRoute
	for i, hr := range v.src.vs.Spec.GetHttp() {
		f := "spec.http[" + itoa(i) + "]"
		r, on, err := v.route(hr, f)
		if err != nil {
			return nil, err
		}
		if on {
			r.Name = KindVirtualService + "/" + v.src.vs.Namespace + "/" + v.src.vs.Name + "/" + itoa(i)
			out = append(out, r)
		}
	}
	return out, nil
}

// route compiles one http route; on is false when none of its matches
// applies to the port.
func (v *vsCompiler) route(hr *networking.HTTPRoute, f string) (*waypointv1alpha1.HTTPRoute, bool, *routeProblem) {
	switch {
	case hr.GetRedirect() != nil:
		return nil, false, &routeProblem{f + ".redirect", "redirect is not supported by waypoints for VirtualServices (use an HTTPRoute)"}
	case hr.GetDirectResponse() != nil:
		return nil, false, &routeProblem{f + ".directResponse", "directResponse is not supported by waypoints"}
	case hr.GetDelegate() != nil:
		return nil, false, &routeProblem{f + ".delegate", "delegate is not supported by waypoints"}
	case hr.GetCorsPolicy() != nil:
		return nil, false, &routeProblem{f + ".corsPolicy", "corsPolicy is not supported by waypoints"}
	case hr.GetRewrite().GetUri() != "" || hr.GetRewrite().GetUriRegexRewrite() != nil:
		return nil, false, &routeProblem{f + ".rewrite.uri", "uri rewrites are not supported by waypoints for VirtualServices (use an HTTPRoute URLRewrite)"}
	}
	out := &waypointv1alpha1.HTTPRoute{}
	on := len(hr.GetMatch()) == 0
	for j, m := range hr.GetMatch() {
		mf := f + ".match[" + itoa(j) + "]"
		if m.GetPort() != 0 && v.port != 0 && int32(m.GetPort()) != v.port {
			continue
		}
		if gws := m.GetGateways(); len(gws) > 0 && !slices.Contains(gws, meshGateway) {
			continue
		}
		hm, err := vsMatch(m, mf)
		if err != nil {
			return nil, false, err
		}
		out.Matches = append(out.Matches, hm)
		on = true
	}
	if !on {
		return nil, false, nil
	}
	if a := hr.GetRewrite().GetAuthority(); a != "" {
		out.Filters = append(out.Filters, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_UrlRewrite{UrlRewrite: &waypointv1alpha1.URLRewrite{Hostname: a}}})
	}
	hf, err := vsHeaders(hr.GetHeaders(), f+".headers")
	if err != nil {
		return nil, false, err
	}
	out.Filters = append(out.Filters, hf...)
	// Mirrors: the deprecated single mirror with its percentage, then the list.
	type mirror struct {
		d   *networking.Destination
		pct *networking.Percent
		f   string
	}
	var mirrors []mirror
	if hr.GetMirror() != nil {
		pct := hr.GetMirrorPercentage()
		if pct == nil && hr.GetMirrorPercent() != nil {
			pct = &networking.Percent{Value: float64(hr.GetMirrorPercent().GetValue())}
		}
		mirrors = append(mirrors, mirror{hr.GetMirror(), pct, f + ".mirror"})
	}
	for j, m := range hr.GetMirrors() {
		mirrors = append(mirrors, mirror{m.GetDestination(), m.GetPercentage(), f + ".mirrors[" + itoa(j) + "].destination"})
	}
	for _, m := range mirrors {
		b := v.destination(m.d, m.f)
		if b.Invalid {
			continue // reported; an unresolved mirror is dropped
		}
		frac := uint32(1000000)
		if m.pct != nil {
			frac = fraction(m.pct.GetValue())
		}
		out.Filters = append(out.Filters, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestMirror{RequestMirror: &waypointv1alpha1.Mirror{Backend: b, FractionPerMillion: frac}}})
	}
	for j, rd := range hr.GetRoute() {
		bf := f + ".route[" + itoa(j) + "]"
		wb := &waypointv1alpha1.WeightedBackend{Backend: v.destination(rd.GetDestination(), bf+".destination"), Weight: uint32(max(rd.GetWeight(), 0))}
		if len(hr.GetRoute()) == 1 && rd.GetWeight() == 0 {
			wb.Weight = 1 // a single destination takes all traffic
		}
		if wb.Filters, err = vsHeaders(rd.GetHeaders(), bf+".headers"); err != nil {
			return nil, false, err
		}
		out.Backends = append(out.Backends, wb)
	}
	if t := hr.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			return nil, false, &routeProblem{f + ".timeout", "invalid duration"}
		}
		if t.AsDuration() > 0 {
			out.RequestTimeout = proto.Clone(t).(*durationpb.Duration)
		}
	}
	if out.Retry, out.BackendRequestTimeout, err = v.retry(hr.GetRetries(), f+".retries"); err != nil {
		return nil, false, err
	}
	if out.Fault, err = vsFault(hr.GetFault(), f+".fault"); err != nil {
		return nil, false, err
	}
	return out, true, nil
}

// fraction converts a percentage to millionths, clamped to [0, 100].
func fraction(pct float64) uint32 {
	if math.IsNaN(pct) {
		return 0
	}
	return uint32(math.Round(min(max(pct, 0), 100) * 10000))
}

// destination resolves a route or mirror destination: a Service (short name
// in the VirtualService's namespace, or FQDN), its port (the one named, else
// the request's port when the Service has it, else its only port) and a
// subset its DestinationRule defines. Anything unresolved is an invalid
// backend (500) with a diagnostic.
func (v *vsCompiler) destination(d *networking.Destination, f string) *waypointv1alpha1.Backend {
	b := &waypointv1alpha1.Backend{Subset: d.GetSubset()}
	svc := v.c.serviceByHost(d.GetHost(), v.src.vs.Namespace)
	fail := func(field, reason, msg string) *waypointv1alpha1.Backend {
		b.Invalid = true
		v.note(field, reason, msg)
		return b
	}
	if svc == nil {
		b.Hostname = d.GetHost()
		return fail(f+".host", string(gatewayv1.RouteReasonBackendNotFound), fmt.Sprintf("host %q does not name a Service", d.GetHost()))
	}
	b.Namespace, b.Hostname = svc.Namespace, serviceHostname(svc.Name, svc.Namespace, v.c.mesh.DomainSuffix)
	has := func(p int32) bool {
		return slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Port == p })
	}
	switch n := int32(d.GetPort().GetNumber()); {
	case n != 0 && has(n):
		b.Port = uint32(n)
	case n != 0:
		b.Port = uint32(n)
		return fail(f+".port.number", string(gatewayv1.RouteReasonBackendNotFound), fmt.Sprintf("Service %s/%s has no port %d", svc.Namespace, svc.Name, n))
	case has(v.port):
		b.Port = uint32(v.port)
	case len(svc.Spec.Ports) == 1:
		b.Port = uint32(svc.Spec.Ports[0].Port)
	default:
		return fail(f+".port", string(gatewayv1.RouteReasonBackendNotFound), fmt.Sprintf("Service %s/%s has several ports and none is %d; name one", svc.Namespace, svc.Name, v.port))
	}
	if b.Subset != "" && !v.drs.hasSubset(ServiceKey(b.Namespace, b.Hostname), b.Subset) {
		return fail(f+".subset", "SubsetNotFound", fmt.Sprintf("no DestinationRule defines subset %q of %s", b.Subset, b.Hostname))
	}
	return b
}

// defaultRetryOn is Istio's mesh default retry policy (meshConfig
// defaultHttpRetryPolicy: 2 attempts on connect-failure, refused-stream,
// unavailable, cancelled and retriable-status-codes with 503), without the
// gRPC conditions, which the waypoint does not implement.
var defaultRetryOn = []string{"connect-failure", "refused-stream", "retriable-status-codes"}

// retryOnNames are the Envoy retry conditions the waypoint implements.
var retryOnNames = map[string]bool{"5xx": true, "gateway-error": true, "reset": true, "connect-failure": true,
	"refused-stream": true, "retriable-4xx": true, "retriable-status-codes": true}

// retry compiles retries; unset is Istio's default policy, attempts 0 none.
func (v *vsCompiler) retry(r *networking.HTTPRetry, f string) (*waypointv1alpha1.Retry, *durationpb.Duration, *routeProblem) {
	if r == nil {
		return &waypointv1alpha1.Retry{Attempts: 2, RetryOn: slices.Clone(defaultRetryOn), Codes: []uint32{503}}, nil, nil
	}
	if r.GetAttempts() <= 0 {
		return nil, nil, nil
	}
	if r.GetAttempts() > maxRetryAttempts {
		return nil, nil, &routeProblem{f + ".attempts", fmt.Sprintf("%d retries exceed the waypoint's limit of %d", r.GetAttempts(), maxRetryAttempts)}
	}
	out := &waypointv1alpha1.Retry{Attempts: uint32(r.GetAttempts())}
	var perTry *durationpb.Duration
	for _, d := range []struct {
		in  *durationpb.Duration
		out **durationpb.Duration
		f   string
	}{{r.GetPerTryTimeout(), &perTry, ".perTryTimeout"}, {r.GetBackoff(), &out.Backoff, ".backoff"}} {
		if d.in == nil {
			continue
		}
		if err := d.in.CheckValid(); err != nil || d.in.AsDuration() <= 0 {
			return nil, nil, &routeProblem{f + d.f, "must be a positive duration"}
		}
		*d.out = proto.Clone(d.in).(*durationpb.Duration)
	}
	conds := r.GetRetryOn()
	if conds == "" {
		conds = "connect-failure,refused-stream" // Istio's default, less gRPC's unavailable and cancelled
	}
	for _, c := range strings.Split(conds, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		if code, err := strconv.Atoi(c); err == nil {
			if code < 100 || code > 599 {
				return nil, nil, &routeProblem{f + ".retryOn", fmt.Sprintf("%d is not an HTTP status code", code)}
			}
			if !slices.Contains(out.Codes, uint32(code)) {
				out.Codes = append(out.Codes, uint32(code))
			}
			c = "retriable-status-codes"
		} else if !retryOnNames[c] {
			v.note(f+".retryOn", "UnsupportedValue", fmt.Sprintf("retry condition %q is not supported by the waypoint; ignored", c))
			continue
		}
		if !slices.Contains(out.RetryOn, c) {
			out.RetryOn = append(out.RetryOn, c)
		}
	}
	return out, perTry, nil
}

// grpcCodes are the gRPC status names of VirtualService abort.grpcStatus.
var grpcCodes = map[string]uint32{"CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
	"ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
	"OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}

// vsFault compiles fault injection. As in Istio, an unset percentage
// injects into no request.
func vsFault(in *networking.HTTPFaultInjection, f string) (*waypointv1alpha1.Fault, *routeProblem) {
	if in == nil {
		return nil, nil
	}
	out := &waypointv1alpha1.Fault{}
	if d := in.GetDelay(); d != nil {
		fd := d.GetFixedDelay()
		if fd == nil {
			return nil, &routeProblem{f + ".delay", "only fixedDelay is supported by waypoints"}
		}
		if err := fd.CheckValid(); err != nil || fd.AsDuration() <= 0 {
			return nil, &routeProblem{f + ".delay.fixedDelay", "must be a positive duration"}
		}
		out.Delay = &waypointv1alpha1.Fault_Delay{FixedDelay: proto.Clone(fd).(*durationpb.Duration), FractionPerMillion: fraction(float64(d.GetPercent()))}
		if d.GetPercentage() != nil {
			out.Delay.FractionPerMillion = fraction(d.GetPercentage().GetValue())
		}
	}
	if a := in.GetAbort(); a != nil {
		out.Abort = &waypointv1alpha1.Fault_Abort{}
		switch {
		case a.GetGrpcStatus() != "":
			code, ok := grpcCodes[a.GetGrpcStatus()]
			if !ok {
				if n, err := strconv.Atoi(a.GetGrpcStatus()); err == nil && n > 0 && n <= 16 {
					code, ok = uint32(n), true
				}
			}
			if !ok {
				return nil, &routeProblem{f + ".abort.grpcStatus", fmt.Sprintf("%q is not a gRPC status other than OK", a.GetGrpcStatus())}
			}
			// HTTP clients of a gRPC abort get 503.
			out.Abort.GrpcStatus, out.Abort.HttpStatus = code, 503
		case a.GetHttpStatus() != 0:
			if s := a.GetHttpStatus(); s < 200 || s > 599 {
				return nil, &routeProblem{f + ".abort.httpStatus", fmt.Sprintf("%d is not an HTTP status from 200 to 599", s)}
			}
			out.Abort.HttpStatus = uint32(a.GetHttpStatus())
		default:
			return nil, &routeProblem{f + ".abort", "httpStatus or grpcStatus is required (http2Error is not supported)"}
		}
		out.Abort.FractionPerMillion = fraction(a.GetPercentage().GetValue())
	}
	return out, nil
}

// vsHeaders compiles header operations into header modifier filters.
func vsHeaders(h *networking.Headers, f string) ([]*waypointv1alpha1.HTTPFilter, *routeProblem) {
	var out []*waypointv1alpha1.HTTPFilter
	conv := func(ops *networking.Headers_HeaderOperations, at string) (*waypointv1alpha1.HeaderModifier, *routeProblem) {
		g := &gatewayv1.HTTPHeaderFilter{Remove: ops.GetRemove()}
		for _, k := range slices.Sorted(maps.Keys(ops.GetSet())) {
			g.Set = append(g.Set, gatewayv1.HTTPHeader{Name: gatewayv1.HTTPHeaderName(k), Value: ops.GetSet()[k]})
		}
		for _, k := range slices.Sorted(maps.Keys(ops.GetAdd())) {
			g.Add = append(g.Add, gatewayv1.HTTPHeader{Name: gatewayv1.HTTPHeaderName(k), Value: ops.GetAdd()[k]})
		}
		return headerModifier(g, at)
	}
	if ops := h.GetRequest(); ops != nil {
		hm, err := conv(ops, f+".request")
		if err != nil {
			return nil, err
		}
		out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: hm}})
	}
	if ops := h.GetResponse(); ops != nil {
		hm, err := conv(ops, f+".response")
		if err != nil {
			return nil, err
		}
		out = append(out, &waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: hm}})
	}
	return out, nil
}

// vsMatch compiles one HTTPMatchRequest. Istio's prefixes are plain string
// prefixes ("/foo" matches "/foobar"), so they compile to regular
// expressions rather than to Gateway API's element-wise PathPrefix.
func vsMatch(m *networking.HTTPMatchRequest, f string) (*waypointv1alpha1.HTTPMatch, *routeProblem) {
	for name, set := range map[string]bool{"scheme": m.GetScheme() != nil, "authority": m.GetAuthority() != nil,
		"sourceLabels": len(m.GetSourceLabels()) > 0, "withoutHeaders": len(m.GetWithoutHeaders()) > 0, "sourceNamespace": m.GetSourceNamespace() != ""} {
		if set {
			return nil, &routeProblem{f + "." + name, name + " matches are not supported by waypoints"}
		}
	}
	out := &waypointv1alpha1.HTTPMatch{}
	if u := m.GetUri(); u != nil {
		ci := ""
		if m.GetIgnoreUriCase() {
			ci = "(?i)"
		}
		switch t := u.GetMatchType().(type) {
		case *networking.StringMatch_Exact:
			if ci == "" && strings.HasPrefix(t.Exact, "/") {
				out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_EXACT, Value: t.Exact}
			} else {
				out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: ci + regexp.QuoteMeta(t.Exact)}
			}
		case *networking.StringMatch_Prefix:
			if t.Prefix != "/" && t.Prefix != "" {
				out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: ci + regexp.QuoteMeta(t.Prefix) + ".*"}
			}
		case *networking.StringMatch_Regex:
			if _, err := regexp.Compile(t.Regex); err != nil {
				return nil, &routeProblem{f + ".uri.regex", "invalid regular expression: " + err.Error()}
			}
			out.Path = &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: ci + t.Regex}
		}
	}
	if mm := m.GetMethod(); mm != nil {
		e, ok := mm.GetMatchType().(*networking.StringMatch_Exact)
		if !ok || !httpguts.ValidHeaderFieldName(e.Exact) {
			return nil, &routeProblem{f + ".method", "only an exact method match is supported by waypoints"}
		}
		out.Method = e.Exact
	}
	for _, l := range []struct {
		in     map[string]*networking.StringMatch
		out    *[]*waypointv1alpha1.StringMatch
		name   string
		header bool
	}{{m.GetHeaders(), &out.Headers, "headers", true}, {m.GetQueryParams(), &out.QueryParams, "queryParams", false}} {
		for _, k := range slices.Sorted(maps.Keys(l.in)) {
			at := f + "." + l.name + "[" + k + "]"
			name := k
			if l.header {
				name = strings.ToLower(k)
				if !httpguts.ValidHeaderFieldName(name) {
					return nil, &routeProblem{at, fmt.Sprintf("%q is not a header name the waypoint can match", k)}
				}
			}
			sm := &waypointv1alpha1.StringMatch{Name: name}
			switch t := l.in[k].GetMatchType().(type) {
			case *networking.StringMatch_Exact:
				sm.Value = t.Exact
			case *networking.StringMatch_Prefix:
				sm.Type, sm.Value = waypointv1alpha1.StringMatch_REGEX, regexp.QuoteMeta(t.Prefix)+".*"
			case *networking.StringMatch_Regex:
				if _, err := regexp.Compile(t.Regex); err != nil {
					return nil, &routeProblem{at + ".regex", "invalid regular expression: " + err.Error()}
				}
				sm.Type, sm.Value = waypointv1alpha1.StringMatch_REGEX, t.Regex
			default: // {}: presence
				sm.Type, sm.Value = waypointv1alpha1.StringMatch_REGEX, ".*"
			}
			*l.out = append(*l.out, sm)
		}
	}
	return out, nil
}

// virtualServiceRoutes compiles the VirtualService of a Service, if any and
// if no Gateway API route attaches to any of the Service's HTTP ports (the
// Gateway API wins), into routes per HTTP port. A VirtualService that does
// not compile is not used at all.
func (c *routeCompiler) virtualServiceRoutes(v *vsSource, info *serviceInfo, drs destinationRules, attached func(port int32) []*httpEntry) map[int32][]*waypointv1alpha1.HTTPRoute {
	if v == nil || v.problem != nil {
		return nil
	}
	svcKey := info.source.Namespace + "/" + info.source.Name
	var routeKeys []string
	for _, p := range meshPorts(info.source) {
		for _, e := range attached(p.Port) {
			if k := e.src.key(); !slices.Contains(routeKeys, k) {
				routeKeys = append(routeKeys, k)
			}
		}
	}
	if len(routeKeys) > 0 {
		slices.Sort(routeKeys)
		msg := fmt.Sprintf("Service %s: Gateway API routes take precedence over VirtualServices (%s); this VirtualService is not applied to it", svcKey, strings.Join(routeKeys, ", "))
		v.conflicts = append(v.conflicts, msg)
		v.diag(c, "spec.hosts", string(gatewayv1.PolicyReasonConflicted), msg)
		return nil
	}
	out := map[int32][]*waypointv1alpha1.HTTPRoute{}
	var dropped []Diagnostic
	for _, p := range meshPorts(info.source) {
		if portProtocol(p) == waypointv1alpha1.Protocol_TCP {
			continue
		}
		vc := &vsCompiler{c: c, src: v, drs: drs, port: p.Port}
		routes, err := vc.routes()
		if err != nil {
			return nil // cannot happen: validated for every port in resolveVirtualServices
		}
		dropped = append(dropped, vc.dropped...)
		out[p.Port] = routes
	}
	c.diags = append(c.diags, dropped...)
	v.used = append(v.used, svcKey)
	return out
}
