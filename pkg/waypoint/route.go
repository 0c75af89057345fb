package waypoint

import (
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/durationpb"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// ServiceConfigTypeURL is the xDS type of the waypoint's L7 configuration.
const ServiceConfigTypeURL = "type.googleapis.com/ambientmesh.waypoint.v1alpha1.ServiceConfig"

// Defaults of the route table where the ServiceConfig leaves a value unset.
const (
	DefaultRetryBackoff = 25 * time.Millisecond
	maxBackoffFactor    = 10 // the backoff grows to at most 10x its base (Envoy's rule)
)

// service is one compiled ServiceConfig. It is immutable once compiled.
type service struct {
	key       string // "<namespace>/<hostname>"
	namespace string
	hostname  string
	waypoints map[string]bool
	ports     map[uint32]*port
	authz     []*authzPolicy
	limit     *tokenBucket // the Service's local rate limit
	src       *waypointv1alpha1.ServiceConfig
}

// port is the configuration of one Service port.
type port struct {
	port     uint32
	protocol waypointv1alpha1.Protocol
	routes   []*route  // HTTP, HTTP2, GRPC
	tcp      *tcpRoute // TCP
}

type tcpRoute struct {
	name     string
	backends []weightedBackend
	total    uint32
}

// route is one compiled HTTPRoute rule.
type route struct {
	name           string
	matches        []*match
	filters        []filter
	backends       []weightedBackend
	total          uint32 // sum of weights
	requestTimeout time.Duration
	tryTimeout     time.Duration
	retry          retryPolicy
	fault          *fault
	limit          *tokenBucket
}

type retryPolicy struct {
	codes    map[int]bool
	attempts int
	backoff  time.Duration
	on       map[string]bool // Envoy retry_on conditions; empty: codes and connect failures
}

// Envoy retry_on conditions the waypoint implements.
var retryConditions = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "connect-failure": true,
	"refused-stream": true, "retriable-4xx": true, "retriable-status-codes": true,
}

// status reports whether a response status is retried.
func (r *retryPolicy) status(code int) bool {
	if len(r.on) == 0 {
		return r.codes[code]
	}
	return r.on["5xx"] && code >= 500 ||
		r.on["gateway-error"] && (code == 502 || code == 503 || code == 504) ||
		r.on["retriable-4xx"] && code == 409 ||
		r.on["retriable-status-codes"] && r.codes[code]
}

// connectFailure reports whether a failure to open the tunnel is retried.
func (r *retryPolicy) connectFailure() bool {
	if len(r.on) == 0 {
		return r.attempts > 0
	}
	return r.on["5xx"] || r.on["gateway-error"] || r.on["reset"] || r.on["connect-failure"]
}

// reset reports whether an upstream failure without a response is retried.
func (r *retryPolicy) reset() bool {
	return len(r.on) > 0 && (r.on["5xx"] || r.on["gateway-error"] || r.on["reset"] || r.on["refused-stream"])
}

// timeout reports whether a try that outlived backend_request_timeout is
// retried (Envoy counts it as a 504).
func (r *retryPolicy) timeout() bool { return r.status(http.StatusGatewayTimeout) }

type match struct {
	path    *pathMatch
	headers []stringMatch
	query   []stringMatch
	method  string
}

type pathMatch struct {
	typ   waypointv1alpha1.PathMatch_Type
	value string // EXACT, PREFIX (without a trailing slash, "/" stays "/")
	re    *regexp.Regexp
}

type stringMatch struct {
	name  string // canonical MIME header key for headers, as given for query params
	value string
	re    *regexp.Regexp // REGEX
}

type weightedBackend struct {
	backend backendRef
	weight  uint32
	filters []filter
}

// backendRef is a Service port to send to.
type backendRef struct {
	key      string // "<namespace>/<hostname>"
	hostname string
	port     uint32
	invalid  bool
	subset   string
	policy   *targetPolicy // which endpoints and how to balance; nil: all, round-robin
}

