package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// TestUpstreamKeepAlive: sequential requests, with and without a body,
// reuse one upstream connection (HBONE stream) to the endpoint.
func TestUpstreamKeepAlive(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	var mu sync.Mutex
	conns := map[string]int{}
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		conns[r.RemoteAddr]++
		mu.Unlock()
		_, _ = io.WriteString(w, r.Method+" "+string(b))
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	c := m.httpClient(false)
	for i := range 10 {
		method, body, want := http.MethodGet, "", "GET "
		if i%2 == 1 {
			method, body, want = http.MethodPost, "payload", "POST payload"
		}
		req, _ := http.NewRequestWithContext(t.Context(), method, "http://10.0.0.1/", strings.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("%s: %d %q, want 200 %q", method, resp.StatusCode, b, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Errorf("upstream connections %v, want one for all 10 requests", conns)
	}
}

// TestUpstreamClosedWhileIdle: an endpoint that closes a keep-alive
// connection while it is idle (its idle timeout) does not fail the next
// request, not even a non-idempotent one that cannot be retried.
func TestUpstreamClosedWhileIdle(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	var mu sync.Mutex
	var posts int
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			mu.Lock()
			posts++
			mu.Unlock()
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		// A keep-alive answer, then the connection closes behind it.
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		_ = brw.Flush()
		time.Sleep(20 * time.Millisecond)
		_ = conn.Close()
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	c := m.httpClient(false)
	for i := range 3 {
		if code, _, body := get(t, c, "http://10.0.0.1/", nil); code != 200 || body != "ok" {
			t.Fatalf("GET %d: %d %q", i, code, body)
		}
		// The HBONE stream's end has reached the waypoint: the pool
		// drops the connection when it is next taken.
		waitFor(t, 5*time.Second, "the pooled connection to see its end", func() error {
			m.proxy.h1p.mu.Lock()
			defer m.proxy.h1p.mu.Unlock()
			for _, cs := range m.proxy.h1p.idle {
				for _, pc := range cs {
					if pc.ready == nil {
						return errorf("pooled HBONE connection has a watcher, want none")
					}
					if !pc.unusable() {
						return errorf("idle connection not known to be closed")
					}
				}
			}
			return nil
		})
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://10.0.0.1/", strings.NewReader("x"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("POST %d after the endpoint closed the idle connection: %d %q, want 200 ok", i, resp.StatusCode, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if posts != 3 {
		t.Errorf("endpoint saw %d POSTs, want 3", posts)
	}
}

// TestUpstreamInformational: 1xx answers (103 Early Hints) are passed on
// before the final answer, from HTTP/1.1 endpoints (the h1Pool) and h2c
// ones (the Transport) alike.
func TestUpstreamInformational(t *testing.T) {
	leakCheck(t)
	for _, proto := range []waypointv1alpha1.Protocol{waypointv1alpha1.Protocol_HTTP, waypointv1alpha1.Protocol_HTTP2} {
		t.Run(proto.String(), func(t *testing.T) {
			m := newMesh(t, meshOptions{})
			m.addService(reviews, "10.0.0.1")
			m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Link", "</style.css>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
				_, _ = io.WriteString(w, "done")
			}))
			m.setRoutes(serviceConfig(reviews, proto, defaultRoute(reviews)))
			c := m.httpClient(proto == waypointv1alpha1.Protocol_HTTP2)
			var got []string
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				got = append(got, http.StatusText(code)+" "+h.Get("Link"))
				return nil
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodGet, "http://10.0.0.1/", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "done" {
				t.Errorf("answer %d %q, want 200 done", resp.StatusCode, b)
			}
			if len(got) != 1 || got[0] != "Early Hints </style.css>; rel=preload" {
				t.Errorf("1xx answers %q, want the 103 with its Link", got)
			}
		})
	}
}

