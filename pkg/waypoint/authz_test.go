package waypoint

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/hbone"
)

type ap = waypointv1alpha1.AuthorizationPolicy

func allow(rules ...*waypointv1alpha1.AuthorizationRule) *ap {
	return &ap{Name: "demo/allow", Action: waypointv1alpha1.AuthorizationPolicy_ALLOW, Rules: rules}
}

func deny(rules ...*waypointv1alpha1.AuthorizationRule) *ap {
	return &ap{Name: "demo/deny", Action: waypointv1alpha1.AuthorizationPolicy_DENY, Rules: rules}
}

func from(principals ...string) *waypointv1alpha1.AuthorizationRule {
	return &waypointv1alpha1.AuthorizationRule{From: []*waypointv1alpha1.AuthorizationSource{{Principals: principals}}}
}

func TestAuthorize(t *testing.T) {
	sleep := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/sleep")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/curl")
	get := func(target string, hdr ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, target, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	tests := []struct {
		name     string
		policies []*ap
		peer     spiffeid.ID
		req      *http.Request // nil: L4
		want     bool
	}{
		{"no policy allows", nil, sleep, get("/"), true},
		{"allow by principal", []*ap{allow(from("cluster.local/ns/demo/sa/sleep"))}, sleep, get("/"), true},
		{"allow other principal denies", []*ap{allow(from("cluster.local/ns/demo/sa/sleep"))}, other, get("/"), false},
		{"allow without rules matches nothing", []*ap{allow()}, sleep, get("/"), false},
		{"deny without rules matches nothing", []*ap{deny()}, sleep, get("/"), true},
		{"empty rule matches all", []*ap{deny(&waypointv1alpha1.AuthorizationRule{})}, sleep, get("/"), false},
		{"deny wins over allow", []*ap{allow(from("*")), deny(from("*/ns/demo/sa/sleep"))}, sleep, get("/"), false},
		{"suffix and prefix", []*ap{allow(from("*/sa/curl"))}, other, get("/"), true},
		{"namespaces and not", []*ap{allow(&waypointv1alpha1.AuthorizationRule{From: []*waypointv1alpha1.AuthorizationSource{
			{Namespaces: []string{"*"}, NotNamespaces: []string{"other"}}}})}, other, get("/"), false},
		{"path and method", []*ap{allow(&waypointv1alpha1.AuthorizationRule{To: []*waypointv1alpha1.AuthorizationOperation{
			{Methods: []string{"GET"}, Paths: []string{"/api/*"}}}})}, sleep, get("/api/x"), true},
		{"path not matching", []*ap{allow(&waypointv1alpha1.AuthorizationRule{To: []*waypointv1alpha1.AuthorizationOperation{
			{Methods: []string{"GET"}, Paths: []string{"/api/*"}}}})}, sleep, get("/admin"), false},
		{"host with port", []*ap{allow(&waypointv1alpha1.AuthorizationRule{To: []*waypointv1alpha1.AuthorizationOperation{
			{Hosts: []string{"Reviews"}}}})}, sleep, get("http://reviews:9080/"), true},
		{"port", []*ap{deny(&waypointv1alpha1.AuthorizationRule{To: []*waypointv1alpha1.AuthorizationOperation{{Ports: []uint32{80}}}})}, sleep, get("/"), false},
		{"header condition", []*ap{deny(&waypointv1alpha1.AuthorizationRule{When: []*waypointv1alpha1.AuthorizationCondition{
			{Key: "request.headers[x-token]", Values: []string{"bad*"}}}})}, sleep, get("/", "X-Token", "bad1"), false},
		{"header condition absent", []*ap{deny(&waypointv1alpha1.AuthorizationRule{When: []*waypointv1alpha1.AuthorizationCondition{
			{Key: "request.headers[x-token]", Values: []string{"bad*"}}}})}, sleep, get("/"), true},
		{"L4 allow with http fields matches nothing", []*ap{allow(&waypointv1alpha1.AuthorizationRule{To: []*waypointv1alpha1.AuthorizationOperation{
			{Methods: []string{"GET"}}}})}, sleep, nil, false},
		{"L4 deny with http fields applies its L4 part", []*ap{deny(&waypointv1alpha1.AuthorizationRule{
			From: []*waypointv1alpha1.AuthorizationSource{{Principals: []string{"*/sa/sleep"}}},
			To:   []*waypointv1alpha1.AuthorizationOperation{{Methods: []string{"POST"}}}})}, sleep, nil, false},
		{"L4 by principal", []*ap{allow(from("cluster.local/ns/demo/sa/sleep"))}, sleep, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews))
			sc.Authorization = tc.policies
			s, err := compile(testNS+"/"+reviews, sc)
			if err != nil {
				t.Fatal(err)
			}
			got, by := authorize(s.authz, newAuthzRequest(tc.peer, 80, tc.req))
			if got != tc.want {
				t.Errorf("authorize = %v (%s), want %v", got, by, tc.want)
			}
		})
	}
}

func TestAuthorizeRejectsUnknownKey(t *testing.T) {
	sc := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews))
	sc.Authorization = []*ap{deny(&waypointv1alpha1.AuthorizationRule{When: []*waypointv1alpha1.AuthorizationCondition{{Key: "request.auth.claims[iss]"}}})}
	if _, err := compile(testNS+"/"+reviews, sc); err == nil || !strings.Contains(err.Error(), "authorization[0].rules[0].when[0].key") {
		t.Errorf("compile error %v, want one naming authorization[0].rules[0].when[0].key", err)
	}
}

// TestAuthorizationEnforced: a DENY policy answers 403 on HTTP ports and
// refuses the tunnel (401) on TCP ports.
func TestAuthorizationEnforced(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	const db = "db.demo.svc.cluster.local"
	m.addService(reviews, "10.0.0.1")
	m.addService(db, "10.0.0.6")
	m.addPod("reviews-a", reviews, text("a"))
	m.addTCPPod("db-a", db)
	web := serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, defaultRoute(reviews))
	web.Authorization = []*ap{deny(&waypointv1alpha1.AuthorizationRule{To: []*waypointv1alpha1.AuthorizationOperation{{Paths: []string{"/admin*"}}}})}
	tcp := &waypointv1alpha1.ServiceConfig{Namespace: testNS, Hostname: db, Waypoints: []string{waypointName},
		Ports:         []*waypointv1alpha1.Port{{Port: 80, Protocol: waypointv1alpha1.Protocol_TCP}},
		Authorization: []*ap{allow(from("cluster.local/ns/demo/sa/someone-else"))}}
	m.setRoutes(web, tcp)
	c := m.httpClient(false)
	if code, _, body := get(t, c, "http://10.0.0.1/admin/x", nil); code != 403 || !strings.Contains(body, "RBAC: access denied") {
		t.Errorf("GET /admin/x: %d %q, want 403 RBAC: access denied", code, body)
	}
	if code, _, _ := get(t, c, "http://10.0.0.1/public", nil); code != 200 {
		t.Errorf("GET /public: %d, want 200", code)
	}
	if got := m.requestCount(map[string]string{"response_code": "403", "response_flags": "RBAC"}); got != 1 {
		t.Errorf("403 RBAC count %v, want 1", got)
	}
	conn, err := m.tunnel(t.Context(), "10.0.0.6:80")
	if conn != nil {
		conn.Close()
	}
	if hbone.StatusOf(err) != 401 {
		t.Errorf("CONNECT to the TCP service: %v, want 401", err)
	}
}
