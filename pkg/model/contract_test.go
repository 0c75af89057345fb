package model

import (
	"testing"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	waypointproxy "github.com/ambient-mesh/mesh/pkg/waypoint"
)

// TestWaypointAcceptsConfigs checks the contract with the waypoint proxy:
// every ServiceConfig the route cases compile, bad routes included, passes
// the waypoint's own validation (a rejected config would be NACKed and the
// Service left on its previous routes).
func TestWaypointAcceptsConfigs(t *testing.T) {
	for _, tc := range routeCases() {
		t.Run(tc.name, func(t *testing.T) {
			var cfgs []*waypointv1alpha1.ServiceConfig
			for _, sc := range Translate(tc.snap).WaypointConfigs {
				cfgs = append(cfgs, sc)
			}
			if err := waypointproxy.NewRoutes().Set(cfgs...); err != nil {
				t.Errorf("the waypoint refuses a compiled config: %v", err)
			}
		})
	}
}