// targetPolicy is the compiled DestinationRule policy of one (backend
// Service, subset).
type targetPolicy struct {
	uids    map[string]bool // the subset's workloads; nil: every endpoint
	unknown bool            // a subset the ServiceConfig does not declare: no endpoints
	lb      waypointv1alpha1.TrafficPolicy_LoadBalancer
	pool    *waypointv1alpha1.ConnectionPool // circuit-breaker limits; nil: none
	outlier *outlierPolicy                   // nil: no outlier detection
}

// filter is one compiled HTTPFilter; exactly one field is set.
type filter struct {
	reqHeaders  *headerMod
	respHeaders *headerMod
	rewrite     *waypointv1alpha1.URLRewrite
	redirect    *waypointv1alpha1.Redirect
	mirror      *mirror
}

type headerMod struct {
	set, add [][2]string // canonical name, value
	remove   []string    // canonical names
}

type mirror struct {
	backend  backendRef
	fraction uint32 // per million
}

// configError is a rejected ServiceConfig: the resource, the field at fault
// and why. NACK messages carry it.
func configError(name, field, why string, args ...any) error {
	return &state.ResourceError{Type: ServiceConfigTypeURL, Name: name, Field: field, Reason: fmt.Sprintf(why, args...)}
}

// compile validates a ServiceConfig and builds its route table. name is the
// xDS resource name ("<namespace>/<hostname>"). Errors name the resource
// and the field.
func compile(name string, sc *waypointv1alpha1.ServiceConfig) (*service, error) {
	bad := func(field, why string, args ...any) error { return configError(name, field, why, args...) }
	switch {
	case sc.GetHostname() == "":
		return nil, bad("hostname", "empty")
	case sc.GetNamespace() == "":
		return nil, bad("namespace", "empty")
	case name != sc.GetNamespace()+"/"+sc.GetHostname():
		return nil, bad("name", "resource name differs from %q (namespace/hostname)", sc.GetNamespace()+"/"+sc.GetHostname())
	}
	s := &service{
		key:       name,
		namespace: sc.GetNamespace(),
		hostname:  sc.GetHostname(),
		waypoints: map[string]bool{},
		ports:     map[uint32]*port{},
		src:       sc,
	}
	for i, w := range sc.GetWaypoints() {
		if ns, n, ok := strings.Cut(w, "/"); !ok || ns == "" || n == "" {
			return nil, bad(fmt.Sprintf("waypoints[%d]", i), "%q is not <namespace>/<name>", w)
		}
		s.waypoints[w] = true
	}
	for i, p := range sc.GetPorts() {
		at := fmt.Sprintf("ports[%d]", i)
		if p.GetPort() == 0 || p.GetPort() > 65535 {
			return nil, bad(at+".port", "%d out of range", p.GetPort())
		}
		if _, dup := s.ports[p.GetPort()]; dup {
			return nil, bad(at+".port", "%d listed twice", p.GetPort())
		}
		if _, ok := waypointv1alpha1.Protocol_name[int32(p.GetProtocol())]; !ok {
			return nil, bad(at+".protocol", "unknown value %d", p.GetProtocol())
		}
		cp := &port{port: p.GetPort(), protocol: p.GetProtocol()}
		if p.GetProtocol() == waypointv1alpha1.Protocol_TCP {
			t, err := compileTCP(s, p, at+".tcp_route", bad)
			if err != nil {
				return nil, err
			}
			cp.tcp = t
		} else {
			for j, r := range p.GetHttpRoutes() {
				cr, err := compileRoute(r, fmt.Sprintf("%s.http_routes[%d]", at, j), bad)
				if err != nil {
					return nil, err
				}
				cp.routes = append(cp.routes, cr)
			}
		}
		s.ports[p.GetPort()] = cp
	}
	authz, err := compileAuthz(sc.GetAuthorization(), bad)
	if err != nil {
		return nil, err
	}
	s.authz = authz
	if s.limit, err = compileRateLimit(sc.GetRateLimit(), "rate_limit", bad); err != nil {
		return nil, err
	}
	if err := attachPolicies(s, sc.GetBackendPolicies(), bad); err != nil {
		return nil, err
	}
	return s, nil
}

