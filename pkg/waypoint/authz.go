package waypoint

import (
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// authzPolicy is one compiled AuthorizationPolicy.
type authzPolicy struct {
	name  string
	deny  bool
	rules []authzRule
}

type authzRule struct {
	from []authzSource
	to   []authzOperation
	when []authzCondition
}

type authzSource struct {
	principals, notPrincipals strMatches
	namespaces, notNamespaces strMatches
}

type authzOperation struct {
	hosts, notHosts     strMatches
	ports, notPorts     []uint32
	methods, notMethods strMatches
	paths, notPaths     strMatches
}

// authzCondition is one "when" entry; header is set for
// request.headers[<name>] keys.
type authzCondition struct {
	key               string
	header            string
	values, notValues strMatches
}

// strMatches is a list of Istio string matches: "*" anything, "abc*" a
// prefix, "*abc" a suffix, else exact. Any entry may match (OR).
type strMatches []string

func (ms strMatches) any(v string) bool {
	for _, m := range ms {
		switch {
		case m == "*":
			return true
		case strings.HasSuffix(m, "*") && strings.HasPrefix(v, m[:len(m)-1]):
			return true
		case strings.HasPrefix(m, "*") && strings.HasSuffix(v, m[1:]):
			return true
		case m == v:
			return true
		}
	}
	return false
}

// authzRequest is what a policy sees of one request. For L4 (TCP ports)
// http is nil.
type authzRequest struct {
	principal string // SPIFFE id without "spiffe://"; "" when none
	namespace string
	port      uint32
	http      *http.Request
}

func newAuthzRequest(peer spiffeid.ID, port uint32, r *http.Request) *authzRequest {
	ar := &authzRequest{port: port, http: r}
	if !peer.IsZero() {
		ar.principal = strings.TrimPrefix(peer.String(), "spiffe://")
		if rest, ok := strings.CutPrefix(strings.TrimPrefix(peer.Path(), "/"), "ns/"); ok {
			ar.namespace, _, _ = strings.Cut(rest, "/") // ns/<namespace>/...
		}
	}
	return ar
}

func compileAuthz(ps []*waypointv1alpha1.AuthorizationPolicy, bad badFunc) ([]*authzPolicy, error) {
	var out []*authzPolicy
	for i, p := range ps {
		at := fmt.Sprintf("authorization[%d]", i)
		if _, ok := waypointv1alpha1.AuthorizationPolicy_Action_name[int32(p.GetAction())]; !ok {
			return nil, bad(at+".action", "unknown value %d", p.GetAction())
		}
		cp := &authzPolicy{name: p.GetName(), deny: p.GetAction() == waypointv1alpha1.AuthorizationPolicy_DENY}
		for j, r := range p.GetRules() {
			rat := fmt.Sprintf("%s.rules[%d]", at, j)
			var cr authzRule
			for _, f := range r.GetFrom() {
				cr.from = append(cr.from, authzSource{
					principals: f.GetPrincipals(), notPrincipals: f.GetNotPrincipals(),
					namespaces: f.GetNamespaces(), notNamespaces: f.GetNotNamespaces(),
				})
			}
			for _, t := range r.GetTo() {
				cr.to = append(cr.to, authzOperation{
					hosts: lower(t.GetHosts()), notHosts: lower(t.GetNotHosts()),
					ports: t.GetPorts(), notPorts: t.GetNotPorts(),
					methods: t.GetMethods(), notMethods: t.GetNotMethods(),
					paths: t.GetPaths(), notPaths: t.GetNotPaths(),
				})
			}
			for k, w := range r.GetWhen() {
				c := authzCondition{key: w.GetKey(), values: w.GetValues(), notValues: w.GetNotValues()}
				switch {
				case strings.HasPrefix(c.key, "request.headers[") && strings.HasSuffix(c.key, "]"):
					c.header = textproto.CanonicalMIMEHeaderKey(c.key[len("request.headers[") : len(c.key)-1])
					if c.header == "" {
						return nil, bad(fmt.Sprintf("%s.when[%d].key", rat, k), "empty header name")
					}
				case c.key == "source.principal", c.key == "source.namespace", c.key == "destination.port":
				default:
					return nil, bad(fmt.Sprintf("%s.when[%d].key", rat, k), "%q is not a key the waypoint evaluates", c.key)
				}
				cr.when = append(cr.when, c)
			}
			cp.rules = append(cp.rules, cr)
		}
		out = append(out, cp)
	}
	return out, nil
}

func lower(ss []string) strMatches {
	out := make(strMatches, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}

// authorize applies Istio's order: any matching DENY denies; else, with
// any ALLOW policy, one must match; else the request is allowed. It
// returns the name of the deciding policy when denied.
func authorize(ps []*authzPolicy, r *authzRequest) (allowed bool, policy string) {
	hasAllow, allowedBy := false, false
	for _, p := range ps {
		if p.deny {
			if p.matches(r) {
				return false, p.name
			}
			continue
		}
		hasAllow = true
		allowedBy = allowedBy || p.matches(r)
	}
	if hasAllow && !allowedBy {
		return false, "no ALLOW policy matched"
	}
	return true, ""
}

func (p *authzPolicy) matches(r *authzRequest) bool {
	for i := range p.rules {
		if p.rules[i].matches(r, p.deny) {
			return true
		}
	}
	return false
}

// matches reports whether the rule matches. On L4 traffic (r.http nil) a
// rule that needs HTTP attributes never matches for ALLOW, and for DENY is
// evaluated on its L4 attributes alone (Istio's fail-closed rule).
func (rl *authzRule) matches(r *authzRequest, deny bool) bool {
	if r.http == nil && rl.needsHTTP() && !deny {
		return false
	}
	if len(rl.from) > 0 && !anyOf(rl.from, func(s *authzSource) bool { return s.matches(r) }) {
		return false
	}
	if len(rl.to) > 0 && !anyOf(rl.to, func(o *authzOperation) bool { return o.matches(r) }) {
		return false
	}
	for i := range rl.when {
		if !rl.when[i].matches(r) {
			return false
		}
	}
	return true
}

func (rl *authzRule) needsHTTP() bool {
	for _, o := range rl.to {
		if len(o.hosts)+len(o.notHosts)+len(o.methods)+len(o.notMethods)+len(o.paths)+len(o.notPaths) > 0 {
			return true
		}
	}
	for _, c := range rl.when {
		if c.header != "" {
			return true
		}
	}
	return false
}

func anyOf[T any](xs []T, f func(*T) bool) bool {
	for i := range xs {
		if f(&xs[i]) {
			return true
		}
	}
	return false
}

// field checks one attribute: the positive list (if any) must match, the
// negative one must not.
func field(pos, neg strMatches, v string) bool {
	return (len(pos) == 0 || pos.any(v)) && (len(neg) == 0 || !neg.any(v))
}

func (s *authzSource) matches(r *authzRequest) bool {
	return field(s.principals, s.notPrincipals, r.principal) && field(s.namespaces, s.notNamespaces, r.namespace)
}

func (o *authzOperation) matches(r *authzRequest) bool {
	if len(o.ports) > 0 && !containsPort(o.ports, r.port) || containsPort(o.notPorts, r.port) {
		return false
	}
	if r.http == nil {
		return true // L4: HTTP fields were handled by authzRule.matches
	}
	host := strings.ToLower(r.http.Host)
	hostOK := func(ms strMatches) bool {
		if ms.any(host) {
			return true
		}
		h, _, err := net.SplitHostPort(host)
		return err == nil && ms.any(h)
	}
	if len(o.hosts) > 0 && !hostOK(o.hosts) || len(o.notHosts) > 0 && hostOK(o.notHosts) {
		return false
	}
	return field(o.methods, o.notMethods, r.http.Method) && field(o.paths, o.notPaths, r.http.URL.Path)
}

func containsPort(ps []uint32, p uint32) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

func (c *authzCondition) matches(r *authzRequest) bool {
	var vals []string
	switch {
	case c.header != "":
		if r.http == nil {
			return true // DENY on L4: HTTP conditions dropped
		}
		vals = r.http.Header[c.header]
		if len(vals) == 0 {
			return len(c.values) == 0 // absent: only a not_values condition holds
		}
	case c.key == "source.principal":
		vals = []string{r.principal}
	case c.key == "source.namespace":
		vals = []string{r.namespace}
	case c.key == "destination.port":
		vals = []string{strconv.FormatUint(uint64(r.port), 10)}
	}
	ok := len(c.values) == 0
	for _, v := range vals {
		ok = ok || c.values.any(v)
		if len(c.notValues) > 0 && c.notValues.any(v) {
			return false
		}
	}
	return ok
}
