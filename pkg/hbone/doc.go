// Package hbone implements HBONE, Istio ambient's tunnel: HTTP CONNECT over
// mutual TLS 1.3 with SPIFFE identities on port 15008. It is wire-compatible
// with ztunnel and with Istio's Go implementation (istio.io/istio/pkg/hbone).
//
// ztunnel and waypoints import it for both directions:
//
//   - [Server] terminates HBONE. Each CONNECT stream runs in phases: parse
//     and validate (400), hand [Hooks] the peer identity, target and
//     forwarded/baggage/traceparent headers so they authorize (401) and dial
//     upstream (503) before the server answers 200, then copy both ways with
//     half-close. [Server.Serve] speaks HTTP/2 over TLS (ALPN h2);
//     [Server.ServeH3] speaks HTTP/3 over QUIC (ALPN h3).
//   - [Client] originates HBONE. [Client.Dial] opens one stream described by
//     a [Request] on a pooled connection keyed by (source identity, expected
//     destination identities, tunnel address, source IP, protocol).
//
// Errors are *[Error] values; [Error.Status] carries the HTTP status when the
// failure has one (400, 401, 503, or the status a peer answered).
package hbone
