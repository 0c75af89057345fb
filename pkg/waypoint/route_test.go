package waypoint

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

func TestCompileRejects(t *testing.T) {
	good := func() *waypointv1alpha1.ServiceConfig {
		return serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews))
	}
	route := func(sc *waypointv1alpha1.ServiceConfig) *waypointv1alpha1.HTTPRoute { return sc.Ports[0].HttpRoutes[0] }
	filter := func(f *waypointv1alpha1.HTTPFilter) func(*waypointv1alpha1.ServiceConfig) {
		return func(sc *waypointv1alpha1.ServiceConfig) { route(sc).Filters = []*waypointv1alpha1.HTTPFilter{f} }
	}
	tests := []struct {
		name      string
		mutate    func(*waypointv1alpha1.ServiceConfig)
		wantField string // "" means valid
	}{
		{"valid", func(*waypointv1alpha1.ServiceConfig) {}, ""},
		{"empty hostname", func(sc *waypointv1alpha1.ServiceConfig) { sc.Hostname = "" }, "hostname"},
		{"empty namespace", func(sc *waypointv1alpha1.ServiceConfig) { sc.Namespace = "" }, "namespace"},
		{"bad waypoint name", func(sc *waypointv1alpha1.ServiceConfig) { sc.Waypoints = []string{"wp"} }, "waypoints[0]"},
		{"port zero", func(sc *waypointv1alpha1.ServiceConfig) { sc.Ports[0].Port = 0 }, "ports[0].port"},
		{"unknown protocol", func(sc *waypointv1alpha1.ServiceConfig) { sc.Ports[0].Protocol = 42 }, "ports[0].protocol"},
		{"duplicate port", func(sc *waypointv1alpha1.ServiceConfig) { sc.Ports = append(sc.Ports, sc.Ports[0]) }, "ports[1].port"},
		{"route without name", func(sc *waypointv1alpha1.ServiceConfig) { route(sc).Name = "" }, "ports[0].http_routes[0].name"},
		{"bad path regex", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Matches = []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: "(["}}}
		}, "ports[0].http_routes[0].matches[0].path.value"},
		{"unknown path type", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Matches = []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: 9, Value: "/"}}}
		}, "ports[0].http_routes[0].matches[0].path.type"},
		{"relative path", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Matches = []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Value: "x"}}}
		}, "ports[0].http_routes[0].matches[0].path.value"},
		{"bad header regex", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Matches = []*waypointv1alpha1.HTTPMatch{{Headers: []*waypointv1alpha1.StringMatch{{Name: "a", Type: waypointv1alpha1.StringMatch_REGEX, Value: "*"}}}}
		}, "ports[0].http_routes[0].matches[0].headers[0].value"},
		{"unknown query match type", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Matches = []*waypointv1alpha1.HTTPMatch{{QueryParams: []*waypointv1alpha1.StringMatch{{Name: "a", Type: 7}}}}
		}, "ports[0].http_routes[0].matches[0].query_params[0].type"},
		{"bad method", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Matches = []*waypointv1alpha1.HTTPMatch{{Method: "GE T"}}
		}, "ports[0].http_routes[0].matches[0].method"},
		{"backend without hostname", func(sc *waypointv1alpha1.ServiceConfig) { route(sc).Backends[0].Backend.Hostname = "" }, "ports[0].http_routes[0].backends[0].backend.hostname"},
		{"invalid backend is fine", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Backends[0].Backend = &waypointv1alpha1.Backend{Invalid: true}
		}, ""},
		{"negative timeout", func(sc *waypointv1alpha1.ServiceConfig) { route(sc).RequestTimeout = &durationpb.Duration{Seconds: -1} }, "ports[0].http_routes[0].request_timeout"},
		{"retry code", func(sc *waypointv1alpha1.ServiceConfig) {
			route(sc).Retry = &waypointv1alpha1.Retry{Codes: []uint32{700}, Attempts: 1}
		}, "ports[0].http_routes[0].retry.codes[0]"},
		{"empty filter", filter(&waypointv1alpha1.HTTPFilter{}), "ports[0].http_routes[0].filters[0]"},
		{"bad header name", filter(&waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestHeaderModifier{
			RequestHeaderModifier: &waypointv1alpha1.HeaderModifier{Set: []*waypointv1alpha1.Header{{Name: "a b", Value: "x"}}}}}),
			"ports[0].http_routes[0].filters[0].request_header_modifier.set[0].name"},
		{"redirect status", filter(&waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestRedirect{
			RequestRedirect: &waypointv1alpha1.Redirect{StatusCode: 200}}}), "ports[0].http_routes[0].filters[0].request_redirect.status_code"},
		{"prefix rewrite without prefix match", filter(&waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_UrlRewrite{
			UrlRewrite: &waypointv1alpha1.URLRewrite{Path: &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/"}}}}),
			"ports[0].http_routes[0].filters[0].url_rewrite.path.type"},
		{"mirror fraction", filter(&waypointv1alpha1.HTTPFilter{Kind: &waypointv1alpha1.HTTPFilter_RequestMirror{
			RequestMirror: &waypointv1alpha1.Mirror{Backend: &waypointv1alpha1.Backend{Namespace: "a", Hostname: "b", Port: 1}, FractionPerMillion: 2_000_000}}}),
			"ports[0].http_routes[0].filters[0].request_mirror.fraction_per_million"},
		{"tcp backend filters", func(sc *waypointv1alpha1.ServiceConfig) {
			b := backend(reviews, 1)
			b.Filters = []*waypointv1alpha1.HTTPFilter{{}}
			sc.Ports[0] = &waypointv1alpha1.Port{Port: 80, TcpRoute: &waypointv1alpha1.TCPRoute{Name: "t", Backends: []*waypointv1alpha1.WeightedBackend{b}}}
		}, "ports[0].tcp_route.backends[0].filters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc := good()
			tc.mutate(sc)
			name := testNS + "/" + reviews
			_, err := compile(name, sc)
			switch {
			case tc.wantField == "" && err != nil:
				t.Errorf("compile: %v, want no error", err)
			case tc.wantField != "" && err == nil:
				t.Errorf("compile succeeded, want an error naming %s", tc.wantField)
			case tc.wantField != "" && (!strings.Contains(err.Error(), tc.wantField+":") || !strings.Contains(err.Error(), `"`+name+`"`)):
				t.Errorf("compile error %q, want one naming resource %q and field %s", err, name, tc.wantField)
			}
		})
	}
}

