package hbone

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is the one error type of this package. Status is the HTTP status the
// server answered (client side) or will answer (server side); it is 0 for
// failures below HTTP (TCP, TLS, QUIC) and for local errors.
type Error struct {
	Status int    // HTTP status, or 0
	Op     string // what failed: "dial tcp", "tls handshake", "connect", "authorize", ...
	Peer   string // the tunnel address or the authority involved
	Err    error  // cause; may be one of the Err* sentinels below
}

func (e *Error) Error() string {
	s := "hbone: " + e.Op
	if e.Peer != "" {
		s += " " + e.Peer
	}
	if e.Status != 0 {
		s += fmt.Sprintf(": status %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Sentinel causes, matched with errors.Is.
var (
	// ErrConnectTimeout: the TCP/QUIC connect to the tunnel port timed out.
	ErrConnectTimeout = errors.New("connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008")
	// ErrBadRequest: the CONNECT request was malformed (server answers 400).
	ErrBadRequest = errors.New("bad CONNECT request")
	// ErrUnauthorized: the Authorize hook denied the stream (server answers 401).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUpstream: dialing the upstream failed (server answers 503).
	ErrUpstream = errors.New("upstream unavailable")
	// ErrClosed: the Client or Server was closed.
	ErrClosed = errors.New("closed")
	// ErrProtocol: the peer did not negotiate the expected ALPN or sent an unexpected response.
	ErrProtocol = errors.New("protocol violation")
)

// StatusOf returns the HTTP status carried by err, or 0.
func StatusOf(err error) int {
	var he *Error
	if errors.As(err, &he) {
		return he.Status
	}
	return 0
}

// statusFor maps a hook error to the status the server answers with:
// a *Error keeps its own status, anything else gets def.
func statusFor(err error, def int) int {
	if s := StatusOf(err); s != 0 {
		return s
	}
	return def
}
