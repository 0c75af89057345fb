package xds

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-mesh/mesh/pkg/model"
)

// debugTypes maps the short names the debug endpoints accept to type URLs.
var debugTypes = map[string]string{
	"address":       model.AddressTypeURL,
	"authorization": model.AuthorizationTypeURL,
	"waypoint":      model.WaypointConfigTypeURL,
	"telemetry":     model.TelemetryTypeURL,
}

// DebugHandler serves, for the istiod-lite debug port:
//
//	GET /debug/connections                 connected clients with identity, node and per-type sync state
//	GET /debug/config_dump[?node=<id>][&type=address|authorization|waypoint|telemetry]
//	                                       resources as served; with node, what that client holds:
//	                                       all served resources of the types it watches as wildcard
//	                                       (on-demand subscriptions are listed as such)
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/connections", s.serveConnections)
	mux.HandleFunc("GET /debug/config_dump", s.serveConfigDump)
	return mux
}

type connectionJSON struct {
	StreamID       int64               `json:"stream_id"`
	NodeID         string              `json:"node_id"`
	Namespace      string              `json:"namespace"`
	ServiceAccount string              `json:"service_account"`
	Pod            string              `json:"pod,omitempty"`
	Connected      time.Time           `json:"connected"`
	Types          map[string]typeJSON `json:"types"`
}

type typeJSON struct {
	Sync      string     `json:"sync"`
	Wildcard  bool       `json:"wildcard"`
	LastSent  *time.Time `json:"last_sent,omitempty"`
	LastAck   *time.Time `json:"last_ack,omitempty"`
	LastNack  *time.Time `json:"last_nack,omitempty"`
	NackError string     `json:"nack_error,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (s *Server) serveConnections(w http.ResponseWriter, _ *http.Request) {
	clients := s.Clients()
	slices.SortFunc(clients, func(a, b ClientStatus) int { return int(a.StreamID - b.StreamID) })
	out := make([]connectionJSON, 0, len(clients))
	for _, c := range clients {
		cj := connectionJSON{
			StreamID: c.StreamID, NodeID: c.NodeID, Namespace: c.Identity.Namespace,
			ServiceAccount: c.Identity.ServiceAccount, Pod: c.Identity.PodName, Connected: c.Connected,
			Types: map[string]typeJSON{},
		}
		for t, ts := range c.Types {
			cj.Types[t] = typeJSON{
				Sync: ts.SyncState(), Wildcard: ts.Wildcard, LastSent: timePtr(ts.LastResponseAt),
				LastAck: timePtr(ts.LastAck), LastNack: timePtr(ts.LastNack), NackError: ts.NackError,
			}
		}
		out = append(out, cj)
	}
	writeJSON(w, out)
}

func (s *Server) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	types := slices.Sorted(func(yield func(string) bool) {
		for _, t := range debugTypes {
			if !yield(t) {
				return
			}
		}
	})
	if q := r.URL.Query().Get("type"); q != "" {
		t, ok := debugTypes[q]
		if !ok {
			http.Error(w, "unknown type "+q+"; want address, authorization, waypoint or telemetry", http.StatusBadRequest)
			return
		}
		types = []string{t}
	}
	var client *ClientStatus
	if node := r.URL.Query().Get("node"); node != "" {
		for _, c := range s.Clients() {
			if c.NodeID == node {
				client = &c
				break
			}
		}
		if client == nil {
			http.Error(w, "no connected client with node id "+node, http.StatusNotFound)
			return
		}
	}
	out := map[string]any{}
	for _, t := range types {
		if client != nil {
			ts, ok := client.Types[t]
			if !ok {
				continue
			}
			if !ts.Wildcard {
				out[t] = "on-demand subscription; resources sent on request are not tracked"
				continue
			}
		}
		res := map[string]json.RawMessage{}
		for name, m := range s.Resources(t) {
			b, err := protojson.Marshal(m.(proto.Message))
			if err != nil {
				http.Error(w, "marshal "+name+": "+err.Error(), http.StatusInternalServerError)
				return
			}
			res[name] = b
		}
		out[t] = res
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}