// attachPolicies resolves every backend reference of s (routes, backends'
// and rules' mirrors, TCP routes) to its DestinationRule policy and subset.
func attachPolicies(s *service, bps []*waypointv1alpha1.BackendPolicy, bad badFunc) error {
	type key struct{ svc, subset string }
	pols := map[key]*targetPolicy{}
	for i, bp := range bps {
		at := fmt.Sprintf("backend_policies[%d]", i)
		svc := bp.GetNamespace() + "/" + bp.GetHostname()
		tp, err := compileTrafficPolicy(bp.GetPolicy(), at+".policy", bad)
		if err != nil {
			return err
		}
		pols[key{svc, ""}] = tp
		for j, ss := range bp.GetSubsets() {
			sat := fmt.Sprintf("%s.subsets[%d]", at, j)
			if ss.GetName() == "" {
				return bad(sat+".name", "empty")
			}
			tp, err := compileTrafficPolicy(ss.GetPolicy(), sat+".policy", bad)
			if err != nil {
				return err
			}
			tp.uids = map[string]bool{}
			for _, u := range ss.GetWorkloadUids() {
				tp.uids[u] = true
			}
			pols[key{svc, ss.GetName()}] = tp
		}
	}
	resolve := func(ref *backendRef) {
		if ref.invalid {
			return
		}
		if tp := pols[key{ref.key, ref.subset}]; tp != nil {
			ref.policy = tp
		} else if ref.subset != "" {
			ref.policy = &targetPolicy{unknown: true}
		}
	}
	filters := func(fs []filter) {
		for i := range fs {
			if fs[i].mirror != nil {
				resolve(&fs[i].mirror.backend)
			}
		}
	}
	for _, pt := range s.ports {
		for _, rt := range pt.routes {
			filters(rt.filters)
			for i := range rt.backends {
				resolve(&rt.backends[i].backend)
				filters(rt.backends[i].filters)
			}
		}
		if pt.tcp != nil {
			for i := range pt.tcp.backends {
				resolve(&pt.tcp.backends[i].backend)
			}
		}
	}
	return nil
}

func compileTrafficPolicy(tp *waypointv1alpha1.TrafficPolicy, at string, bad badFunc) (*targetPolicy, error) {
	lb := tp.GetLoadBalancer()
	if _, ok := waypointv1alpha1.TrafficPolicy_LoadBalancer_name[int32(lb)]; !ok {
		return nil, bad(at+".load_balancer", "unknown value %d", lb)
	}
	od, err := compileOutlier(tp.GetOutlierDetection(), at+".outlier_detection", bad)
	if err != nil {
		return nil, err
	}
	return &targetPolicy{lb: lb, pool: tp.GetConnectionPool(), outlier: od}, nil
}

type badFunc func(field, why string, args ...any) error

func compileTCP(s *service, p *waypointv1alpha1.Port, at string, bad badFunc) (*tcpRoute, error) {
	tr := p.GetTcpRoute()
	if tr == nil || len(tr.GetBackends()) == 0 {
		// The Service itself (the proto's "or the Service itself").
		return &tcpRoute{name: "default", total: 1, backends: []weightedBackend{{
			backend: backendRef{key: s.key, hostname: s.hostname, port: p.GetPort()}, weight: 1}}}, nil
	}
	out := &tcpRoute{name: tr.GetName()}
	for k, b := range tr.GetBackends() {
		wb, err := compileBackend(b, fmt.Sprintf("%s.backends[%d]", at, k), bad)
		if err != nil {
			return nil, err
		}
		if len(b.GetFilters()) > 0 {
			return nil, bad(fmt.Sprintf("%s.backends[%d].filters", at, k), "filters are not allowed on TCP backends")
		}
		out.backends = append(out.backends, wb)
		out.total += wb.weight
	}
	return out, nil
}

