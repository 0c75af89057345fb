package waypoint

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// apply runs the header modifier on h: set, then add, then remove.
func (hm *headerMod) apply(h http.Header) {
	for _, kv := range hm.set {
		h[kv[0]] = []string{kv[1]}
	}
	for _, kv := range hm.add {
		h[kv[0]] = append(h[kv[0]], kv[1])
	}
	for _, k := range hm.remove {
		delete(h, k)
	}
}

// modifyPath applies a path modifier to path; m is the match that selected
// the route (its PREFIX value is what REPLACE_PREFIX_MATCH replaces).
func modifyPath(pm *waypointv1alpha1.PathModifier, m *match, path string) string {
	if pm == nil {
		return path
	}
	if pm.GetType() == waypointv1alpha1.PathModifier_REPLACE_FULL_PATH {
		if pm.GetValue() == "" {
			return "/"
		}
		return pm.GetValue()
	}
	// REPLACE_PREFIX_MATCH: the rest after the matched prefix is "" or
	// starts with "/", so "/foo" -> "/bar" turns "/foo/x" into "/bar/x" and
	// "/" turns it into "/x".
	prefix := "/"
	if m != nil && m.path != nil {
		prefix = m.path.value
	}
	var rest string
	switch {
	case prefix == "/":
		rest = path
		if rest == "/" {
			rest = ""
		}
	case len(path) >= len(prefix):
		rest = path[len(prefix):]
	}
	out := strings.TrimRight(pm.GetValue(), "/") + rest
	if out == "" {
		return "/"
	}
	return out
}

// rewrite applies a URLRewrite to the outgoing request.
func rewrite(rw *waypointv1alpha1.URLRewrite, m *match, r *http.Request) {
	if h := rw.GetHostname(); h != "" {
		r.Host = h
	}
	if pm := rw.GetPath(); pm != nil {
		r.URL.Path = modifyPath(pm, m, r.URL.Path)
		r.URL.RawPath = ""
	}
}

// redirectLocation builds the Location of a RequestRedirect. The waypoint
// receives plain HTTP, so the request's scheme is http.
func redirectLocation(rd *waypointv1alpha1.Redirect, m *match, r *http.Request) string {
	host, reqPort := r.Host, ""
	if h, p, err := net.SplitHostPort(r.Host); err == nil {
		host, reqPort = h, p
	}
	scheme := "http"
	if rd.GetScheme() != "" && rd.GetScheme() != scheme {
		scheme = rd.GetScheme()
		reqPort = "" // the new scheme's default port
	}
	if rd.GetHostname() != "" {
		host = rd.GetHostname()
	}
	port := reqPort
	if rd.GetPort() != 0 {
		port = strconv.Itoa(int(rd.GetPort()))
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	}
	path := modifyPath(rd.GetPath(), m, r.URL.Path)
	loc := scheme + "://" + host + path
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	return loc
}

func redirectStatus(rd *waypointv1alpha1.Redirect) int {
	if c := rd.GetStatusCode(); c != 0 {
		return int(c)
	}
	return http.StatusFound
}

// plan is what the filters of a route and of its chosen backend decided for
// one request.
type plan struct {
	redirect    *waypointv1alpha1.Redirect
	respHeaders []*headerMod
	mirrors     []*mirror
}

// applyFilters runs fs in order on the outgoing request r and collects
// what acts later (response headers, mirrors) into p. A redirect stops the
// chain.
func applyFilters(fs []filter, m *match, r *http.Request, p *plan) {
	for i := range fs {
		f := &fs[i]
		switch {
		case f.reqHeaders != nil:
			f.reqHeaders.apply(r.Header)
		case f.respHeaders != nil:
			p.respHeaders = append(p.respHeaders, f.respHeaders)
		case f.rewrite != nil:
			rewrite(f.rewrite, m, r)
		case f.redirect != nil:
			p.redirect = f.redirect
			return
		case f.mirror != nil:
			p.mirrors = append(p.mirrors, f.mirror)
		}
	}
}
