package waypoint

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"istio.io/istio/pkg/workloadapi"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

func answer(code int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	})
}

// TestRetriesMaskFailingEndpoint: one of two endpoints answers 503 to
// everything, so half the requests fail without retries; with attempts 3
// on 503 at least 99.9% succeed, including requests with a body.
func TestRetriesMaskFailingEndpoint(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addPod("reviews-good", reviews, text("ok"))
	bad := m.addPod("reviews-bad", reviews, answer(503, "down"))
	route := defaultRoute(reviews)
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)

	failures := 0
	for range 200 {
		if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code != 200 {
			failures++
		}
	}
	if failures < 60 || failures > 140 {
		t.Fatalf("without retries %d of 200 failed, want about half", failures)
	}

	route.Retry = &waypointv1alpha1.Retry{Codes: []uint32{503}, Attempts: 3, Backoff: durationpb.New(time.Millisecond)}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	bad.hits.Store(0)
	const n = 2000
	var ok atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				var body io.Reader
				method := http.MethodGet
				if i%2 == 0 {
					method, body = http.MethodPost, bytes.NewReader([]byte(fmt.Sprintf("request %d", i)))
				}
				req, _ := http.NewRequestWithContext(t.Context(), method, "http://10.0.0.1/", body)
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else if i < 100 {
					t.Logf("%s: %d %s", method, resp.StatusCode, resp.Header.Get("X-Backend"))
				}
			}
		})
	}
	wg.Wait()
	if rate := float64(ok.Load()) / n; rate < 0.999 {
		t.Errorf("with retries %d of %d succeeded (%.2f%%), want >= 99.9%%", ok.Load(), n, rate*100)
	}
	if bad.hits.Load() == 0 {
		t.Error("the failing endpoint got no traffic: the test proves nothing")
	}
}

// TestRetryOnlyReplayable: a body larger than MaxReplayBody is streamed
// and not retried.
func TestRetryOnlyReplayable(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{maxReplayBody: 16})
	m.addService(reviews, "10.0.0.1")
	bad := m.addPod("reviews-bad", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(503)
	}))
	route := defaultRoute(reviews)
	route.Retry = &waypointv1alpha1.Retry{Codes: []uint32{503}, Attempts: 2, Backoff: durationpb.New(time.Millisecond)}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	send := func(body string) int {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://10.0.0.1/", bytes.NewReader([]byte(body)))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		name      string
		body      string
		wantTries int64
	}{
		{"small body is retried", "0123456789", 3},
		{"large body is not", "0123456789012345678901234567890123456789", 1},
	}
	for _, tc := range tests {
		bad.hits.Store(0)
		if code := send(tc.body); code != 503 {
			t.Errorf("%s: status %d, want 503", tc.name, code)
		}
		if got := bad.hits.Load(); got != tc.wantTries {
			t.Errorf("%s: backend saw %d tries, want %d", tc.name, got, tc.wantTries)
		}
	}
}

// TestRequestTimeout: a backend slower than the route's request timeout
// gets the client a 504 on time.
func TestRequestTimeout(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	release := make(chan struct{})
	m.addPod("reviews-slow", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release) })
	route := defaultRoute(reviews)
	route.RequestTimeout = durationpb.New(200 * time.Millisecond)
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	start := time.Now()
	code, _, _ := get(t, c, "http://10.0.0.1/", nil)
	took := time.Since(start)
	if code != http.StatusGatewayTimeout {
		t.Errorf("status %d, want 504", code)
	}
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("504 after %v, want about 200ms", took)
	}
}

