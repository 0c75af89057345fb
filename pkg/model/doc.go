// Package model translates a snapshot of Kubernetes objects into the
// resources istiod-lite serves to ztunnels over delta xDS: the
// istio.workload.Address resources (one per Workload, one per Service) and the
// istio.security.Authorization resources derived from AuthorizationPolicy and
// PeerAuthentication. It also compiles Gateway API mesh routes (HTTPRoute,
// GRPCRoute, TCPRoute attached to a Service or to an istio-waypoint Gateway)
// into the waypoints' ambientmesh.waypoint.v1alpha1.ServiceConfig, one per
// Service bound to a waypoint, and computes the routes' status (routes.go),
// together with Istio's DestinationRule (destinationrule.go) and
// VirtualService (virtualservice.go), the mesh's LocalRateLimitPolicy
// (ratelimit.go) and AuthorizationPolicies with targetRefs, which waypoints
// enforce (waypointauthz.go). Istio's mesh config extensionProviders and
// telemetry.istio.io Telemetry resources become one
// ambientmesh.waypoint.v1alpha1.Telemetry per waypoint (telemetry.go); see
// docs/decisions.md for the choices.
//
// Everything here is a pure function of a [Snapshot]: no clients, no caches,
// no clocks. The same snapshot always produces the same [Resources], keyed by
// xDS resource name, so the xDS server can diff two results and push only what
// changed. Istio's naming and field conventions are matched exactly (see
// shared/reference/istio-ambient-facts.md §3 and §6); upstream istiod code was
// read for facts only.
//
// Decisions, where istiod's behaviour had to be chosen or was unclear:
//
//   - A Workload's tunnel protocol is HBONE only when the pod carries
//     ambient.istio.io/redirection=enabled, which the node agent sets once
//     capture is in place; the dataplane-mode labels alone (see
//     [AmbientEnabled]) would make peers send HBONE to a pod nobody listens
//     for yet.
//   - An istio-waypoint Gateway is usable once its status has an address
//     (hostname preferred, else IP), as in istiod; the controller that deploys
//     waypoints must publish it. Until then users of the waypoint get none and
//     a WaypointNotReady diagnostic.
//   - AuthorizationPolicy attributes ztunnel cannot enforce fail closed as in
//     istiod's code: the rule is dropped from an ALLOW policy (it never
//     matches, so an ALLOW policy made only of such rules denies all) and a
//     DENY rule is kept without them (it matches more). Values that do not
//     parse (ports, IPs, principals written as spiffe:// URIs, which ztunnel
//     would never match) are treated the same way, never silently widened.
//   - Every problem is returned as a [Diagnostic] naming the object and
//     field; translation of everything else goes on.
//   - Mesh routes: a route that cannot be compiled (bad regex, unsupported
//     filter or value) is not accepted as a whole and leaves the others
//     alone; an unresolved backend stays in the route as invalid (its share
//     of requests gets 500). Only producer routes (in the Service's own
//     namespace) attach to a Service: consumer routes are refused with
//     UnsupportedValue, as a ServiceConfig has no notion of the client's
//     namespace. Route hostnames are ignored for mesh parents. Matches on
//     any path rank after regex paths, which rank after prefixes. A
//     TCPRoute has one rule; the oldest TCPRoute on a port wins.
//
// Imported by the istiod-lite controller (which fills the snapshot from its
// informers) and by tests and benchmarks that build snapshots by hand.
package model
