package waypoint

import (
	"net/http"
	"strings"
	"testing"

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
}
