// Package waypoint is the ambient mesh's L7 proxy, the engine of
// cmd/waypoint: it terminates HBONE on 15008 for the Services bound to one
// waypoint Gateway, applies their routes (compiled from the
// ambientmesh.waypoint.v1alpha1.ServiceConfig resources istiod-lite serves
// on the delta xDS stream) and tunnels each request on over HBONE to a
// ready pod of the chosen backend Service.
//
// Per stream: the CONNECT's :authority (Service VIP:port, or
// hostname:port) names the Service; one that is unknown, has no
// ServiceConfig, or whose ServiceConfig does not list this waypoint
// ("<namespace>/<name>") is refused with 503 before the 200. HTTP ports
// speak HTTP/1.1 or h2c prior knowledge, HTTP2 and GRPC ports h2c; TCP
// ports are copied at L4 to a TCPRoute backend chosen by weight.
//
// Per request: the first route with a matching match wins (404 when none),
// its filters run in order (header modifiers, URL rewrite, redirect,
// mirror), a backend is chosen by weight (500 when invalid or none), and
// the request goes round-robin to a HEALTHY endpoint of it (503 when there
// is none) over one shared upstream transport per protocol (HTTP/1.1
// keep-alive pool or h2c) on HBONE streams that present the waypoint's own
// certificate and expect the endpoint's SPIFFE identity. Requests whose
// body is buffered (up to Config.MaxReplayBody) or absent are retried on
// connect failures and the route's retriable statuses with jittered
// exponential backoff, each try bounded by backend_request_timeout and the
// whole by request_timeout (504). Each request is a server span (see
// Telemetry: exported over OTLP when a Telemetry resource names a provider
// or the OTEL_* variables enable export) whose id the upstream traceparent
// carries as its parent; without export traceparent still gets a new span
// id per hop. x-request-id is kept or set, and every request is counted in
// istio_requests_total and istio_request_duration_milliseconds with
// reporter="waypoint" and logged as one access-log line.
//
// The ServiceConfig's policies are enforced too: L7 AuthorizationPolicies
// (DENY first, then ALLOW; 403 on HTTP ports, 401 on the tunnel of TCP
// ports), local rate limits per Service and per route (429 with
// retry-after), fault injection (delay, HTTP or gRPC abort), and per
// backend (Service, subset) the DestinationRule policy from
// backend_policies: subsets by workload uid, ROUND_ROBIN, RANDOM or
// LEAST_REQUEST balancing, connection-pool limits (503 with
// x-envoy-overloaded), max_retries and outlier detection (ejection after
// consecutive 5xx or gateway errors, base_ejection_time times the
// ejection count up to Envoy's max_ejection_time of 300 s, the count
// lowered by one per interval in rotation, bounded by
// max_ejection_percent and min_health_percent).
//
// Known limits: pod-addressed (workload waypoint) targets are refused; a
// body of unknown length on a gRPC port is never buffered, so such requests
// are neither retried nor mirrored; HTTP/1.1 connection-pool limits hold
// tries to max_connections at once at the backend (Service, subset), the
// others waiting in order, and refuse requests beyond
// http1_max_pending_requests waiting (Envoy's queue; max_connections is
// counted as tries in flight, not sockets), and of
// max_requests_per_connection only 1 (no keep-alive) is honoured;
// ejections end and counts decay lazily, at the host's next pick or
// outcome, not at interval ticks. Each HTTP stream is bridged to net/http
// through a unix socket pair.
//
// In-process use (benchmarks, tests, cmd/waypoint through pkg/waypoint/app):
//
//	addrs := state.NewStore()     // fed by Address deltas: addrs.HandleAddress
//	routes := waypoint.NewRoutes() // fed by ServiceConfig deltas: routes.Handle (NACKs bad ones)
//	p, err := waypoint.New(waypoint.Config{
//		Name: "demo/waypoint", Addresses: addrs, Routes: routes,
//		SVID: svidSource, Bundle: bundle, // the waypoint's own certificate and the mesh roots
//	})
//	ln, _ := net.Listen("tcp", ":15008")
//	go p.Serve(ctx, ln) // drains when ctx ends
//	defer p.Close()     // after Serve returned
//
// It is data-plane code: no Kubernetes client, no control-plane package
// (internal/archtest).
package waypoint
