package waypoint

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/hbone"
)

const (
	reviews   = "reviews.demo.svc.cluster.local"
	reviewsV1 = "reviews-v1.demo.svc.cluster.local"
	reviewsV2 = "reviews-v2.demo.svc.cluster.local"
)

func TestDefaultRouteRoundRobin(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	a := m.addPod("reviews-a", reviews, text("a"))
	b := m.addPod("reviews-b", reviews, text("b"))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))

	for _, h2 := range []bool{false, true} {
		c := m.httpClient(h2)
		for range 10 {
			code, _, _ := get(t, c, "http://10.0.0.1:80/", nil)
			if code != http.StatusOK {
				t.Fatalf("h2c=%v: status %d, want 200", h2, code)
			}
		}
	}
	if a.hits.Load() != 10 || b.hits.Load() != 10 {
		t.Errorf("round robin: a got %d, b got %d requests, want 10 each", a.hits.Load(), b.hits.Load())
	}
}

func TestWeightedSplit(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addService(reviewsV1, "10.0.0.2")
	m.addService(reviewsV2, "10.0.0.3")
	v1 := m.addPod("reviews-v1", reviewsV1, text("v1"))
	v2 := m.addPod("reviews-v2", reviewsV2, text("v2"))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, &waypointv1alpha1.HTTPRoute{
		Name:     "HTTPRoute/demo/reviews/0",
		Backends: []*waypointv1alpha1.WeightedBackend{backend(reviewsV1, 90), backend(reviewsV2, 10)},
	}))
	c := m.httpClient(false)
	const n = 2000
	for range n {
		if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
	}
	share := float64(v1.hits.Load()) * 100 / n
	if share < 87 || share > 93 {
		t.Errorf("v1 got %.1f%% of %d requests (v2 %d), want 90 ± 3", share, n, v2.hits.Load())
	}
}

func TestHeaderMatchRouting(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addService(reviewsV1, "10.0.0.2")
	m.addService(reviewsV2, "10.0.0.3")
	m.addPod("reviews-v1", reviewsV1, text("v1"))
	m.addPod("reviews-v2", reviewsV2, text("v2"))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP,
		&waypointv1alpha1.HTTPRoute{
			Name: "HTTPRoute/demo/reviews/0",
			Matches: []*waypointv1alpha1.HTTPMatch{{Headers: []*waypointv1alpha1.StringMatch{
				{Name: "end-user", Value: "jason"}}}},
			Backends: []*waypointv1alpha1.WeightedBackend{backend(reviewsV2, 1)},
		},
		&waypointv1alpha1.HTTPRoute{
			Name:     "HTTPRoute/demo/reviews/1",
			Matches:  []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: "/reviews"}}},
			Backends: []*waypointv1alpha1.WeightedBackend{backend(reviewsV1, 1)},
		},
	))
	c := m.httpClient(false)
	tests := []struct {
		name     string
		path     string
		hdr      map[string]string
		wantCode int
		want     string
	}{
		{"header matches", "/x", map[string]string{"End-User": "jason"}, 200, "reviews-v2"},
		{"header value differs", "/reviews/1", map[string]string{"end-user": "bob"}, 200, "reviews-v1"},
		{"prefix", "/reviews", nil, 200, "reviews-v1"},
		{"no route", "/reviewsX", nil, 404, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, got, _ := get(t, c, "http://10.0.0.1"+tc.path, tc.hdr)
			if code != tc.wantCode || got != tc.want {
				t.Errorf("GET %s %v: got %d from %q, want %d from %q", tc.path, tc.hdr, code, got, tc.wantCode, tc.want)
			}
		})
	}
}

