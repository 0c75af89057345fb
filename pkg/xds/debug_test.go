package xds_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

func TestSyncState(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name string
		ts   xds.TypeStatus
		want string
	}{
		{"nothing sent", xds.TypeStatus{}, xds.SyncStateNotSent},
		{"awaiting ack", xds.TypeStatus{LastResponseAt: t0}, xds.SyncStateStale},
		{"acked", xds.TypeStatus{LastResponseAt: t0, LastAck: t0.Add(time.Millisecond)}, xds.SyncStateSynced},
		{"nacked", xds.TypeStatus{LastResponseAt: t0, LastNack: t0.Add(time.Millisecond)}, xds.SyncStateNack},
		{"old ack, new push", xds.TypeStatus{LastResponseAt: t0.Add(time.Second), LastAck: t0}, xds.SyncStateStale},
		{"nack then fixed", xds.TypeStatus{LastResponseAt: t0.Add(time.Second), LastNack: t0, LastAck: t0.Add(2 * time.Second)}, xds.SyncStateSynced},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.ts.SyncState(); got != tc.want {
				t.Errorf("SyncState() = %q, want %q", got, tc.want)
			}
		})
	}
}

func get(t *testing.T, h http.Handler, url string) (int, string) {
	t.Helper()
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequestWithContext(t.Context(), http.MethodGet, url, nil))
	return rr.Code, rr.Body.String()
}

func TestDebugHandler(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	e.srv.Update(resources(workload("a", "10.0.0.1", true)))
	c := newClient(t, dial(t, e.addr, goodToken), rec,
		xdsclient.Subscription{TypeURL: model.AddressTypeURL},
		xdsclient.Subscription{TypeURL: model.AuthorizationTypeURL, OnDemand: true})
	runClient(t, t.Context(), c)
	rec.next(t, model.AddressTypeURL)
	h := e.srv.DebugHandler()
	const node = "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"

	var conns []struct {
		NodeID string `json:"node_id"`
		Types  map[string]struct {
			Sync     string `json:"sync"`
			Wildcard bool   `json:"wildcard"`
		} `json:"types"`
	}
	eventually(t, "client SYNCED in /debug/connections", func() bool {
		code, body := get(t, h, "/debug/connections")
		if code != http.StatusOK {
			t.Fatalf("/debug/connections: %d %s", code, body)
		}
		if err := json.Unmarshal([]byte(body), &conns); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
		return len(conns) == 1 && conns[0].Types[model.AddressTypeURL].Sync == xds.SyncStateSynced
	})
	if conns[0].NodeID != node || !conns[0].Types[model.AddressTypeURL].Wildcard || conns[0].Types[model.AuthorizationTypeURL].Wildcard {
		t.Errorf("connection = %+v, want node %s, wildcard addresses, on-demand authorizations", conns[0], node)
	}

	code, body := get(t, h, "/debug/config_dump?node="+node)
	if code != http.StatusOK || !strings.Contains(body, uid("a")) || !strings.Contains(body, "on-demand subscription") {
		t.Errorf("config dump for node: %d %s", code, body)
	}
	for _, tc := range []struct {
		url  string
		code int
	}{
		{"/debug/config_dump?type=address", http.StatusOK},
		{"/debug/config_dump?type=bogus", http.StatusBadRequest},
		{"/debug/config_dump?node=nobody", http.StatusNotFound},
	} {
		if code, body := get(t, h, tc.url); code != tc.code {
			t.Errorf("GET %s = %d %s, want %d", tc.url, code, body, tc.code)
		}
	}
}
