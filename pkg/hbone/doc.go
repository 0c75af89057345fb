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
// HTTP/2 runs on this package's own engine (h2mux.go, h2stream.go), built
// for CONNECT tunnels on golang.org/x/net's HPACK: DATA frames are written
// from the caller's goroutine straight into the TLS connection, received
// payloads are read once into pooled chunks that [Conn.WriteTo] hands to
// the destination, [Conn.ReadFrom] reads a source straight into frame
// buffers, each direction half-closes on its own (END_STREAM one way, the
// other keeps flowing), and stream deadlines are ordinary net.Conn
// deadlines. One reader goroutine per connection never writes; control
// frames it owes go through the connection's control goroutine, so a
// writer blocked on TCP back-pressure never stops the reader. Settings are
// ztunnel's: 4 MiB stream and 16 MiB connection windows, 1 MiB frames,
// 200 concurrent streams in, PING after 10 s of silence, 20 s to answer.
// [Hooks.Takeover] hands an admitted stream itself to a proxy that
// terminates the tunnelled protocol (the waypoint serves HTTP on it).
//
// Known limits, each a deliberate trade-off:
//
//   - The HPACK encoder never indexes (CONNECT header blocks are small and
//     mostly unique), so the peer's header table size never matters.
//   - A header block decoded over the limit answers 431 when it was small
//     on the wire; one over 80 KiB on the wire (a CONTINUATION flood) ends
//     the connection with GOAWAY PROTOCOL_ERROR.
//   - go-spiffe accepts peer certificates with exactly one URI SAN (the
//     X.509-SVID rule, and what istiod issues).
//   - HTTP/3 connections learn of a GOAWAY when opening a stream; Dial then
//     retries on another connection. Takeover is HTTP/2 only.
package hbone
