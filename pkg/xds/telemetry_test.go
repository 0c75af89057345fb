package xds_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

// TestWaypointTelemetry: a waypoint subscribed to the Telemetry type gets its
// waypoint's resource, decodes it with the generated type, gets a sampling
// change as an update, and the debug endpoint dumps the type as "telemetry".
func TestWaypointTelemetry(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.TelemetryTypeURL}))
	const name = "demo/wp"
	withSampling := func(pct float64) model.Resources {
		r := resources(workload("a", "10.0.0.1", true))
		r.Telemetry = map[string]*waypointv1alpha1.Telemetry{name: {Namespace: "demo", Name: "wp", Tracing: &waypointv1alpha1.Tracing{
			Provider:                 &waypointv1alpha1.OpenTelemetryProvider{Name: "otel", Service: "c.otel.svc.cluster.local", Port: 4317},
			RandomSamplingPercentage: pct}}}
		return r
	}
	sampling := func(d xdsclient.Delta) float64 {
		t.Helper()
		if len(d.Updated) != 1 || d.Updated[0].Name != name {
			t.Fatalf("delta updated %v, want [%s]", names(d), name)
		}
		var tel waypointv1alpha1.Telemetry
		if err := d.Updated[0].UnmarshalTo(&tel); err != nil {
			t.Fatalf("decode %s: %v", name, err)
		}
		if tel.GetTracing().GetProvider().GetPort() != 4317 {
			t.Errorf("provider = %v", tel.GetTracing().GetProvider())
		}
		return tel.GetTracing().GetRandomSamplingPercentage()
	}
	e.srv.Update(withSampling(100))
	if got := sampling(rec.nextChange(t, model.TelemetryTypeURL)); got != 100 {
		t.Errorf("sampling = %v, want 100", got)
	}
	e.srv.Update(withSampling(0))
	if got := sampling(rec.nextChange(t, model.TelemetryTypeURL)); got != 0 {
		t.Errorf("sampling after the change = %v, want 0", got)
	}
	code, body := get(t, e.srv.DebugHandler(), "/debug/config_dump?type=telemetry")
	if code != http.StatusOK || !strings.Contains(body, model.TelemetryTypeURL) || !strings.Contains(body, `"demo/wp"`) {
		t.Errorf("config dump of type telemetry: %d %s", code, body)
	}
}