func TestRefusesUnservedTargets(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addService(reviewsV1, "10.0.0.2")
	m.addService(reviewsV2, "10.0.0.3")
	m.addPod("reviews-v1", reviewsV1, text("v1"))
	other := serviceConfig(reviewsV2, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviewsV2))
	other.Waypoints = []string{"demo/other"}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)), other)
	tests := []struct {
		name, authority string
		want            int
	}{
		{"unknown address", "10.9.9.9:80", 503},
		{"no service config", "10.0.0.2:80", 503},
		{"other waypoint", "10.0.0.3:80", 503},
		{"unknown port", "10.0.0.1:81", 503},
		{"pod address", "127.0.0.11:80", 503},
		{"served", "10.0.0.1:80", 0},
		{"served by hostname", reviews + ":80", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := m.tunnel(t.Context(), tc.authority)
			if got := hbone.StatusOf(err); got != tc.want {
				t.Errorf("CONNECT %s: status %d (%v), want %d", tc.authority, got, err, tc.want)
			}
			if c != nil {
				_ = c.Close()
			}
		})
	}
}

func TestMetricsCountRequests(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-a", reviews, text("a"))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP,
		&waypointv1alpha1.HTTPRoute{Name: "r", Matches: []*waypointv1alpha1.HTTPMatch{{Method: "GET"}},
			Backends: []*waypointv1alpha1.WeightedBackend{backend(reviews, 1)}}))
	c := m.httpClient(false)
	for range 7 {
		get(t, c, "http://10.0.0.1/", nil)
	}
	for range 3 {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://10.0.0.1/", strings.NewReader("x"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	count := func(code string) float64 {
		mfs, err := m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var n float64
		for _, mf := range mfs {
			if mf.GetName() != "istio_requests_total" {
				continue
			}
			for _, mt := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range mt.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["response_code"] == code && labels["reporter"] == "waypoint" &&
					labels["destination_service"] == reviews && labels["source_principal"] == m.caller.ID.String() &&
					(code != "200" || labels["destination_workload"] == "reviews-a") {
					n += mt.GetCounter().GetValue()
				}
			}
		}
		return n
	}
	if got := count("200"); got != 7 {
		t.Errorf("istio_requests_total{response_code=200} = %v, want 7", got)
	}
	if got := count("404"); got != 3 {
		t.Errorf("istio_requests_total{response_code=404} = %v, want 3 (POST matches no route)", got)
	}
	logs := m.access.FilterMessage("request complete").AllUntimed()
	if len(logs) != 10 {
		t.Fatalf("%d access-log lines, want one per request (10)", len(logs))
	}
	codes := map[int64]int{}
	for _, l := range logs {
		f := l.ContextMap()
		codes[f["response_code"].(int64)]++
		if f["src.identity"] != m.caller.ID.String() || f["dst.service"] != reviews || f["request_id"] == "" || f["trace_id"] == "" {
			t.Errorf("access log fields %v: want the caller's identity, the service, a request id and a trace id", f)
		}
	}
	if codes[200] != 7 || codes[404] != 3 {
		t.Errorf("access-log response codes %v, want 7x200 and 3x404", codes)
	}
}