// TestBackendRequestTimeoutRetried: a try that outlives
// backend_request_timeout is retried on 504, and the next endpoint answers.
func TestBackendRequestTimeoutRetried(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the pods stop
	// The slow pod answers only at the end of the test, whatever happens
	// to its connection.
	m.addPod("reviews-slow", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	m.addPod("reviews-fast", reviews, text("fast"))
	route := defaultRoute(reviews)
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	// Warm the tunnel to the fast pod (the first endpoint) so that the
	// try timeout below measures the answer, not a handshake under -race.
	if code, from, _ := get(t, c, "http://10.0.0.1/", nil); code != 200 || from != "reviews-fast" {
		t.Fatalf("warm-up: %d from %q", code, from)
	}
	route.BackendRequestTimeout = durationpb.New(300 * time.Millisecond)
	route.Retry = &waypointv1alpha1.Retry{Codes: []uint32{504}, Attempts: 1, Backoff: durationpb.New(time.Millisecond)}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	for i := range 4 {
		if code, from, _ := get(t, c, "http://10.0.0.1/", nil); code != 200 || from != "reviews-fast" {
			t.Errorf("request %d: %d from %q, want 200 from reviews-fast", i, code, from)
		}
	}
}

// TestMirror: the mirror backend receives a copy of every request (with
// its body) while the client sees only the primary's answer.
func TestMirror(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	const shadow = "shadow.demo.svc.cluster.local"
	m.addService(reviews, "10.0.0.1")
	m.addService(shadow, "10.0.0.9")
	var mu sync.Mutex
	var mirrored []string
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "primary:"+string(b))
	}))
	m.addPod("shadow-a", shadow, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		mirrored = append(mirrored, r.Method+" "+r.URL.Path+" "+string(b)+" "+r.Header.Get("X-Test"))
		mu.Unlock()
		time.Sleep(50 * time.Millisecond) // a slow mirror must not delay the primary
		w.Header().Set("X-Mirror", "leaked")
		_, _ = io.WriteString(w, "mirror")
	}))
	route := defaultRoute(reviews)
	route.Filters = []*waypointv1alpha1.HTTPFilter{{Kind: &waypointv1alpha1.HTTPFilter_RequestMirror{RequestMirror: &waypointv1alpha1.Mirror{
		Backend: &waypointv1alpha1.Backend{Namespace: testNS, Hostname: shadow, Port: 80}, FractionPerMillion: 1_000_000}}}}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	const n = 10
	for i := range n {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://10.0.0.1/p", bytes.NewReader([]byte(fmt.Sprint(i))))
		req.Header.Set("X-Test", "yes")
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != fmt.Sprintf("primary:%d", i) || resp.Header.Get("X-Mirror") != "" || resp.Header.Get("X-Backend") != "reviews-a" {
			t.Errorf("client got %q (X-Mirror %q, from %q), want only the primary's answer", b, resp.Header.Get("X-Mirror"), resp.Header.Get("X-Backend"))
		}
		if d := time.Since(start); d > 45*time.Millisecond {
			t.Logf("request %d took %v (the mirror sleeps 50ms)", i, d)
		}
	}
	waitFor(t, 5*time.Second, "mirror copies", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(mirrored) != n {
			return fmt.Errorf("%d copies, want %d", len(mirrored), n)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for _, got := range mirrored {
		var i int
		if _, err := fmt.Sscanf(got, "POST /p %d yes", &i); err != nil {
			t.Errorf("mirror got %q, want \"POST /p <i> yes\"", got)
		}
	}
}

// TestEndpointSelection: unhealthy workloads get no traffic; an endpoint
// whose tunnel cannot be opened (nothing listens, or it presents another
// identity than its workload's) fails the request with 503 unless the
// route retries connect failures, which then always reach the good one.
func TestEndpointSelection(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	good := m.addPod("reviews-good", reviews, text("ok"))
	// No tunnel at all.
	m.registerPod(&pod{name: "reviews-gone", ip: netip.AddrFrom4([4]byte{127, 0, 0, byte(m.nextIP.Add(1))}), appPort: 1}, reviews)
	// A tunnel whose certificate is not the workload's identity.
	impostor := netip.AddrFrom4([4]byte{127, 0, 0, byte(m.nextIP.Add(1))})
	other, err := m.ca.SVID(testNS, "someone-else")
	if err != nil {
		t.Fatal(err)
	}
	m.startTunnel(impostor, other, nil)
	m.registerPod(&pod{name: "reviews-impostor", ip: impostor, appPort: good.appPort}, reviews)
	// Unhealthy: must never be picked.
	sick := m.addPod("reviews-sick", reviews, text("sick"))
	m.mu.Lock()
	for _, w := range m.workloads {
		if w.GetName() == "reviews-sick" {
			w.Status = workloadapi.WorkloadStatus_UNHEALTHY
		}
	}
	m.mu.Unlock()
	m.publish()

	route := defaultRoute(reviews)
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	codes := map[int]int{}
	for range 30 {
		code, _, _ := get(t, c, "http://10.0.0.1/", nil)
		codes[code]++
	}
	if codes[200] != 10 || codes[503] != 20 {
		t.Errorf("without retries: %v, want 10x200 (good) and 20x503 (gone, impostor)", codes)
	}
	if got := m.requestCount(map[string]string{"response_code": "503", "response_flags": "UF"}); got != 20 {
		t.Errorf("503 UF count %v, want 20", got)
	}

	route.Retry = &waypointv1alpha1.Retry{Attempts: 2, Backoff: durationpb.New(time.Millisecond)}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	for i := range 30 {
		if code, from, _ := get(t, c, "http://10.0.0.1/", nil); code != 200 || from != "reviews-good" {
			t.Errorf("request %d with connect retries: %d from %q, want 200 from reviews-good", i, code, from)
		}
	}
	if sick.hits.Load() != 0 {
		t.Errorf("the unhealthy workload got %d requests", sick.hits.Load())
	}
}

// TestSubsetsAndBalancers: a backend with a DestinationRule subset reaches
// only the subset's workloads, an undeclared subset gets 503, and the
// RANDOM and LEAST_REQUEST balancers spread requests over the subset.
func TestSubsetsAndBalancers(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	a := m.addPod("reviews-a", reviews, text("a"))
	b := m.addPod("reviews-b", reviews, text("b"))
	c := m.addPod("reviews-c", reviews, text("c"))
	uid := func(p *pod) string { return "cluster/pod/" + testNS + "/" + p.name }
	to := func(subset string) *waypointv1alpha1.HTTPRoute {
		wb := backend(reviews, 1)
		wb.Backend.Subset = subset
		return &waypointv1alpha1.HTTPRoute{Name: "to-" + subset,
			Matches:  []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: "/" + subset}}},
			Backends: []*waypointv1alpha1.WeightedBackend{wb}}
	}
	for _, lb := range []waypointv1alpha1.TrafficPolicy_LoadBalancer{waypointv1alpha1.TrafficPolicy_ROUND_ROBIN, waypointv1alpha1.TrafficPolicy_RANDOM, waypointv1alpha1.TrafficPolicy_LEAST_REQUEST} {
		t.Run(lb.String(), func(t *testing.T) {
			sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, to("v1"), to("v2"), to("v3"))
			sc.BackendPolicies = []*waypointv1alpha1.BackendPolicy{{Namespace: testNS, Hostname: reviews, Subsets: []*waypointv1alpha1.Subset{
				{Name: "v1", WorkloadUids: []string{uid(a), uid(b)}, Policy: &waypointv1alpha1.TrafficPolicy{LoadBalancer: lb}},
				{Name: "v2", WorkloadUids: []string{uid(c)}},
			}}}
			m.setRoutes(sc)
			cl := m.httpClient(false)
			a.hits.Store(0)
			b.hits.Store(0)
			c.hits.Store(0)
			for range 40 {
				if code, _, _ := get(t, cl, "http://10.0.0.1/v1", nil); code != 200 {
					t.Fatalf("GET /v1: %d", code)
				}
			}
			if c.hits.Load() != 0 || a.hits.Load() < 5 || b.hits.Load() < 5 {
				t.Errorf("subset v1 over 40 requests: a %d, b %d, c %d; want a and b only, both used", a.hits.Load(), b.hits.Load(), c.hits.Load())
			}
			for range 5 {
				if code, from, _ := get(t, cl, "http://10.0.0.1/v2", nil); code != 200 || from != "reviews-c" {
					t.Errorf("GET /v2: %d from %q, want 200 from reviews-c", code, from)
				}
			}
			if code, _, _ := get(t, cl, "http://10.0.0.1/v3", nil); code != 503 {
				t.Errorf("GET /v3 (undeclared subset): %d, want 503", code)
			}
		})
	}
}

