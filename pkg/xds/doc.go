// Package xds is istiod-lite's delta ADS server: it streams the resources
// built by pkg/model (istio.workload.Address, istio.security.Authorization)
// to ztunnels over envoy's DeltaAggregatedResources RPC.
//
// It is built on go-control-plane: one LinearCache per type URL behind a
// MuxCache, and the delta stream server with Callbacks for authentication at
// stream open, NACK accounting and per-client status. Callers hand it whole
// model.Resources snapshots with [Server.Update]; pushes are debounced and a
// client receives only resources that changed or were removed since what it
// holds, including across reconnects (initial_resource_versions).
//
// Imported by cmd/istiod-lite. The client side lives in pkg/xds/xdsclient.
package xds
