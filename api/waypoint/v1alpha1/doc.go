// Package waypointv1alpha1 holds the generated Go types of the waypoint's L7
// configuration (waypoint.proto, type URL
// type.googleapis.com/ambientmesh.waypoint.v1alpha1.ServiceConfig), the
// contract between istiod-lite, which compiles Gateway API mesh routes into
// it (pkg/model) and serves it over delta xDS (pkg/xds), and the waypoint
// proxy, which subscribes to it. Regenerate with hack/generate.d/proto.sh;
// this file is not generated.
package waypointv1alpha1