func compileRoute(r *waypointv1alpha1.HTTPRoute, at string, bad badFunc) (*route, error) {
	cr := &route{name: r.GetName()}
	if cr.name == "" {
		return nil, bad(at+".name", "empty")
	}
	for i, m := range r.GetMatches() {
		cm, err := compileMatch(m, fmt.Sprintf("%s.matches[%d]", at, i), bad)
		if err != nil {
			return nil, err
		}
		cr.matches = append(cr.matches, cm)
	}
	var err error
	if cr.filters, err = compileFilters(r.GetFilters(), cr.matches, at+".filters", bad); err != nil {
		return nil, err
	}
	for i, b := range r.GetBackends() {
		bat := fmt.Sprintf("%s.backends[%d]", at, i)
		wb, err := compileBackend(b, bat, bad)
		if err != nil {
			return nil, err
		}
		if wb.filters, err = compileFilters(b.GetFilters(), cr.matches, bat+".filters", bad); err != nil {
			return nil, err
		}
		cr.backends = append(cr.backends, wb)
		cr.total += wb.weight
	}
	if cr.requestTimeout, err = duration(r.GetRequestTimeout(), at+".request_timeout", bad); err != nil {
		return nil, err
	}
	if cr.tryTimeout, err = duration(r.GetBackendRequestTimeout(), at+".backend_request_timeout", bad); err != nil {
		return nil, err
	}
	if rt := r.GetRetry(); rt != nil {
		cr.retry.attempts = int(rt.GetAttempts())
		if cr.retry.attempts > 100 {
			return nil, bad(at+".retry.attempts", "%d exceeds 100", rt.GetAttempts())
		}
		for i, c := range rt.GetCodes() {
			if c < 100 || c > 599 {
				return nil, bad(fmt.Sprintf("%s.retry.codes[%d]", at, i), "%d is not an HTTP status", c)
			}
			if cr.retry.codes == nil {
				cr.retry.codes = map[int]bool{}
			}
			cr.retry.codes[int(c)] = true
		}
		for i, c := range rt.GetRetryOn() {
			if !retryConditions[c] {
				return nil, bad(fmt.Sprintf("%s.retry.retry_on[%d]", at, i), "%q is not a retry condition the waypoint implements", c)
			}
			if cr.retry.on == nil {
				cr.retry.on = map[string]bool{}
			}
			cr.retry.on[c] = true
		}
		if cr.retry.backoff, err = duration(rt.GetBackoff(), at+".retry.backoff", bad); err != nil {
			return nil, err
		}
	}
	if cr.retry.backoff == 0 {
		cr.retry.backoff = DefaultRetryBackoff
	}
	if cr.fault, err = compileFault(r.GetFault(), at+".fault", bad); err != nil {
		return nil, err
	}
	if cr.limit, err = compileRateLimit(r.GetRateLimit(), at+".rate_limit", bad); err != nil {
		return nil, err
	}
	return cr, nil
}

func duration(d *durationpb.Duration, at string, bad badFunc) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, bad(at, "%v", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, bad(at, "negative duration %s", v)
	}
	return v, nil
}

func compileMatch(m *waypointv1alpha1.HTTPMatch, at string, bad badFunc) (*match, error) {
	cm := &match{method: m.GetMethod()}
	if cm.method != "" && !httpguts.ValidHeaderFieldName(cm.method) { // a token
		return nil, bad(at+".method", "%q is not an HTTP method", cm.method)
	}
	if p := m.GetPath(); p != nil {
		pm := &pathMatch{typ: p.GetType(), value: p.GetValue()}
		switch p.GetType() {
		case waypointv1alpha1.PathMatch_EXACT, waypointv1alpha1.PathMatch_PREFIX:
			if !strings.HasPrefix(pm.value, "/") {
				return nil, bad(at+".path.value", "%q does not start with /", pm.value)
			}
			if p.GetType() == waypointv1alpha1.PathMatch_PREFIX && pm.value != "/" {
				pm.value = strings.TrimRight(pm.value, "/")
				if pm.value == "" {
					pm.value = "/"
				}
			}
		case waypointv1alpha1.PathMatch_REGEX:
			re, err := wholeRegexp(pm.value)
			if err != nil {
				return nil, bad(at+".path.value", "bad regex: %v", err)
			}
			pm.re = re
		default:
			return nil, bad(at+".path.type", "unknown value %d", p.GetType())
		}
		cm.path = pm
	}
	var err error
	if cm.headers, err = compileStringMatches(m.GetHeaders(), at+".headers", true, bad); err != nil {
		return nil, err
	}
	if cm.query, err = compileStringMatches(m.GetQueryParams(), at+".query_params", false, bad); err != nil {
		return nil, err
	}
	return cm, nil
}