// TestCircuitBreakingAndOutliers: a connection-pool limit answers 503 with
// x-envoy-overloaded at once; outlier detection ejects an endpoint after
// consecutive 5xx so that later requests avoid it.
func TestCircuitBreakingAndOutliers(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addService(reviewsV1, "10.0.0.2")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	entered := make(chan struct{}, 10)
	m.addPod("reviews-v1-slow", reviewsV1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	}))
	good := m.addPod("reviews-good", reviews, text("ok"))
	bad := m.addPod("reviews-bad", reviews, answer(500, "boom"))

	slow := defaultRoute(reviewsV1)
	slow.Name = "slow"
	slow.Matches = []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: "/slow"}}}
	sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, slow, defaultRoute(reviews))
	sc.BackendPolicies = []*waypointv1alpha1.BackendPolicy{
		{Namespace: testNS, Hostname: reviewsV1, Policy: &waypointv1alpha1.TrafficPolicy{ConnectionPool: &waypointv1alpha1.ConnectionPool{
			MaxConnections: 1, Http1MaxPendingRequests: 1}}},
		{Namespace: testNS, Hostname: reviews, Policy: &waypointv1alpha1.TrafficPolicy{OutlierDetection: &waypointv1alpha1.OutlierDetection{
			Consecutive_5XxErrors: 2, BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: 50}}},
	}
	m.setRoutes(sc)
	c := m.httpClient(false)

	// Two requests fill the pool: one on the connection, at the backend,
	// and one pending, which must not reach the backend while the first
	// is there. The third is refused at once.
	results := make(chan int, 2)
	for range 2 {
		go func() {
			code, _, _, _ := tryGet(t, c, "http://10.0.0.1/slow", nil)
			results <- code
		}()
	}
	<-entered
	ts := m.proxy.target(backendRef{key: testNS + "/" + reviewsV1})
	deadline := time.Now().Add(10 * time.Second)
	for ts.inflight.Load() < 2 || queued(ts) < 1 { // the second request is on its way to the queue
		select {
		case <-entered:
			t.Fatal("the second request reached the backend while the first was there (maxConnections: 1)")
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second request never waited for the connection (%d in flight)", ts.inflight.Load())
		}
	}
	select {
	case <-entered:
		t.Fatal("the pending request reached the backend while the first was there (maxConnections: 1)")
	case <-time.After(100 * time.Millisecond):
	}
	resp, err := c.Get("http://10.0.0.1/slow")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("X-Envoy-Overloaded") != "true" {
		t.Errorf("third request: %d overloaded=%q, want 503 with x-envoy-overloaded", resp.StatusCode, resp.Header.Get("X-Envoy-Overloaded"))
	}
	release <- struct{}{}
	<-entered // the pending request, once the first is done
	release <- struct{}{}
	for range 2 {
		if code := <-results; code != 200 {
			t.Errorf("request within the pool: %d, want 200", code)
		}
	}

	// Outliers: the bad endpoint is ejected after two 500s.
	codes := map[int]int{}
	for range 20 {
		code, _, _ := get(t, c, "http://10.0.0.1/", nil)
		codes[code]++
	}
	if codes[500] != 2 || bad.hits.Load() != 2 || good.hits.Load() != 18 {
		t.Errorf("with outlier detection: %v, bad hit %d times, good %d; want exactly 2 failures before the ejection", codes, bad.hits.Load(), good.hits.Load())
	}
}

