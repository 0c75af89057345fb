package xds_test

import (
	"slices"
	"testing"
	"time"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

func serviceConfig(weights ...uint32) *waypointv1alpha1.ServiceConfig {
	route := &waypointv1alpha1.HTTPRoute{Name: "HTTPRoute/demo/reviews/0"}
	for i, w := range weights {
		route.Backends = append(route.Backends, &waypointv1alpha1.WeightedBackend{Weight: w, Backend: &waypointv1alpha1.Backend{
			Namespace: "demo", Hostname: []string{"reviews-v1", "reviews-v2"}[i] + ".demo.svc.cluster.local", Port: 80}})
	}
	return &waypointv1alpha1.ServiceConfig{Namespace: "demo", Hostname: "reviews.demo.svc.cluster.local", Waypoints: []string{"demo/wp"},
		Ports: []*waypointv1alpha1.Port{{Port: 80, Protocol: waypointv1alpha1.Protocol_HTTP, HttpRoutes: []*waypointv1alpha1.HTTPRoute{route}}}}
}

// TestWaypointConfigs: a waypoint subscribed to the ServiceConfig type gets
// each Service's config, decodes it with the generated type, and gets only
// what changed afterwards (a weight change, then the removal).
func TestWaypointConfigs(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec,
		xdsclient.Subscription{TypeURL: model.AddressTypeURL}, xdsclient.Subscription{TypeURL: model.WaypointConfigTypeURL}))
	const name = "demo/reviews.demo.svc.cluster.local"
	withConfig := func(sc *waypointv1alpha1.ServiceConfig) model.Resources {
		r := resources(workload("a", "10.0.0.1", true))
		r.WaypointConfigs = map[string]*waypointv1alpha1.ServiceConfig{}
		if sc != nil {
			r.WaypointConfigs[name] = sc
		}
		return r
	}
	weights := func(d xdsclient.Delta) []uint32 {
		t.Helper()
		if len(d.Updated) != 1 || d.Updated[0].Name != name {
			t.Fatalf("delta updated %v, want [%s]", names(d), name)
		}
		var sc waypointv1alpha1.ServiceConfig
		if err := d.Updated[0].UnmarshalTo(&sc); err != nil {
			t.Fatalf("decode %s: %v", name, err)
		}
		var out []uint32
		for _, b := range sc.GetPorts()[0].GetHttpRoutes()[0].GetBackends() {
			out = append(out, b.GetWeight())
		}
		return out
	}
	e.srv.Update(withConfig(serviceConfig(90, 10)))
	if got := weights(rec.nextChange(t, model.WaypointConfigTypeURL)); !slices.Equal(got, []uint32{90, 10}) {
		t.Errorf("weights = %v, want [90 10]", got)
	}
	e.srv.Update(withConfig(serviceConfig(50, 50)))
	if got := weights(rec.nextChange(t, model.WaypointConfigTypeURL)); !slices.Equal(got, []uint32{50, 50}) {
		t.Errorf("weights after the change = %v, want [50 50]", got)
	}
	e.srv.Update(withConfig(nil))
	if d := rec.nextChange(t, model.WaypointConfigTypeURL); !slices.Equal(d.Removed, []string{name}) || len(d.Updated) != 0 {
		t.Errorf("delta after removal: updated %v removed %v, want only %s removed", names(d), d.Removed, name)
	}
}