func compileStringMatches(ms []*waypointv1alpha1.StringMatch, at string, header bool, bad badFunc) ([]stringMatch, error) {
	var out []stringMatch
	for i, m := range ms {
		mat := fmt.Sprintf("%s[%d]", at, i)
		sm := stringMatch{name: m.GetName(), value: m.GetValue()}
		switch {
		case sm.name == "":
			return nil, bad(mat+".name", "empty")
		case header && !httpguts.ValidHeaderFieldName(sm.name):
			return nil, bad(mat+".name", "%q is not a header name", sm.name)
		}
		if header {
			sm.name = textproto.CanonicalMIMEHeaderKey(sm.name)
		}
		switch m.GetType() {
		case waypointv1alpha1.StringMatch_EXACT:
		case waypointv1alpha1.StringMatch_REGEX:
			re, err := wholeRegexp(sm.value)
			if err != nil {
				return nil, bad(mat+".value", "bad regex: %v", err)
			}
			sm.re = re
		default:
			return nil, bad(mat+".type", "unknown value %d", m.GetType())
		}
		out = append(out, sm)
	}
	return out, nil
}

// wholeRegexp compiles an RE2 expression that must match the whole input.
func wholeRegexp(expr string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + expr + ")$")
}

func compileBackend(b *waypointv1alpha1.WeightedBackend, at string, bad badFunc) (weightedBackend, error) {
	ref := b.GetBackend()
	if ref == nil {
		return weightedBackend{}, bad(at+".backend", "unset")
	}
	wb := weightedBackend{weight: b.GetWeight(), backend: backendRef{
		key: ref.GetNamespace() + "/" + ref.GetHostname(), hostname: ref.GetHostname(), port: ref.GetPort(), invalid: ref.GetInvalid(), subset: ref.GetSubset()}}
	if !wb.backend.invalid {
		if err := validRef(ref, at+".backend", bad); err != nil {
			return weightedBackend{}, err
		}
	}
	return wb, nil
}

func validRef(ref *waypointv1alpha1.Backend, at string, bad badFunc) error {
	switch {
	case ref.GetHostname() == "":
		return bad(at+".hostname", "empty")
	case ref.GetNamespace() == "":
		return bad(at+".namespace", "empty")
	case ref.GetPort() == 0 || ref.GetPort() > 65535:
		return bad(at+".port", "%d out of range", ref.GetPort())
	}
	return nil
}

