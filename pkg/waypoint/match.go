package waypoint

import (
	"net/http"
	"net/url"
	"strings"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// selectRoute returns the first route with a matching match (Gateway API
// precedence is already the order istiod-lite sends), and the match that
// did it (nil when the route has no matches). nil: 404.
func selectRoute(routes []*route, r *http.Request) (*route, *match) {
	var query url.Values // parsed once, on the first query match
	for _, rt := range routes {
		if len(rt.matches) == 0 {
			return rt, nil
		}
		for _, m := range rt.matches {
			if m.matches(r, &query) {
				return rt, m
			}
		}
	}
	return nil, nil
}

func (m *match) matches(r *http.Request, query *url.Values) bool {
	if m.method != "" && r.Method != m.method {
		return false
	}
	if m.path != nil && !m.path.matches(r.URL.Path) {
		return false
	}
	for i := range m.headers {
		h := &m.headers[i]
		vs, ok := r.Header[h.name]
		if !ok {
			return false
		}
		if !h.matches(strings.Join(vs, ",")) {
			return false
		}
	}
	if len(m.query) > 0 {
		if *query == nil {
			*query = r.URL.Query()
		}
		for i := range m.query {
			q := &m.query[i]
			vs, ok := (*query)[q.name]
			if !ok || len(vs) == 0 || !q.matches(vs[0]) { // Gateway API: the first value
				return false
			}
		}
	}
	return true
}

func (s *stringMatch) matches(v string) bool {
	if s.re != nil {
		return s.re.MatchString(v)
	}
	return v == s.value
}

func (p *pathMatch) matches(path string) bool {
	switch p.typ {
	case waypointv1alpha1.PathMatch_EXACT:
		return path == p.value
	case waypointv1alpha1.PathMatch_PREFIX:
		return prefixMatches(p.value, path)
	default:
		return p.re.MatchString(path)
	}
}

// prefixMatches is Gateway API's element-wise PathPrefix: "/foo" matches
// "/foo", "/foo/" and "/foo/bar", not "/foobar". prefix has no trailing
// slash unless it is "/".
func prefixMatches(prefix, path string) bool {
	if prefix == "/" {
		return strings.HasPrefix(path, "/")
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}