func TestRoutesHandleKeepsLastGood(t *testing.T) {
	r := NewRoutes()
	if err := r.Set(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviewsV1))); err != nil {
		t.Fatal(err)
	}
	bad := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviewsV2))
	bad.Ports[0].Protocol = 99
	if err := r.Set(bad); err == nil {
		t.Fatal("Set accepted an unknown protocol")
	}
	s := r.lookup(testNS + "/" + reviews)
	if s == nil || s.ports[80].routes[0].backends[0].backend.hostname != reviewsV1 {
		t.Errorf("after a rejected config the table holds %v, want the previous config (to %s)", s, reviewsV1)
	}
}

func TestSelectRoute(t *testing.T) {
	prefix := func(v string) *waypointv1alpha1.PathMatch {
		return &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: v}
	}
	routes := []*waypointv1alpha1.HTTPRoute{
		{Name: "exact", Matches: []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Value: "/exact"}}}},
		{Name: "regex", Matches: []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: "/v[0-9]+/.*"}}}},
		{Name: "header", Matches: []*waypointv1alpha1.HTTPMatch{{Headers: []*waypointv1alpha1.StringMatch{
			{Name: "X-Version", Value: "2"}, {Name: "x-user", Type: waypointv1alpha1.StringMatch_REGEX, Value: "j.*"}}}}},
		{Name: "query", Matches: []*waypointv1alpha1.HTTPMatch{{QueryParams: []*waypointv1alpha1.StringMatch{{Name: "debug", Value: "1"}}}}},
		{Name: "method-or-prefix", Matches: []*waypointv1alpha1.HTTPMatch{{Method: "DELETE"}, {Path: prefix("/api/")}}},
		{Name: "root", Matches: []*waypointv1alpha1.HTTPMatch{{Path: prefix("/static")}}},
	}
	sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, routes...)
	for _, r := range sc.Ports[0].HttpRoutes {
		r.Backends = []*waypointv1alpha1.WeightedBackend{backend(reviews, 1)}
	}
	s, err := compile(testNS+"/"+reviews, sc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, target string
		headers              map[string]string
		want                 string // "" = no route
	}{
		{"exact", "GET", "/exact", nil, "exact"},
		{"exact is not prefix", "GET", "/exact/x", nil, ""},
		{"regex whole path", "GET", "/v12/x", nil, "regex"},
		{"regex not partial", "GET", "/a/v1/x", nil, ""},
		{"headers case-insensitive, all needed", "GET", "/", map[string]string{"x-version": "2", "X-USER": "jason"}, "header"},
		{"one header missing", "GET", "/", map[string]string{"x-version": "2"}, ""},
		{"header regex whole value", "GET", "/", map[string]string{"x-version": "2", "x-user": "ajason"}, ""},
		{"query first value", "GET", "/?debug=1&debug=2", nil, "query"},
		{"query other value", "GET", "/?debug=2&debug=1", nil, ""},
		{"method", "DELETE", "/x", nil, "method-or-prefix"},
		{"prefix with trailing slash in config", "GET", "/api", nil, "method-or-prefix"},
		{"prefix element-wise", "GET", "/api/v1", nil, "method-or-prefix"},
		{"prefix not partial element", "GET", "/apis", nil, ""},
		{"prefix static", "GET", "/static/", nil, "root"},
		{"prefix staticx", "GET", "/staticx", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			rt, _ := selectRoute(s.ports[80].routes, r)
			got := ""
			if rt != nil {
				got = rt.name
			}
			if got != tc.want {
				t.Errorf("%s %s %v: route %q, want %q", tc.method, tc.target, tc.headers, got, tc.want)
			}
		})
	}
}

