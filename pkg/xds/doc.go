// Package xds is istiod-lite's delta ADS server: it streams the resources
// built by pkg/model (istio.workload.Address, istio.security.Authorization,
// and the waypoints' ambientmesh.waypoint.v1alpha1.ServiceConfig and
// Telemetry) to ztunnels and waypoints over envoy's DeltaAggregatedResources RPC.
//
// It is built on go-control-plane's delta stream server, with Callbacks for
// authentication at stream open, NACK accounting and per-client status. The
// watches are served by a cache of our own per type URL (cache.go): it keeps
// LinearCache's contract and content-hash versions, but compares an ACKing
// wildcard client only against the changes since its last response, which
// LinearCache does against every resource (at 11,000 resources and 100
// clients that was 0.7 s per pod change). Callers hand the server whole
// model.Resources snapshots with [Server.Update]; pushes are debounced and a
// client receives only resources that changed or were removed since what it
// holds, including across reconnects (initial_resource_versions).
//
// Each resource is encoded once per change: the gRPC codec (codec.go) writes
// delta responses from the caches' encodings of their shared resources, so a
// full push to 100 clients does not encode 11,000 resources 100 times; a
// client that holds nothing gets the cache's shared full list, whose
// encoding is written in one piece. Under TLS each gRPC write is one socket
// write (conn.go), not one per 16 KiB record.
//
// Imported by cmd/istiod-lite. The client side lives in pkg/xds/xdsclient.
package xds
