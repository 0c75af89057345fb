package waypoint

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// h1Mesh is a waypoint in front of one pod whose handler answers by
// path: /body (a 1 KB body of known length), /chunked (two flushed
// parts and a trailer), /nocontent (204), /echo (the request's body).
// Requests to /missing match no route (404 from the waypoint itself).
func h1Mesh(t *testing.T) *mesh {
	m := newMesh(t, meshOptions{drainTimeout: 5 * time.Second})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/body":
			_, _ = io.WriteString(w, strings.Repeat("b", 1024))
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "one,")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "two")
			w.Header().Set("X-Sum", "7")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write(b)
		}
	}))
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, &waypointv1alpha1.HTTPRoute{
		Name:     "HTTPRoute/demo/reviews/0",
		Matches:  []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_REGEX, Value: "/(body|chunked|nocontent|echo)"}}},
		Backends: []*waypointv1alpha1.WeightedBackend{backend(reviews, 1)},
	}))
	return m
}

// rawStream opens one HBONE stream to the service's port 80.
func rawStream(t *testing.T, m *mesh) (net.Conn, *bufio.Reader) {
	c, err := m.tunnel(t.Context(), "10.0.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

// TestH1ServerFraming: the answers of the waypoint's HTTP/1.1 server on
// one keep-alive stream, pipelined: a body of known length, a chunked
// one with its trailer, 204 and HEAD without a body, the waypoint's own
// 404 with the length of what it wrote, Date everywhere.
func TestH1ServerFraming(t *testing.T) {
	leakCheck(t)
	m := h1Mesh(t)
	c, br := rawStream(t, m)
	reqs := "GET /body HTTP/1.1\r\nHost: reviews\r\n\r\n" +
		"GET /chunked HTTP/1.1\r\nHost: reviews\r\nTE: trailers\r\n\r\n" +
		"GET /nocontent HTTP/1.1\r\nHost: reviews\r\n\r\n" +
		"HEAD /body HTTP/1.1\r\nHost: reviews\r\n\r\n" +
		"GET /missing HTTP/1.1\r\nHost: reviews\r\n\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	resp, body := readResponse(t, br, "GET")
	if resp.StatusCode != 200 || resp.ContentLength != 1024 || len(body) != 1024 || resp.Header.Get("Date") == "" {
		t.Errorf("/body: %d, length %d, %d bytes, Date %q", resp.StatusCode, resp.ContentLength, len(body), resp.Header.Get("Date"))
	}
	resp, body = readResponse(t, br, "GET")
	if resp.StatusCode != 200 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || body != "one,two" || resp.Trailer.Get("X-Sum") != "7" {
		t.Errorf("/chunked: %d, %v, %q, trailer %v", resp.StatusCode, resp.TransferEncoding, body, resp.Trailer)
	}
	resp, body = readResponse(t, br, "GET")
	if resp.StatusCode != 204 || body != "" || resp.Header.Get("Content-Length") != "" || resp.TransferEncoding != nil {
		t.Errorf("/nocontent: %d, %q, %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = readResponse(t, br, "HEAD")
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 1024 {
		t.Errorf("HEAD /body: %d, %q, length %d", resp.StatusCode, body, resp.ContentLength)
	}
	resp, body = readResponse(t, br, "GET")
	if resp.StatusCode != 404 || body != "no route\n" || resp.ContentLength != int64(len("no route\n")) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("/missing: %d, %q, length %d, %v", resp.StatusCode, body, resp.ContentLength, resp.Header)
	}
	if resp.Close {
		t.Error("the stream is to stay open after /missing")
	}
}

// TestH1ServerHandsOff: requests the loop does not serve (HTTP/1.0, an
// Expect, a chunked upload, a head without Host, garbage) are answered by
// net/http on the same stream, after the loop served the ones before.
func TestH1ServerHandsOff(t *testing.T) {
	leakCheck(t)
	m := h1Mesh(t)
	for _, tc := range []struct {
		name, req string
		want      int
		body      string
	}{
		{"HTTP/1.0", "GET /body HTTP/1.0\r\nHost: reviews\r\n\r\n", 200, strings.Repeat("b", 1024)},
		{"Expect", "POST /echo HTTP/1.1\r\nHost: reviews\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", 200, "hi"},
		{"chunked upload", "POST /echo HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", 200, "hi"},
		{"no Host", "GET /body HTTP/1.1\r\n\r\n", 400, netHTTPAnswer(t, "GET /body HTTP/1.1\r\n\r\n")},
		{"two Hosts", "GET /body HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, netHTTPAnswer(t, "GET /body HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")},
		{"absolute form", "GET http://reviews/body HTTP/1.1\r\nHost: reviews\r\n\r\n", 200, strings.Repeat("b", 1024)},
		// net/http's answer to a malformed request line after a good
		// request (as the first bytes of a connection, with h2c enabled,
		// it waits for 24 bytes first).
		{"garbage", "GARBAGE\r\n\r\n", 400, "400 Bad Request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawStream(t, m)
			// One request the loop serves first, then the odd one.
			if _, err := io.WriteString(c, "GET /body HTTP/1.1\r\nHost: reviews\r\n\r\n"+tc.req); err != nil {
				t.Fatal(err)
			}
			if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 200 || len(body) != 1024 {
				t.Fatalf("first request: %d, %d bytes", resp.StatusCode, len(body))
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			for resp.StatusCode == http.StatusContinue {
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatal(err)
				}
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want || string(b) != tc.body {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, b, tc.want, tc.body)
			}
		})
	}
}

// TestH1ServerBadRequest: what net/http's server refuses after parsing,
// the loop refuses the same way, and closes the stream.
func TestH1ServerBadRequest(t *testing.T) {
	leakCheck(t)
	m := h1Mesh(t)
	for _, tc := range []struct{ name, req string }{
		{"malformed Host", "GET /body HTTP/1.1\r\nHost: a b\r\n\r\n"},
		{"bad header value", "GET /body HTTP/1.1\r\nHost: reviews\r\nX-Bad: a\x01b\r\n\r\n"},
		{"bad header name", "GET /body HTTP/1.1\r\nHost: reviews\r\nX Bad: ab\r\n\r\n"},
		{"bad request line", "GET /body HTTP/1.1 extra\r\nHost: reviews\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := netHTTPAnswer(t, tc.req)
			c, br := rawStream(t, m)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			resp, body := readResponse(t, br, "GET")
			if resp.StatusCode != 400 || body != want || !resp.Close || !strings.HasPrefix(want, "400 Bad Request") {
				t.Errorf("got %d %q (close %v), want 400 %q and close, as net/http", resp.StatusCode, body, resp.Close, want)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after the 400 the stream gave %v, want EOF", err)
			}
		})
	}
}

// TestH1ServerUnreadBody: a request body the handler leaves unread is
// drained when small (the stream serves the next request) and ends the
// stream when over 256 KiB.
func TestH1ServerUnreadBody(t *testing.T) {
	leakCheck(t)
	m := h1Mesh(t)
	small := strings.Repeat("x", 1000)
	c, br := rawStream(t, m)
	if _, err := io.WriteString(c, "POST /missing HTTP/1.1\r\nHost: reviews\r\nContent-Length: 1000\r\n\r\n"+small+"GET /body HTTP/1.1\r\nHost: reviews\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := readResponse(t, br, "POST"); resp.StatusCode != 404 {
		t.Fatalf("POST /missing: %d", resp.StatusCode)
	}
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 200 || len(body) != 1024 {
		t.Errorf("the request after a small unread body: %d, %d bytes", resp.StatusCode, len(body))
	}

	c, br = rawStream(t, m)
	big := 300 << 10
	go func() {
		_, _ = io.WriteString(c, "POST /missing HTTP/1.1\r\nHost: reviews\r\nContent-Length: 307200\r\n\r\n")
		_, _ = c.Write(make([]byte, big))
	}()
	if resp, _ := readResponse(t, br, "POST"); resp.StatusCode != 404 {
		t.Fatalf("POST /missing: %d", resp.StatusCode)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after an unread 300 KiB body the stream gave %v, want EOF", err)
	}
}

// TestH1ServerDrainClosesIdle: at the drain an idle keep-alive stream is
// closed at once and Serve returns well before the drain timeout.
func TestH1ServerDrainClosesIdle(t *testing.T) {
	leakCheck(t)
	m := h1Mesh(t)
	c, br := rawStream(t, m)
	if _, err := io.WriteString(c, "GET /body HTTP/1.1\r\nHost: reviews\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := readResponse(t, br, "GET"); resp.StatusCode != 200 {
		t.Fatalf("GET /body: %d", resp.StatusCode)
	}
	start := time.Now()
	m.cancel()
	if _, err := br.ReadByte(); err == nil {
		t.Error("the idle stream got bytes at the drain, want its end")
	}
	select {
	case err := <-m.served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Serve did not return before the drain timeout with only an idle stream")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("drain took %v", d)
	}
	m.cancel = nil
	_ = m.proxy.Close()
}

// netHTTPAnswer is the body of net/http's server's answer to a raw
// request, the reference for how bad requests are refused.
func netHTTPAnswer(t *testing.T, req string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("net/http's answer to %q: %v", req, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestParseRequestHeadMatchesNetHTTP: for every head it takes, the fast
// parser gives what http.ReadRequest (and net/http's server checks) give;
// the simple heads it must take, it takes; the others it declines.
func TestParseRequestHeadMatchesNetHTTP(t *testing.T) {
	heads := []struct {
		head string
		take bool
	}{
		{"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: fortio.org/fortio-1.65.0\r\nAccept: */*\r\n\r\n", true},
		{"POST /echo HTTP/1.1\r\nhost: reviews\r\ncontent-length: 12\r\ncontent-type: text/plain\r\nx-multi: a\r\nX-Multi: b\r\n\r\n", true},
		{"GET / HTTP/1.1\nHost: reviews\nX-Lf: only\n\n", true},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: keep-alive, Close\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nPragma: no-cache\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nX-Space:   padded value \t \r\nX-Empty:\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nX-Obs: caf\xc3\xa9\r\n\r\n", true},
		{"DELETE /x HTTP/1.1\r\nHost: reviews\r\nContent-Length: 0\r\n\r\n", true},
		// Declined: net/http decides.
		{"GET / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nContent-Length: +1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nContent-Length: x\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nX-Fold: a\r\n b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nX Bad: a\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nX-Bad: a\x01\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: reviews\r\nTrailer: X-T\r\n\r\n", false},
		{"GET / HTTP/1.0\r\nHost: reviews\r\n\r\n", false},
		{"G(T / HTTP/1.1\r\nHost: reviews\r\n\r\n", false},
		{"GET http://reviews/ HTTP/1.1\r\nHost: reviews\r\n\r\n", false},
		// Targets: parsePlainTarget's, and ParseRequestURI's after it declined.
		{"GET /p? HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /a;b=c,d@e:f$g&h+i~j_k.l-m/?q=1&r=%2F#x HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /a%2Fb?c HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /a!b*c(d)'e HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /a?b?c HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET /a?? HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
		{"GET //x/y HTTP/1.1\r\nHost: reviews\r\n\r\n", true},
	}
	for _, tc := range heads {
		var got *http.Request
		if pr := parseRequest(tc.head); pr != nil {
			got = &pr.req
		}
		if (got != nil) != tc.take {
			t.Errorf("%q: taken %v, want %v", tc.head, got != nil, tc.take)
		}
		if got == nil {
			continue
		}
		want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.head)))
		if err != nil {
			t.Errorf("%q: taken, but http.ReadRequest refuses it: %v", tc.head, err)
			continue
		}
		if why := checkRequest(want); why != "" {
			t.Errorf("%q: taken, but net/http's server refuses it: %s", tc.head, why)
		}
		if got.Method != want.Method || *got.URL != *want.URL || got.RequestURI != want.RequestURI ||
			got.Proto != want.Proto || got.ProtoMajor != want.ProtoMajor || got.ProtoMinor != want.ProtoMinor ||
			got.Host != want.Host || got.ContentLength != want.ContentLength || got.Close != want.Close {
			t.Errorf("%q:\n got %s %s %s %s host %q len %d close %v\nwant %s %s %s %s host %q len %d close %v", tc.head,
				got.Method, got.URL, got.RequestURI, got.Proto, got.Host, got.ContentLength, got.Close,
				want.Method, want.URL, want.RequestURI, want.Proto, want.Host, want.ContentLength, want.Close)
		}
		if len(got.Header) != len(want.Header) {
			t.Errorf("%q: header %v, want %v", tc.head, got.Header, want.Header)
		}
		for k, v := range want.Header {
			if !slices.Equal(got.Header[k], v) {
				t.Errorf("%q: header %s = %q, want %q", tc.head, k, got.Header[k], v)
			}
		}
	}
}

// TestH1ServerRequestBodies: bodies of requests parsed by the fast parser
// reach the backend whole, on one keep-alive stream, between requests
// without a body.
func TestH1ServerRequestBodies(t *testing.T) {
	leakCheck(t)
	m := h1Mesh(t)
	c, br := rawStream(t, m)
	big := strings.Repeat("0123456789", 5000) // over one read of the buffer
	reqs := "POST /echo HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /body HTTP/1.1\r\nHost: reviews\r\n\r\n" +
		"PUT /echo HTTP/1.1\r\nHost: reviews\r\nContent-Length: " + itoa(len(big)) + "\r\n\r\n" + big
	go func() { _, _ = io.WriteString(c, reqs) }()
	if resp, body := readResponse(t, br, "POST"); resp.StatusCode != 200 || body != "hello" {
		t.Errorf("POST: %d %q", resp.StatusCode, body)
	}
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 200 || len(body) != 1024 {
		t.Errorf("GET: %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp, body := readResponse(t, br, "PUT"); resp.StatusCode != 200 || body != big {
		t.Errorf("PUT: %d, %d bytes, want %d", resp.StatusCode, len(body), len(big))
	}
}

// TestParseResponseMatchesNetHTTP: for every answer it takes, the fast
// parser gives what http.ReadResponse gives, body included, and leaves the
// reader at the same place; the simple answers it must take, it takes.
func TestParseResponseMatchesNetHTTP(t *testing.T) {
	get := &http.Request{Method: http.MethodGet}
	answers := []struct {
		head, body string
		req        *http.Request
		take       bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\r\n", "hello", get, true},
		{"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nx-multi: a\r\nX-Multi: b\r\nConnection: close\r\n\r\n", "", get, true},
		{"HTTP/1.1 404 \nContent-Length: 2\nPragma: no-cache\n\n", "no", get, true},
		{"HTTP/1.1 299 Custom\r\nContent-Length: 3\r\nX-Obs: caf\xc3\xa9\r\n\r\n", "abc", get, true},
		// Declined: http.ReadResponse reads them.
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", get, false},
		{"HTTP/1.1 200 OK\r\n\r\n", "till close", get, false},
		{"HTTP/1.1 204 No Content\r\n\r\n", "", get, false},
		{"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", "", get, false},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "", get, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "", &http.Request{Method: http.MethodHead}, false},
		{"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", "hello", get, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "hello", get, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Fold: a\r\n b\r\n\r\n", "hello", get, false},
		{"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\n", "hello", get, false},
	}
	const next = "NEXT"
	for _, tc := range answers {
		br := bufio.NewReader(strings.NewReader(tc.head + tc.body + next))
		_, _ = br.Peek(len(tc.head)) // the head is buffered, as parseAnswer needs
		var got *http.Response
		if a := parseAnswer(br, tc.req); a != nil {
			got = &a.resp
		}
		if (got != nil) != tc.take {
			t.Errorf("%q: taken %v, want %v", tc.head, got != nil, tc.take)
		}
		if got == nil {
			continue
		}
		gotBody, _ := io.ReadAll(got.Body)
		gotRest, _ := io.ReadAll(br)
		wbr := bufio.NewReader(strings.NewReader(tc.head + tc.body + next))
		want, err := http.ReadResponse(wbr, tc.req)
		if err != nil {
			t.Errorf("%q: taken, but http.ReadResponse refuses it: %v", tc.head, err)
			continue
		}
		wantBody, _ := io.ReadAll(want.Body)
		wantRest, _ := io.ReadAll(wbr)
		if got.Status != want.Status || got.StatusCode != want.StatusCode || got.Proto != want.Proto ||
			got.ContentLength != want.ContentLength || got.Close != want.Close || string(gotBody) != string(wantBody) || string(gotRest) != string(wantRest) {
			t.Errorf("%q:\n got %q %d %s len %d close %v body %q rest %q\nwant %q %d %s len %d close %v body %q rest %q", tc.head,
				got.Status, got.StatusCode, got.Proto, got.ContentLength, got.Close, gotBody, gotRest,
				want.Status, want.StatusCode, want.Proto, want.ContentLength, want.Close, wantBody, wantRest)
		}
		if len(got.Header) != len(want.Header) {
			t.Errorf("%q: header %v, want %v", tc.head, got.Header, want.Header)
		}
		for k, v := range want.Header {
			if !slices.Equal(got.Header[k], v) {
				t.Errorf("%q: header %s = %q, want %q", tc.head, k, got.Header[k], v)
			}
		}
	}
}

// TestParsePlainTarget: every target parsePlainTarget takes it parses as
// url.ParseRequestURI does, and it takes the common forms.
func TestParsePlainTarget(t *testing.T) {
	for _, tc := range []struct {
		target string
		take   bool
	}{
		{"/", true}, {"/a/b", true}, {"/a/b?x=1&y=2", true}, {"/p?", true}, {"/p?#f", true},
		{"/a;b=c,d@e:f$g&h+i~j_k.l-m", true}, {"//x", true}, {"/q?%zz", true}, {"/q?a=caf\xc3\xa9", true},
		{"/a%2Fb", false}, {"/a!b", false}, {"/a*b", false}, {"/(x)", false}, {"/a'b", false},
		{"/caf\xc3\xa9", false}, {"/a b", false}, {"/a?b?c", false}, {"/a??", false}, {"/q?a\x7f", false},
		{"/q?a b", false}, {"*", false}, {"http://x/", false}, {"", false}, {"?x", false},
	} {
		var u url.URL
		took := parsePlainTarget(tc.target, &u)
		if took != tc.take {
			t.Errorf("%q: taken %v, want %v", tc.target, took, tc.take)
		}
		if !took {
			if u != (url.URL{}) {
				t.Errorf("%q: declined but set %#v", tc.target, u)
			}
			continue
		}
		want, err := url.ParseRequestURI(tc.target)
		if err != nil {
			t.Errorf("%q: taken, but ParseRequestURI refuses it: %v", tc.target, err)
			continue
		}
		if u != *want {
			t.Errorf("%q: got %#v, want %#v", tc.target, u, *want)
		}
	}
}

// TestWriteStatusLine: the status lines made once are the ones built per
// answer, for known and unknown codes.
func TestWriteStatusLine(t *testing.T) {
	for code, want := range map[int]string{
		200: "HTTP/1.1 200 OK\r\n", 404: "HTTP/1.1 404 Not Found\r\n", 103: "HTTP/1.1 103 Early Hints\r\n",
		599: "HTTP/1.1 599 status code 599\r\n", 999: "HTTP/1.1 999 status code 999\r\n",
	} {
		var b strings.Builder
		bw := bufio.NewWriter(&b)
		writeStatusLine(bw, code)
		_ = bw.Flush()
		if b.String() != want {
			t.Errorf("writeStatusLine(%d) = %q, want %q", code, b.String(), want)
		}
	}
}

// TestWriteHeaderMatchesWriteSubset: writeHeader writes what
// http.Header.WriteSubset writes, byte for byte, for few and many names,
// with and without names to skip.
func TestWriteHeaderMatchesWriteSubset(t *testing.T) {
	small := http.Header{
		"Content-Type": {"text/plain"}, "X-Multi": {"b", "a"}, "X Bad": {"dropped"}, "X-Nl": {"a\r\nb", "c\nd"},
		"X-Pad": {"  padded\t "}, "X-Empty": {""}, "X-Nil": nil, "Trailer:Grpc-Status": {"0"}, "Host": {"h"},
	}
	large := http.Header{}
	for i := range 40 {
		large["X-H-"+itoa(39-i)] = []string{"v" + itoa(i)}
	}
	large["Host"] = []string{"h"}
	for name, h := range map[string]http.Header{"small": small, "large": large, "empty": {}} {
		for _, sk := range []struct {
			name    string
			skip    func(string) bool
			exclude map[string]bool
		}{
			{"none", nil, nil},
			{"request", requestExcluded, map[string]bool{"Host": true, "User-Agent": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true}},
			{"trailers", isTrailerPrefixed, map[string]bool{"Trailer:Grpc-Status": true}},
		} {
			var got, want strings.Builder
			bw := bufio.NewWriter(&got)
			writeHeader(bw, h, sk.skip)
			_ = bw.Flush()
			_ = h.WriteSubset(&want, sk.exclude)
			if got.String() != want.String() {
				t.Errorf("%s header, skipping %s:\n got %q\nwant %q", name, sk.name, got.String(), want.String())
			}
		}
	}
}
