package waypoint

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// TestForwardMatchesReverseProxy sends the same request through the
// waypoint (forward) and through httputil.ReverseProxy configured as the
// waypoint configured it before forward existed, to the same backend, and
// compares what the backend received and what the client got: hop-by-hop
// headers both ways (fixed and Connection-listed), TE: trailers, the
// client's forwarding headers, the User-Agent, an unparsable query,
// announced and unannounced trailers, the body.
func TestForwardMatchesReverseProxy(t *testing.T) {
	type seen struct {
		header http.Header
		query  string
	}
	var mu sync.Mutex
	var got []seen
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, seen{r.Header.Clone(), r.URL.RawQuery})
		mu.Unlock()
		h := w.Header()
		h.Set("Trailer", "X-Sum")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Connection", "X-Conn-Private")
		h.Set("X-Conn-Private", "1")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("Upgrade", "foo")
		h.Set("X-Kept", "yes")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "part one, ")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "part two")
		h.Set("X-Sum", "42")
		h.Set(http.TrailerPrefix+"X-Late", "late")
	})

	send := func(t *testing.T, c *http.Client, u string) (int, http.Header, http.Header, string) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header["User-Agent"] = []string{""} // none sent
		req.Header.Set("Connection", "X-Private")
		req.Header.Set("X-Private", "secret")
		req.Header.Set("Keep-Alive", "300")
		req.Header.Set("Proxy-Authorization", "Basic eA==")
		req.Header.Set("Te", "trailers, deflate")
		req.Header.Set("X-Forwarded-For", "192.0.2.9")
		req.Header.Set("Forwarded", "for=192.0.2.9")
		req.Header.Set("X-Keep", "yes")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header, resp.Trailer, string(b)
	}
	const query = "a=1;b=2&c=%zz&d=4"

	// The reference: the reverse proxy as the waypoint set it up.
	ref := httptest.NewServer(backend)
	defer ref.Close()
	refURL, _ := url.Parse(ref.URL)
	rp := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
			if v, ok := pr.In.Header[h]; ok {
				pr.Out.Header[h] = v
			}
		}
		pr.Out.URL.Scheme = "http"
		pr.Out.URL.Host = refURL.Host
		pr.Out.Host = pr.In.Host
	}})
	defer rp.Close()
	wantCode, wantHeader, wantTrailer, wantBody := send(t, rp.Client(), rp.URL+"/?"+query)

	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-a", reviews, backend)
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	code, header, trailer, body := send(t, m.httpClient(false), "http://10.0.0.1/?"+query)

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("backend saw %d requests, want 2", len(got))
	}
	// What the backend received; the waypoint adds its own (request id,
	// trace context, Envoy-style headers), so compare the client's.
	for _, k := range []string{"Connection", "X-Private", "Keep-Alive", "Proxy-Authorization", "Te", "X-Forwarded-For", "Forwarded", "X-Keep", "User-Agent", "Upgrade"} {
		if w, g := got[0].header[k], got[1].header[k]; !slices.Equal(w, g) {
			t.Errorf("backend's %s: %q through the waypoint, %q through the reverse proxy", k, g, w)
		}
	}
	if got[1].query != got[0].query {
		t.Errorf("backend's query: %q through the waypoint, %q through the reverse proxy", got[1].query, got[0].query)
	}
	if got[1].header.Get("Te") != "trailers" || got[1].header.Get("X-Private") != "" || got[1].header.Get("User-Agent") != "" || got[1].query != "d=4" {
		t.Errorf("backend got %v ?%s: want TE: trailers only, no X-Private or User-Agent, query d=4", got[1].header, got[1].query)
	}

	// What the client got.
	if code != wantCode || body != wantBody {
		t.Errorf("client got %d %q, want %d %q", code, body, wantCode, wantBody)
	}
	for _, k := range []string{"Keep-Alive", "Connection", "X-Conn-Private", "Proxy-Authenticate", "Upgrade", "X-Kept", "Trailer"} {
		if w, g := wantHeader[k], header[k]; !slices.Equal(w, g) && !(k == "Trailer" && sameTokens(w, g)) {
			t.Errorf("client's %s: %q through the waypoint, %q through the reverse proxy", k, g, w)
		}
	}
	for _, k := range []string{"X-Sum", "X-Late"} {
		if w, g := wantTrailer[k], trailer[k]; !slices.Equal(w, g) || len(g) == 0 {
			t.Errorf("client's trailer %s: %q through the waypoint, %q through the reverse proxy", k, g, w)
		}
	}
	if header.Get("X-Conn-Private") != "" || header.Get("X-Kept") != "yes" {
		t.Errorf("client got %v: want X-Kept and no X-Conn-Private", header)
	}
}