func compileFilters(fs []*waypointv1alpha1.HTTPFilter, matches []*match, at string, bad badFunc) ([]filter, error) {
	var out []filter
	for i, f := range fs {
		fat := fmt.Sprintf("%s[%d]", at, i)
		var cf filter
		switch k := f.GetKind().(type) {
		case *waypointv1alpha1.HTTPFilter_RequestHeaderModifier:
			hm, err := compileHeaderMod(k.RequestHeaderModifier, fat+".request_header_modifier", bad)
			if err != nil {
				return nil, err
			}
			cf.reqHeaders = hm
		case *waypointv1alpha1.HTTPFilter_ResponseHeaderModifier:
			hm, err := compileHeaderMod(k.ResponseHeaderModifier, fat+".response_header_modifier", bad)
			if err != nil {
				return nil, err
			}
			cf.respHeaders = hm
		case *waypointv1alpha1.HTTPFilter_UrlRewrite:
			if k.UrlRewrite == nil {
				return nil, bad(fat+".url_rewrite", "unset")
			}
			if err := validPathModifier(k.UrlRewrite.GetPath(), matches, fat+".url_rewrite.path", bad); err != nil {
				return nil, err
			}
			cf.rewrite = k.UrlRewrite
		case *waypointv1alpha1.HTTPFilter_RequestRedirect:
			rd := k.RequestRedirect
			if rd == nil {
				return nil, bad(fat+".request_redirect", "unset")
			}
			switch rd.GetScheme() {
			case "", "http", "https":
			default:
				return nil, bad(fat+".request_redirect.scheme", "%q is not http or https", rd.GetScheme())
			}
			switch rd.GetStatusCode() {
			case 0, 301, 302, 303, 307, 308:
			default:
				return nil, bad(fat+".request_redirect.status_code", "%d is not a redirect status", rd.GetStatusCode())
			}
			if rd.GetPort() > 65535 {
				return nil, bad(fat+".request_redirect.port", "%d out of range", rd.GetPort())
			}
			if err := validPathModifier(rd.GetPath(), matches, fat+".request_redirect.path", bad); err != nil {
				return nil, err
			}
			cf.redirect = rd
		case *waypointv1alpha1.HTTPFilter_RequestMirror:
			m := k.RequestMirror
			if m == nil || m.GetBackend() == nil {
				return nil, bad(fat+".request_mirror.backend", "unset")
			}
			if err := validRef(m.GetBackend(), fat+".request_mirror.backend", bad); err != nil {
				return nil, err
			}
			if m.GetFractionPerMillion() > 1_000_000 {
				return nil, bad(fat+".request_mirror.fraction_per_million", "%d exceeds 1000000", m.GetFractionPerMillion())
			}
			b := m.GetBackend()
			cf.mirror = &mirror{fraction: m.GetFractionPerMillion(), backend: backendRef{
				key: b.GetNamespace() + "/" + b.GetHostname(), hostname: b.GetHostname(), port: b.GetPort(), invalid: b.GetInvalid(), subset: b.GetSubset()}}
		default:
			return nil, bad(fat, "no filter kind set")
		}
		out = append(out, cf)
	}
	return out, nil
}

func validPathModifier(pm *waypointv1alpha1.PathModifier, matches []*match, at string, bad badFunc) error {
	if pm == nil {
		return nil
	}
	switch pm.GetType() {
	case waypointv1alpha1.PathModifier_REPLACE_FULL_PATH:
	case waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH:
		// Gateway API: only with a PathPrefix match on every match.
		if len(matches) == 0 {
			return bad(at+".type", "REPLACE_PREFIX_MATCH needs a PREFIX path match")
		}
		for _, m := range matches {
			if m.path == nil || m.path.typ != waypointv1alpha1.PathMatch_PREFIX {
				return bad(at+".type", "REPLACE_PREFIX_MATCH needs a PREFIX path match on every match")
			}
		}
	default:
		return bad(at+".type", "unknown value %d", pm.GetType())
	}
	if pm.GetValue() != "" && !strings.HasPrefix(pm.GetValue(), "/") {
		return bad(at+".value", "%q does not start with /", pm.GetValue())
	}
	return nil
}

func compileHeaderMod(hm *waypointv1alpha1.HeaderModifier, at string, bad badFunc) (*headerMod, error) {
	if hm == nil {
		return nil, bad(at, "unset")
	}
	out := &headerMod{}
	pairs := func(hs []*waypointv1alpha1.Header, field string) ([][2]string, error) {
		var ps [][2]string
		for i, h := range hs {
			if !httpguts.ValidHeaderFieldName(h.GetName()) {
				return nil, bad(fmt.Sprintf("%s.%s[%d].name", at, field, i), "%q is not a header name", h.GetName())
			}
			if !httpguts.ValidHeaderFieldValue(h.GetValue()) {
				return nil, bad(fmt.Sprintf("%s.%s[%d].value", at, field, i), "not a valid header value")
			}
			ps = append(ps, [2]string{http.CanonicalHeaderKey(h.GetName()), h.GetValue()})
		}
		return ps, nil
	}
	var err error
	if out.set, err = pairs(hm.GetSet(), "set"); err != nil {
		return nil, err
	}
	if out.add, err = pairs(hm.GetAdd(), "add"); err != nil {
		return nil, err
	}
	for i, n := range hm.GetRemove() {
		if !httpguts.ValidHeaderFieldName(n) {
			return nil, bad(fmt.Sprintf("%s.remove[%d]", at, i), "%q is not a header name", n)
		}
		out.remove = append(out.remove, http.CanonicalHeaderKey(n))
	}
	return out, nil
}