// queued is the number of requests waiting for a connection of ts.
func queued(ts *targetState) int {
	ts.connMu.Lock()
	defer ts.connMu.Unlock()
	return len(ts.queue)
}

// TestLeastRequestAcrossSnapshots: LEAST_REQUEST keeps counting the
// requests in flight on an endpoint when the Address state changes (any
// workload of the cluster coming or going does), so a slow endpoint
// holding requests stays the less likely pick: with 3 requests held there
// it wins only when both random picks are it (1/4), not on every tie
// (1/2) as with counts started afresh.
func TestLeastRequestAcrossSnapshots(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	const held = 3
	release := make(chan struct{})
	entered := make(chan struct{}, held)
	var slowHits atomic.Int64
	m.addPod("reviews-slow", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slowHits.Add(1) <= held {
			entered <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "slow")
	}))
	m.addPod("reviews-fast", reviews, text("fast"))
	sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews))
	sc.BackendPolicies = []*waypointv1alpha1.BackendPolicy{{Namespace: testNS, Hostname: reviews,
		Policy: &waypointv1alpha1.TrafficPolicy{LoadBalancer: waypointv1alpha1.TrafficPolicy_LEAST_REQUEST}}}
	m.setRoutes(sc)
	c := m.httpClient(false)

	// Requests until 3 are held at the slow endpoint.
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	for got := 0; got < held; {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _, _ = tryGet(t, c, "http://10.0.0.1/", nil)
		}()
		select {
		case <-entered:
			got++
		case <-time.After(20 * time.Millisecond):
		}
	}
	m.publish() // a new Address snapshot, same endpoints

	const n = 200
	before := slowHits.Load()
	for range n {
		if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code != 200 {
			t.Fatalf("GET: %d", code)
		}
	}
	if got := slowHits.Load() - before; got > n*3/8 {
		t.Errorf("the endpoint holding %d requests got %d of %d new ones after a snapshot change, want about a quarter", held, got, n)
	}
	once.Do(func() { close(release) })
}