func sameTokens(a, b []string) bool {
	split := func(v []string) []string {
		var out []string
		for _, s := range v {
			for f := range strings.SplitSeq(s, ",") {
				out = append(out, strings.TrimSpace(f))
			}
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(split(a), split(b))
}

func TestCleanQuery(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"a=1&b=2":         "a=1&b=2",
		"a=%20&b=%41":     "a=%20&b=%41",
		"a=1;b=2&c=3":     "c=3",
		"a=%zz&b=2":       "b=2",
		"a=%2":            "",
		"b=2&a=1;x":       "b=2",
		"q=hello%2Cworld": "q=hello%2Cworld",
	} {
		if got := cleanQuery(in); got != want {
			t.Errorf("cleanQuery(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestToOutbound(t *testing.T) {
	h := http.Header{
		"Connection":        {"keep-alive, x-drop"},
		"X-Drop":            {"1"},
		"Keep-Alive":        {"300"},
		"Transfer-Encoding": {"chunked"},
		"Te":                {"gzip"},
		"X-Nil":             nil,
		"X-Multi":           {"a", "b"},
		"User-Agent":        {"curl/8"},
	}
	toOutbound(h)
	want := http.Header{"X-Nil": nil, "X-Multi": {"a", "b"}, "User-Agent": {"curl/8"}}
	if len(h) != len(want) {
		t.Fatalf("toOutbound = %v, want %v", h, want)
	}
	for k, v := range want {
		g, ok := h[k]
		if !ok || !slices.Equal(g, v) || (v == nil) != (g == nil) {
			t.Errorf("%s = %#v, want %#v", k, g, v)
		}
	}
	h = http.Header{"Te": {"trailers, gzip"}, "Connection": {"te"}}
	toOutbound(h)
	if te := h["Te"]; !slices.Equal(te, []string{"trailers"}) || len(h) != 2 {
		t.Errorf("TE: trailers listed in Connection: %v, want only Te: trailers and the empty User-Agent", h)
	}
	h = http.Header{}
	toOutbound(h)
	if ua := h["User-Agent"]; !slices.Equal(ua, []string{""}) {
		t.Errorf("User-Agent without one = %q, want an empty one", ua)
	}
}

// TestDropHopByHop: both of dropHopByHop's ways (a look at each name of a
// small header, a delete of each hop-by-hop name from a large one) drop
// every hop-by-hop header and those Connection lists, and nothing else.
func TestDropHopByHop(t *testing.T) {
	for _, k := range hopByHop {
		if !isHopByHop(k) {
			t.Errorf("isHopByHop(%q) = false", k)
		}
	}
	for _, k := range []string{"Host", "Content-Type", "Te-X", "Upgrade-Insecure-Requests", "connection"} {
		if isHopByHop(k) {
			t.Errorf("isHopByHop(%q) = true", k)
		}
	}
	for _, extra := range []int{0, 3, 12} { // small, at the bound, large
		h := http.Header{"Connection": {"x-listed"}, "X-Listed": {"1"}, "Upgrade": {"h2c"}, "Proxy-Authorization": {"b"}, "X-Keep": {"k"}}
		want := map[string]bool{"X-Keep": true}
		for i := range extra {
			k := "X-Extra-" + itoa(i)
			h[k] = []string{"v"}
			want[k] = true
		}
		dropHopByHop(h)
		if len(h) != len(want) {
			t.Errorf("with %d more headers: %v left, want %d", extra, h, len(want))
		}
		for k := range want {
			if _, ok := h[k]; !ok {
				t.Errorf("with %d more headers: %s dropped", extra, k)
			}
		}
	}
}