// TestResponseHeadersBeforeLateBody: the headers of a response of known
// length whose body comes later reach the client at once, for HTTP/1.1
// and h2c endpoints alike.
func TestResponseHeadersBeforeLateBody(t *testing.T) {
	leakCheck(t)
	for _, proto := range []waypointv1alpha1.Protocol{waypointv1alpha1.Protocol_HTTP, waypointv1alpha1.Protocol_HTTP2} {
		t.Run(proto.String(), func(t *testing.T) {
			m := newMesh(t, meshOptions{})
			m.addService(reviews, "10.0.0.1")
			release := make(chan struct{})
			m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", "4")
				w.WriteHeader(http.StatusOK)
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-time.After(10 * time.Second):
				}
				_, _ = io.WriteString(w, "late")
			}))
			m.setRoutes(serviceConfig(reviews, proto, defaultRoute(reviews)))
			c := m.httpClient(false)
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://10.0.0.1/", nil)
			resp, err := c.Do(req) // returns with the headers
			close(release)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "late" {
				t.Errorf("answer %d %q, want 200 late", resp.StatusCode, b)
			}
		})
	}
}

// TestRequestTimeoutDuringBody: the request timeout also ends an answer
// whose body stalls after its headers and first bytes; the connection is
// not reused and the next request is served.
func TestRequestTimeoutDuringBody(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Length", "8")
		_, _ = io.WriteString(w, "part")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	route := defaultRoute(reviews)
	route.RequestTimeout = durationpb.New(200 * time.Millisecond)
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	start := time.Now()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://10.0.0.1/stall", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err == nil || string(b) != "part" {
		t.Errorf("body %q, %v; want the first bytes, then an error", b, err)
	}
	if took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("body ended after %v, want about 200ms", took)
	}
	if code, _, body := get(t, c, "http://10.0.0.1/ok", nil); code != 200 || body != "ok" {
		t.Errorf("next request: %d %q, want 200 ok", code, body)
	}
}

// TestUnexpectedSwitchingProtocols: an endpoint that switches protocols
// on a request that asked for no upgrade gets the client an error, and
// its connection is closed (leakCheck).
func TestUnexpectedSwitchingProtocols(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = brw.ReadString('\n') // until the waypoint closes it
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	c := m.httpClient(false)
	if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code < 500 {
		t.Errorf("status %d, want an error", code)
	}
}

// writeCounter counts the writes that reach a connection.
type writeCounter struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *writeCounter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// opaqueBody hides its reader's type, as ReverseProxy's wrapper of the
// outbound body does.
type opaqueBody struct{ io.ReadCloser }

// TestUpstreamOneWritePerRequest: a request whose body the waypoint
// buffered goes to the endpoint in one write (headers and body together),
// even when the body reaches the pool behind a wrapper net/http does not
// know as in-memory.
func TestUpstreamOneWritePerRequest(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	var conn *writeCounter
	pl := &h1Pool{dial: func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		conn = &writeCounter{Conn: c}
		return conn, nil
	}}
	defer pl.closeIdle(true)
	body := bytes.Repeat([]byte("x"), 1024)
	for i := range 3 {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+ln.Addr().String()+"/", nil)
		req.Body = opaqueBody{io.NopCloser(bytes.NewReader(body))}
		req.ContentLength = int64(len(body))
		before := 0
		if conn != nil {
			before = conn.count()
		}
		resp, err := pl.roundTrip(req, body, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(got, body) {
			t.Fatalf("request %d: echoed %d bytes, want the %d sent", i, len(got), len(body))
		}
		if n := conn.count() - before; n != 1 {
			t.Errorf("request %d went out in %d writes, want 1", i, n)
		}
	}
}