// TestFiltersEndToEnd: header modifiers, rewrite and redirect applied by
// the proxy, trace context propagated, and the error statuses of bad
// backends.
func TestFiltersEndToEnd(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	const empty = "empty.demo.svc.cluster.local"
	m.addService(reviews, "10.0.0.1")
	m.addService(empty, "10.0.0.4")
	var seen http.Header
	var seenPath, seenHost string
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, seenPath, seenHost = r.Header.Clone(), r.URL.Path, r.Host
		w.Header().Set("X-Internal", "secret")
	}))
	prefix := func(v string) []*waypointv1alpha1.HTTPMatch {
		return []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: v}}}
	}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP,
		&waypointv1alpha1.HTTPRoute{Name: "old", Matches: prefix("/old"), Filters: []*waypointv1alpha1.HTTPFilter{{Kind: &waypointv1alpha1.HTTPFilter_RequestRedirect{
			RequestRedirect: &waypointv1alpha1.Redirect{Path: &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/new"}, StatusCode: 301}}}}},
		&waypointv1alpha1.HTTPRoute{Name: "invalid", Matches: prefix("/invalid"), Backends: []*waypointv1alpha1.WeightedBackend{{Weight: 1, Backend: &waypointv1alpha1.Backend{Invalid: true}}}},
		&waypointv1alpha1.HTTPRoute{Name: "none", Matches: prefix("/none")},
		&waypointv1alpha1.HTTPRoute{Name: "empty", Matches: prefix("/empty"), Backends: []*waypointv1alpha1.WeightedBackend{backend(empty, 1)}},
		&waypointv1alpha1.HTTPRoute{Name: "api", Matches: prefix("/api"),
			Filters: []*waypointv1alpha1.HTTPFilter{
				{Kind: &waypointv1alpha1.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: &waypointv1alpha1.HeaderModifier{
					Set: []*waypointv1alpha1.Header{{Name: "x-route", Value: "api"}}, Remove: []string{"x-secret"}}}},
				{Kind: &waypointv1alpha1.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: &waypointv1alpha1.HeaderModifier{
					Add: []*waypointv1alpha1.Header{{Name: "x-served-by", Value: "waypoint"}}, Remove: []string{"x-internal"}}}},
				{Kind: &waypointv1alpha1.HTTPFilter_UrlRewrite{UrlRewrite: &waypointv1alpha1.URLRewrite{Hostname: "reviews.internal",
					Path: &waypointv1alpha1.PathModifier{Type: waypointv1alpha1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/v2"}}}},
			},
			Backends: []*waypointv1alpha1.WeightedBackend{backend(reviews, 1)}},
	))
	c := m.httpClient(false)

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://10.0.0.1/api/items", nil)
	req.Header.Set("X-Secret", "s")
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if seen.Get("X-Route") != "api" || seen.Get("X-Secret") != "" || seenPath != "/v2/items" || seenHost != "reviews.internal" {
		t.Errorf("backend saw host %q path %q headers %v; want host reviews.internal, path /v2/items, x-route set, x-secret removed", seenHost, seenPath, seen)
	}
	if tp := seen.Get("Traceparent"); !strings.HasPrefix(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Errorf("backend saw traceparent %q, want the same trace with a new span", tp)
	}
	if seen.Get("X-Request-Id") == "" {
		t.Error("backend saw no x-request-id")
	}
	if resp.Header.Get("X-Served-By") != "waypoint" || resp.Header.Get("X-Internal") != "" {
		t.Errorf("client got headers %v, want x-served-by added and x-internal removed", resp.Header)
	}

	resp, err = c.Get("http://10.0.0.1/old/page?x=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 301 || resp.Header.Get("Location") != "http://10.0.0.1/new/page?x=1" {
		t.Errorf("redirect: %d Location %q, want 301 to http://10.0.0.1/new/page?x=1", resp.StatusCode, resp.Header.Get("Location"))
	}
	for path, want := range map[string]int{"/invalid": 500, "/none": 500, "/empty": 503, "/nothing": 404} {
		if code, _, _ := get(t, c, "http://10.0.0.1"+path, nil); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
}

// TestDrain: on cancellation the waypoint finishes the request in flight
// and refuses nothing it already accepted; Serve returns once it is done.
func TestDrain(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{drainTimeout: 5 * time.Second})
	m.addService(reviews, "10.0.0.1")
	started := make(chan struct{})
	release := make(chan struct{})
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	c := m.httpClient(false)
	type result struct {
		code int
		body string
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get("http://10.0.0.1/")
		if err != nil {
			res <- result{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(b)}
	}()
	<-started
	m.cancel()
	select {
	case err := <-m.served:
		t.Fatalf("Serve returned %v while a request was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if r := <-res; r.code != 200 || r.body != "done" {
		t.Errorf("in-flight request got %d %q, want 200 done", r.code, r.body)
	}
	select {
	case err := <-m.served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
	m.cancel = nil
	_ = m.proxy.Close()
}

// TestUpgrade: an HTTP/1.1 Upgrade (WebSocket-style) is switched through
// the waypoint and the connection then carries raw bytes both ways.
func TestUpgrade(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-ws", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	c, err := m.tunnel(t.Context(), "10.0.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: reviews\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: hello\n" {
		t.Errorf("after the upgrade read %q, %v; want \"echo: hello\\n\"", line, err)
	}
}