func TestModifyPath(t *testing.T) {
	full := func(v string) *waypointv1alpha1.PathModifier {
		return &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_FULL_PATH, Value: v}
	}
	pre := func(v string) *waypointv1alpha1.PathModifier {
		return &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: v}
	}
	matchPrefix := func(p string) *match {
		return &match{path: &pathMatch{typ: waypointv1alpha1.PathMatch_PREFIX, value: p}}
	}
	tests := []struct {
		name   string
		pm     *waypointv1alpha1.PathModifier
		prefix string
		path   string
		want   string
	}{
		{"keep", nil, "/", "/a", "/a"},
		{"full", full("/new"), "/", "/a/b", "/new"},
		{"prefix", pre("/bar"), "/foo", "/foo/x", "/bar/x"},
		{"prefix exact", pre("/bar"), "/foo", "/foo", "/bar"},
		{"prefix trailing slash", pre("/bar/"), "/foo", "/foo/x", "/bar/x"},
		{"prefix to root", pre("/"), "/foo", "/foo/x", "/x"},
		{"prefix to root exact", pre("/"), "/foo", "/foo", "/"},
		{"root prefix", pre("/bar"), "/", "/x/y", "/bar/x/y"},
		{"keeps trailing slash", pre("/bar"), "/foo", "/foo/", "/bar/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := modifyPath(tc.pm, matchPrefix(tc.prefix), tc.path); got != tc.want {
				t.Errorf("modifyPath(%v, prefix %q, %q) = %q, want %q", tc.pm, tc.prefix, tc.path, got, tc.want)
			}
		})
	}
}