// TestWriteRequestMatchesRequestWrite: for every request writeRequest
// takes, it writes the bytes Request.Write writes; it declines the others.
func TestWriteRequestMatchesRequestWrite(t *testing.T) {
	mk := func(method, url string, body string, h http.Header, mod func(*http.Request)) (*http.Request, []byte) {
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			req.Header[k] = v
		}
		if mod != nil {
			mod(req)
		}
		b := []byte(body)
		if len(b) > 0 {
			req.Body = io.NopCloser(bytes.NewReader(b))
			req.ContentLength = int64(len(b))
		}
		return req, b
	}
	cases := []struct {
		name string
		req  func() (*http.Request, []byte)
		take bool
	}{
		{"GET", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1:8080/a/b?x=1&y=%20", "", http.Header{"Accept": {"*/*"}, "X-Request-Id": {"abc"}}, nil)
		}, true},
		{"POST body", func() (*http.Request, []byte) {
			return mk("POST", "http://10.0.0.1:8080/echo", "hello world", http.Header{"Content-Type": {"text/plain"}, "X-Multi": {"a", "b"}}, nil)
		}, true},
		{"DELETE no body", func() (*http.Request, []byte) { return mk("DELETE", "http://10.0.0.1/x", "", nil, nil) }, true},
		{"HEAD", func() (*http.Request, []byte) { return mk("HEAD", "http://10.0.0.1/x", "", nil, nil) }, true},
		{"empty UA", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1/", "", http.Header{"User-Agent": {""}}, nil)
		}, true},
		{"UA with newline", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1/", "", http.Header{"User-Agent": {" curl/8\r\nX-Evil: 1 "}, "X-Val": {"a\nb"}}, nil)
		}, true},
		{"Host differs from URL, Close", func() (*http.Request, []byte) {
			return mk("PUT", "http://10.0.0.1:9080/p", "x", nil, func(r *http.Request) { r.Host = "reviews.demo:9080"; r.Close = true })
		}, true},
		{"Close with Connection: close", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1/", "", http.Header{"Connection": {"close"}}, func(r *http.Request) { r.Close = true })
		}, true},
		{"invalid header name dropped", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1/", "", http.Header{"X Bad": {"1"}, "X-Good": {"2"}}, nil)
		}, true},
		{"IDNA host", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1/", "", nil, func(r *http.Request) { r.Host = "bücher.example" })
		}, false},
		{"zone", func() (*http.Request, []byte) {
			return mk("GET", "http://10.0.0.1/", "", nil, func(r *http.Request) { r.Host = "[fe80::1%25eth0]:80" })
		}, false},
		{"chunked", func() (*http.Request, []byte) {
			return mk("POST", "http://10.0.0.1/", "x", nil, func(r *http.Request) { r.TransferEncoding = []string{"chunked"} })
		}, false},
	}
	for _, tc := range cases {
		req, body := tc.req()
		var got bytes.Buffer
		bw := bufio.NewWriter(&got)
		took := writeRequest(bw, req, body)
		_ = bw.Flush()
		if took != tc.take {
			t.Errorf("%s: taken %v, want %v", tc.name, took, tc.take)
		}
		if !took {
			if got.Len() > 0 {
				t.Errorf("%s: declined but wrote %q", tc.name, got.String())
			}
			continue
		}
		req2, _ := tc.req()
		var want bytes.Buffer
		if err := req2.Write(&want); err != nil {
			t.Fatalf("%s: Request.Write: %v", tc.name, err)
		}
		if got.String() != want.String() {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got.String(), want.String())
		}
	}
}

// TestClientGoneEndsUpstream: a client that resets its HBONE stream in the
// middle of a request ends the upstream request: the endpoint sees its
// request's context end (the waypoint's read of the answer is aborted and
// its upstream stream closed), not only after the endpoint answers.
func TestClientGoneEndsUpstream(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	started, gone := make(chan struct{}, 1), make(chan struct{})
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			close(gone)
		case <-time.After(20 * time.Second):
		}
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews)))
	c, err := m.tunnel(t.Context(), "10.0.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the endpoint")
	}
	_ = c.SetReadDeadline(time.Unix(1, 0)) // terminal: resets the stream
	_ = c.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the endpoint's request still open 10 s after the client reset its stream")
	}
}