// TestEjectionBackoff: the k-th ejection in a row lasts base x k up to
// Envoy's max_ejection_time (300 s, or base when longer), and each
// interval a host spends in rotation lowers k by one.
func TestEjectionBackoff(t *testing.T) {
	od := &outlierPolicy{baseEjection: 10 * time.Second, interval: time.Second}
	for _, c := range []struct {
		name string
		base time.Duration
		k    int
		want time.Duration
	}{
		{"first", 10 * time.Second, 1, 10 * time.Second},
		{"second", 10 * time.Second, 2, 20 * time.Second},
		{"capped", 10 * time.Second, 40, 300 * time.Second},
		{"base over the cap", 400 * time.Second, 2, 400 * time.Second},
	} {
		p := *od
		p.baseEjection = c.base
		if got := p.ejectionTime(c.k); got != c.want {
			t.Errorf("%s: ejection %d of base %s lasts %s, want %s", c.name, c.k, c.base, got, c.want)
		}
	}

	t0 := time.Unix(1000, 0)
	h := &hostState{ejections: 3, ejectedUntil: t0}
	for _, step := range []struct {
		name string
		at   time.Duration // after t0
		want int
	}{
		{"still ejected", -time.Second, 3},
		{"readmitted, no interval yet", 500 * time.Millisecond, 3},
		{"one interval in rotation", 1500 * time.Millisecond, 2},
		{"counted from the last decay", 2200 * time.Millisecond, 1},
		{"then to zero", 10 * time.Second, 0},
	} {
		h.decay(t0.Add(step.at), od.interval)
		if h.ejections != step.want {
			t.Errorf("%s: multiplier %d, want %d", step.name, h.ejections, step.want)
		}
	}
}

// TestMirrorBodyIntact: a mirror sends the body of its own request even
// while later requests reuse pooled body buffers (a mirror's copy leaves
// after the primary's answer, from its own goroutine, so its buffer must
// not go back to the pool with the request).
func TestMirrorBodyIntact(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	const shadow = "shadow.demo.svc.cluster.local"
	m.addService(reviews, "10.0.0.1")
	m.addService(shadow, "10.0.0.9")
	body := func(id string) string { return strings.Repeat(id+";", 2000/(len(id)+1)) }
	var bad, mirrored atomic.Int64
	check := func(r *http.Request) bool {
		b, _ := io.ReadAll(r.Body)
		return string(b) == body(r.Header.Get("X-Id"))
	}
	m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !check(r) {
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	m.addPod("shadow-a", shadow, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !check(r) {
			bad.Add(1)
		}
		mirrored.Add(1)
	}))
	route := defaultRoute(reviews)
	route.Filters = []*waypointv1alpha1.HTTPFilter{{Kind: &waypointv1alpha1.HTTPFilter_RequestMirror{RequestMirror: &waypointv1alpha1.Mirror{
		Backend: &waypointv1alpha1.Backend{Namespace: testNS, Hostname: shadow, Port: 80}, FractionPerMillion: 1_000_000}}}}
	m.setRoutes(serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route))
	c := m.httpClient(false)
	const workers, each = 4, 40
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("%d-%d", w, i)
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://10.0.0.1/p", strings.NewReader(body(id)))
				req.Header.Set("X-Id", id)
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("request %s: primary got another body (status %d)", id, resp.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	// Mirrors beyond the waypoint's in-flight bound are dropped: wait for
	// the ones sent, then count.
	waitFor(t, 5*time.Second, "mirror copies", func() error {
		if n := mirrored.Load(); n == 0 {
			return fmt.Errorf("no copy yet")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := bad.Load(); n > 0 {
		t.Errorf("%d of %d mirrored copies carried another request's body", n, mirrored.Load())
	}
}
