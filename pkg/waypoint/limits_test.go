package waypoint

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

func TestTokenBucket(t *testing.T) {
	b, err := compileRateLimit(&waypointv1alpha1.LocalRateLimit{MaxTokens: 2, TokensPerFill: 1, FillInterval: durationpb.New(time.Second)}, "rate_limit", func(f, w string, a ...any) error { return configError("x", f, w, a...) })
	if err != nil {
		t.Fatal(err)
	}
	t0 := b.last
	steps := []struct {
		at   time.Duration
		want bool
	}{{0, true}, {0, true}, {100 * time.Millisecond, false}, {time.Second, true}, {time.Second + 10*time.Millisecond, false}, {5 * time.Second, true}, {5 * time.Second, true}, {5 * time.Second, false}}
	for i, s := range steps {
		got, wait := b.take(t0.Add(s.at))
		if got != s.want {
			t.Errorf("step %d at %v: take = %v (wait %v), want %v", i, s.at, got, wait, s.want)
		}
		if !got && (wait <= 0 || wait > time.Second) {
			t.Errorf("step %d: wait %v, want within the fill interval", i, wait)
		}
	}
	if _, err := compileRateLimit(&waypointv1alpha1.LocalRateLimit{MaxTokens: 1}, "rate_limit", func(f, w string, a ...any) error { return configError("x", f, w, a...) }); err == nil {
		t.Error("a rate limit without fill_interval compiled")
	}
}

// TestRateLimitAndFaults: local rate limits answer 429 with retry-after;
// fault aborts answer without reaching the backend; delays delay.
func TestRateLimitAndFaults(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	p := m.addPod("reviews-a", reviews, text("a"))
	prefix := func(v string) []*waypointv1alpha1.HTTPMatch {
		return []*waypointv1alpha1.HTTPMatch{{Path: &waypointv1alpha1.PathMatch{Type: waypointv1alpha1.PathMatch_PREFIX, Value: v}}}
	}
	abort := defaultRoute(reviews)
	abort.Name, abort.Matches = "abort", prefix("/abort")
	abort.Fault = &waypointv1alpha1.Fault{Abort: &waypointv1alpha1.Fault_Abort{HttpStatus: 418, FractionPerMillion: 1_000_000}}
	delay := defaultRoute(reviews)
	delay.Name, delay.Matches = "delay", prefix("/delay")
	delay.Fault = &waypointv1alpha1.Fault{Delay: &waypointv1alpha1.Fault_Delay{FixedDelay: durationpb.New(150 * time.Millisecond), FractionPerMillion: 1_000_000}}
	limited := defaultRoute(reviews)
	limited.Name, limited.Matches = "limited", prefix("/limited")
	limited.RateLimit = &waypointv1alpha1.LocalRateLimit{Name: "demo/route", MaxTokens: 2, TokensPerFill: 1, FillInterval: durationpb.New(time.Hour)}
	sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, abort, delay, limited, defaultRoute(reviews))
	sc.RateLimit = &waypointv1alpha1.LocalRateLimit{Name: "demo/svc", MaxTokens: 6, TokensPerFill: 1, FillInterval: durationpb.New(time.Hour)}
	m.setRoutes(sc)
	c := m.httpClient(false)

	if code, _, _ := get(t, c, "http://10.0.0.1/abort", nil); code != 418 || p.hits.Load() != 0 {
		t.Errorf("abort: %d with %d backend hits, want 418 and none", code, p.hits.Load())
	}
	start := time.Now()
	if code, _, _ := get(t, c, "http://10.0.0.1/delay", nil); code != 200 || time.Since(start) < 150*time.Millisecond {
		t.Errorf("delay: %d after %v, want 200 after at least 150ms", code, time.Since(start))
	}
	for i, want := range []int{200, 200, 429} {
		resp, err := c.Get("http://10.0.0.1/limited")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || (want == 429 && resp.Header.Get("Retry-After") == "") {
			t.Errorf("limited request %d: %d retry-after %q, want %d", i, resp.StatusCode, resp.Header.Get("Retry-After"), want)
		}
	}
	// 6 service tokens: abort, delay, 3x limited took 5 (the route's 429
	// came after the service's check), one is left.
	for i, want := range []int{200, 429, 429} {
		if code, _, _ := get(t, c, "http://10.0.0.1/", nil); code != want {
			t.Errorf("service-limited request %d: %d, want %d", i, code, want)
		}
	}
	if got := m.requestCount(map[string]string{"response_code": "429", "response_flags": "RL"}); got != 3 {
		t.Errorf("429 RL count %v, want 3", got)
	}
	if got := m.requestCount(map[string]string{"response_code": "418", "response_flags": "FI"}); got != 1 {
		t.Errorf("418 FI count %v, want 1", got)
	}
}
