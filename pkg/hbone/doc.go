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
//
// Known limits, each a deliberate trade-off:
//
//   - HTTP/2 server half-close: Go's HTTP/2 server can end a response
//     stream only when the handler returns, which resets the client's send
//     side. So when the upstream closes first the stream ends both ways;
//     when the client half-closes first, the upstream gets a FIN and its
//     reply keeps flowing. HTTP/3 half-closes both ways.
//   - The server advertises SETTINGS_MAX_FRAME_SIZE 16 KiB, not ztunnel's
//     1 MiB: Go's HTTP/2 client keeps a scratch buffer of that size (capped
//     at 512 KiB) for every open stream, which would cost ~0.5 MiB per idle
//     pooled stream (32 KiB frames already put it at ~62 KiB). Larger
//     frames do cut per-frame work (ServerConfig.ReadFrameSize changes it).
//     Our client accepts 1 MiB frames, and coalesces the 16 KiB frames it
//     sends into full TLS records instead of a 16 KiB and a 9-byte record
//     per frame.
//   - Deadlines on HTTP/2 Conns are terminal (the stream is reset when one
//     passes); on HTTP/3 Conns they are ordinary net.Conn deadlines.
//   - go-spiffe accepts peer certificates with exactly one URI SAN (the
//     X.509-SVID rule, and what istiod issues).
//   - HTTP/3 connections learn of a GOAWAY when opening a stream; Dial then
//     retries on another connection.
package hbone