func TestFilters(t *testing.T) {
	hm := &headerMod{set: [][2]string{{"X-Set", "s"}}, add: [][2]string{{"X-Add", "b"}}, remove: []string{"X-Drop"}}
	h := http.Header{"X-Set": {"old"}, "X-Add": {"a"}, "X-Drop": {"x"}, "X-Keep": {"k"}}
	hm.apply(h)
	want := http.Header{"X-Set": {"s"}, "X-Add": {"a", "b"}, "X-Keep": {"k"}}
	if len(h) != len(want) || h.Get("X-Set") != "s" || strings.Join(h["X-Add"], ",") != "a,b" || h.Get("X-Drop") != "" {
		t.Errorf("header modifier: got %v, want %v", h, want)
	}

	tests := []struct {
		name string
		rd   *waypointv1alpha1.Redirect
		host string
		want string
		code int
	}{
		{"defaults", &waypointv1alpha1.Redirect{}, "reviews:9080", "http://reviews:9080/foo/x?q=1", 302},
		{"scheme change drops port", &waypointv1alpha1.Redirect{Scheme: "https", StatusCode: 301}, "reviews:9080", "https://reviews/foo/x?q=1", 301},
		{"hostname and port", &waypointv1alpha1.Redirect{Hostname: "example.com", Port: 8443, Scheme: "https"}, "reviews", "https://example.com:8443/foo/x?q=1", 302},
		{"well-known port omitted", &waypointv1alpha1.Redirect{Port: 80}, "reviews:9080", "http://reviews/foo/x?q=1", 302},
		{"prefix path", &waypointv1alpha1.Redirect{Path: &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/bar"}}, "reviews", "http://reviews/bar/x?q=1", 302},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "http://"+tc.host+"/foo/x?q=1", nil)
			m := &match{path: &pathMatch{typ: waypointv1alpha1.PathMatch_PREFIX, value: "/foo"}}
			if got := redirectLocation(tc.rd, m, r); got != tc.want {
				t.Errorf("Location %q, want %q", got, tc.want)
			}
			if got := redirectStatus(tc.rd); got != tc.code {
				t.Errorf("status %d, want %d", got, tc.code)
			}
		})
	}

	r := httptest.NewRequest("GET", "http://reviews/foo/x", nil)
	var p plan
	applyFilters([]filter{
		{reqHeaders: &headerMod{set: [][2]string{{"X-A", "1"}}}},
		{rewrite: &waypointv1alpha1.URLRewrite{Hostname: "other", Path: &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/v2"}}},
		{respHeaders: &headerMod{set: [][2]string{{"X-R", "1"}}}},
		{redirect: &waypointv1alpha1.Redirect{}},
		{reqHeaders: &headerMod{set: [][2]string{{"X-After", "1"}}}},
	}, &match{path: &pathMatch{typ: waypointv1alpha1.PathMatch_PREFIX, value: "/foo"}}, r, &p)
	if r.Header.Get("X-A") != "1" || r.Host != "other" || r.URL.Path != "/v2/x" {
		t.Errorf("after filters: host %q path %q headers %v, want host other, path /v2/x, X-A set", r.Host, r.URL.Path, r.Header)
	}
	if len(p.respHeaders) != 1 || p.redirect == nil || r.Header.Get("X-After") != "" {
		t.Errorf("plan %+v, X-After %q: want one response modifier, the redirect, and nothing after it", p, r.Header.Get("X-After"))
	}
}

func TestTraceContext(t *testing.T) {
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h := http.Header{"Traceparent": {parent}, "Tracestate": {"congo=t61rcWkgMzE"}}
	id := propagateTrace(h, nil)
	got := h.Get("Traceparent")
	if id != "4bf92f3577b34da6a3ce929d0e0e4736" || !validTraceparent(got) || got[3:35] != id || got[36:52] == parent[36:52] || got[53:] != "01" {
		t.Errorf("traceparent %q (trace %s), want the same trace and flags with a new span id", got, id)
	}
	if h.Get("Tracestate") != "congo=t61rcWkgMzE" {
		t.Errorf("tracestate %q, want it unchanged", h.Get("Tracestate"))
	}
	h = http.Header{"Traceparent": {"garbage"}, "Tracestate": {"x=y"}}
	propagateTrace(h, nil)
	if !validTraceparent(h.Get("Traceparent")) || h.Get("Tracestate") != "" {
		t.Errorf("after an invalid parent: traceparent %q tracestate %q, want a new valid one and no state", h.Get("Traceparent"), h.Get("Tracestate"))
	}
	h = http.Header{}
	rid := ensureRequestID(h, nil)
	if len(rid) != 36 || rid[14] != '4' || h.Get("X-Request-Id") != rid {
		t.Errorf("x-request-id %q, want a UUID v4 set on the request", rid)
	}
	h = http.Header{"X-Request-Id": {"abc"}}
	if ensureRequestID(h, nil) != "abc" {
		t.Error("x-request-id of the client not kept")
	}
	// With the exchange's slots: the values live there, and a later
	// append to the header copies instead of writing past them.
	var idSlot, tpSlot [1]string
	h = http.Header{}
	rid = ensureRequestID(h, &idSlot)
	tid := propagateTrace(h, &tpSlot)
	h.Add("X-Request-Id", "second")
	if idSlot[0] != rid || len(h["X-Request-Id"]) != 2 || h["X-Request-Id"][0] != rid ||
		tpSlot[0] != h.Get("Traceparent") || tpSlot[0][3:35] != tid {
		t.Errorf("with slots: x-request-id %q (slot %q, id %q), traceparent %q (slot %q)", h["X-Request-Id"], idSlot[0], rid, h.Get("Traceparent"), tpSlot[0])
	}
}

func TestRetryOn(t *testing.T) {
	compileRetry := func(r *waypointv1alpha1.Retry) (*retryPolicy, error) {
		rt := defaultRoute(reviews)
		rt.Retry = r
		s, err := compile(testNS+"/"+reviews, serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, rt))
		if err != nil {
			return nil, err
		}
		return &s.ports[80].routes[0].retry, nil
	}
	tests := []struct {
		name                    string
		retry                   *waypointv1alpha1.Retry
		retried                 []int
		notRetried              []int
		connect, reset, timeout bool
	}{
		{"codes only", &waypointv1alpha1.Retry{Attempts: 2, Codes: []uint32{503}}, []int{503}, []int{500, 502, 504}, true, false, false},
		{"5xx", &waypointv1alpha1.Retry{Attempts: 2, RetryOn: []string{"5xx"}}, []int{500, 503, 504}, []int{409, 404}, true, true, true},
		{"gateway-error", &waypointv1alpha1.Retry{Attempts: 2, RetryOn: []string{"gateway-error"}}, []int{502, 503, 504}, []int{500}, true, true, true},
		{"connect-failure", &waypointv1alpha1.Retry{Attempts: 2, RetryOn: []string{"connect-failure"}}, nil, []int{503}, true, false, false},
		{"retriable-4xx and codes", &waypointv1alpha1.Retry{Attempts: 2, Codes: []uint32{429}, RetryOn: []string{"retriable-4xx", "retriable-status-codes"}}, []int{409, 429}, []int{503}, false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := compileRetry(tc.retry)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.retried {
				if !r.status(c) {
					t.Errorf("status %d not retried", c)
				}
			}
			for _, c := range tc.notRetried {
				if r.status(c) {
					t.Errorf("status %d retried", c)
				}
			}
			if r.connectFailure() != tc.connect || r.reset() != tc.reset || r.timeout() != tc.timeout {
				t.Errorf("connect %v reset %v timeout %v, want %v %v %v", r.connectFailure(), r.reset(), r.timeout(), tc.connect, tc.reset, tc.timeout)
			}
		})
	}
	if _, err := compileRetry(&waypointv1alpha1.Retry{Attempts: 1, RetryOn: []string{"cancelled"}}); err == nil || !strings.Contains(err.Error(), "retry.retry_on[0]") {
		t.Errorf("unknown retry_on: %v, want an error naming retry.retry_on[0]", err)
	}
}
