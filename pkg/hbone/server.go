package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"golang.org/x/net/http2"
)

// HTTP/2 settings, from ztunnel (reference §1.5).
const (
	StreamWindow       = 4 << 20 // per-stream receive window
	ConnectionWindow   = 16 << 20
	MaxFrameSize       = 1 << 20 // largest frame we accept (client side)
	MaxConcurrentIn    = 200     // server SETTINGS_MAX_CONCURRENT_STREAMS
	MaxStreamsPerConn  = 100     // client pool: streams per connection
	PingInterval       = 10 * time.Second
	PingTimeout        = 20 * time.Second
	ServerHeaderLimit  = 64 << 10
	ClientHeaderLimit  = 16 << 10
	DefaultDrain       = 30 * time.Second
	DefaultHandshake   = 10 * time.Second
	DefaultConnTimeout = 10 * time.Second
	DefaultIdleRelease = 5 * time.Minute
	// ServerReadFrameSize is the SETTINGS_MAX_FRAME_SIZE our server
	// advertises (ztunnel's value). Received DATA payloads go into pooled
	// chunks of their own size, so a large limit costs nothing per stream.
	ServerReadFrameSize = MaxFrameSize
)

// Protocol selects the HBONE transport.
type Protocol uint8

const (
	H2 Protocol = iota // HTTP/2 over TLS over TCP (Istio-compatible default)
	H3                 // HTTP/3 over QUIC (our extension)
)

func (p Protocol) String() string {
	if p == H3 {
		return "h3"
	}
	return "h2"
}

// Inbound describes one accepted CONNECT stream; the server hands it to
// [Hooks] after validation. Hooks may set ResponseHeader (e.g. a
// destination "baggage") before the 200 is sent.
type Inbound struct {
	Protocol    Protocol
	Peer        spiffeid.ID         // client's SPIFFE identity (verified, same trust domain)
	PeerChain   []*x509.Certificate // client's certificate chain, leaf first
	Target      string              // :authority as sent, "ip:port" or "host:port"
	TargetAddr  netip.AddrPort      // valid when Target is ip:port
	Host        string              // host part of Target
	Port        uint16              // port part of Target
	Forwarded   string
	Baggage     string
	Traceparent string
	RemoteAddr  net.Addr // the tunnel connection's peer
	LocalAddr   net.Addr // the tunnel connection's local address (original destination)

	ResponseHeader http.Header
}

// Hooks are the caller's part of inbound handling; both run before the
// server answers 200. A returned *Error keeps its Status; any other error
// maps to 401 (Authorize) or 503 (DialUpstream).
type Hooks struct {
	// Authorize decides whether the stream may proceed. Nil allows all.
	Authorize func(ctx context.Context, in *Inbound) error
	// DialUpstream connects to the destination. Nil dials in.Target over TCP
	// with a 10 s timeout. A returned conn that has CloseWrite gets
	// half-closes propagated.
	DialUpstream func(ctx context.Context, in *Inbound) (net.Conn, error)
	// Takeover, if set, runs after Authorize, for a proxy that terminates
	// the tunnelled protocol itself (a waypoint serving HTTP on the stream).
	// When it returns a function, the server answers 200 and runs it with
	// the stream itself instead of DialUpstream and the copy: a net.Conn
	// with ordinary deadlines and CloseWrite, which the function owns until
	// it returns (the server closes it then); its ctx ends when the stream
	// is reset or force-drained. When it returns nil, DialUpstream runs as
	// usual. An error answers its status (default 503). HTTP/2 only;
	// HTTP/3 streams always take the DialUpstream path.
	Takeover func(ctx context.Context, in *Inbound) (func(ctx context.Context, c net.Conn), error)
}

// ServerConfig configures a [Server]. SVID and Bundle are required.
type ServerConfig struct {
	SVID        x509svid.Source      // certificate presented (the destination workload's)
	Bundle      x509bundle.Source    // trust bundle; client chains must lead to it
	TrustDomain spiffeid.TrustDomain // clients must belong to it; zero: the SVID's
	Hooks       Hooks
	Logger      *zap.Logger // nil: no logs
	// DrainTimeout bounds graceful shutdown after the serve context ends;
	// streams still open then are force-closed. Zero: 30 s.
	DrainTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake. Zero: 10 s.
	HandshakeTimeout time.Duration
	// ReadFrameSize overrides ServerReadFrameSize (16 KiB .. 16 MiB).
	ReadFrameSize uint32
}

// Server terminates HBONE. One Server may serve several listeners at once
// (Serve and ServeH3 each block until their context ends). It holds no
// per-listener state; each Serve call owns its connections.
type Server struct {
	cfg  ServerConfig
	log  *zap.Logger
	td   spiffeid.TrustDomain
	tlsC *tls.Config // h2
}

// NewServer checks cfg and builds a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.SVID == nil || cfg.Bundle == nil {
		return nil, &Error{Op: "new server", Err: errors.New("SVID and Bundle are required")}
	}
	td := cfg.TrustDomain
	if td.IsZero() {
		s, err := cfg.SVID.GetX509SVID()
		if err != nil {
			return nil, &Error{Op: "new server", Err: fmt.Errorf("get SVID: %w", err)}
		}
		td = s.ID.TrustDomain()
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrain
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultHandshake
	}
	if cfg.ReadFrameSize == 0 {
		cfg.ReadFrameSize = ServerReadFrameSize
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Server{
		cfg:  cfg,
		log:  log.Named("hbone"),
		td:   td,
		tlsC: ServerTLSConfig(cfg.SVID, cfg.Bundle, td, ALPNH2),
	}, nil
}

// h2Serve is the state of one Serve call.
//
// Invariants: conns holds every accepted connection until its goroutine
// ends (guarded by mu), with its HTTP/2 engine once the handshake is done;
// wg counts those goroutines. draining is closed once, when the drain
// starts; force is cancelled only after the drain deadline, and cancels
// every stream's context.
type h2Serve struct {
	s        *Server
	force    context.Context
	draining chan struct{}
	mu       sync.Mutex
	conns    map[net.Conn]*mux
	wg       sync.WaitGroup
}

// Serve accepts HBONE over HTTP/2 on ln (a TCP listener; TLS is done here)
// until ctx ends, then stops accepting, sends GOAWAY on every connection,
// waits up to DrainTimeout for open streams and force-closes the rest.
// It returns nil after a drain caused by ctx, or the accept error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	force, cancelForce := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelForce()
	st := &h2Serve{
		s:        s,
		force:    force,
		draining: make(chan struct{}),
		conns:    map[net.Conn]*mux{},
	}

	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			st.track(c, true)
			go st.serveConn(c)
		}
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-acceptErr:
	}
	_ = ln.Close()
	if err == nil {
		<-acceptErr
	} else if errors.Is(err, net.ErrClosed) && ctx.Err() != nil {
		err = nil
	}
	st.drain(cancelForce)
	if err != nil {
		return &Error{Op: "accept", Peer: ln.Addr().String(), Err: err}
	}
	return nil
}

func (st *h2Serve) track(c net.Conn, add bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if add {
		st.conns[c] = nil
		st.wg.Add(1)
		return
	}
	delete(st.conns, c)
	st.wg.Done()
}

// drain makes every connection send GOAWAY and close once idle, waits
// for them until the deadline, then force-closes what is left.
func (st *h2Serve) drain(cancelForce context.CancelFunc) {
	st.s.log.Info("draining", zap.Int("connections", st.count()))
	close(st.draining)
	done := make(chan struct{})
	go func() { st.wg.Wait(); close(done) }()
	t := time.NewTimer(st.s.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	st.s.log.Warn("drain deadline passed, closing connections", zap.Int("connections", st.count()))
	cancelForce()
	st.mu.Lock()
	for c := range st.conns {
		_ = c.Close()
	}
	st.mu.Unlock()
	<-done
}

func (st *h2Serve) count() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.conns)
}

func (st *h2Serve) serveConn(raw net.Conn) {
	defer st.track(raw, false)
	defer raw.Close()
	setTCPOptions(raw)
	tc := tls.Server(raw, st.s.tlsC)
	hctx, cancel := context.WithTimeout(st.force, st.s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		st.s.log.Debug("tls handshake failed", zap.Stringer("peer", raw.RemoteAddr()), zap.Error(err))
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPNH2 {
		st.s.log.Debug("alpn mismatch", zap.Stringer("peer", raw.RemoteAddr()), zap.String("alpn", cs.NegotiatedProtocol))
		return
	}
	m := newMux(tc, &cs, true, muxSettings{
		maxFrame:     st.s.cfg.ReadFrameSize,
		streamWindow: StreamWindow,
		connWindow:   ConnectionWindow,
		maxStreams:   MaxConcurrentIn,
		headerList:   ServerHeaderLimit,
		pingInterval: PingInterval,
		pingTimeout:  PingTimeout,
	}, st.s.log)
	m.onStream = func(str *h2stream, h *muxHeaders) { st.s.handleH2(st.force, m, str, h) }
	if err := m.start(); err != nil {
		st.s.log.Debug("http2 preface failed", zap.Stringer("peer", raw.RemoteAddr()), zap.Error(err))
		m.closeWith(err)
		return
	}
	st.mu.Lock()
	st.conns[raw] = m
	st.mu.Unlock()
	select {
	case <-m.done:
	case <-st.draining:
		m.goAway(http2.ErrCodeNo, "draining")
		select {
		case <-m.idle():
			_ = m.close()
			<-m.done
		case <-m.done:
		}
	}
	m.handlers.Wait()
}

// setTCPOptions applies ztunnel's socket settings (NODELAY is Go's default).
func setTCPOptions(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 180 * time.Second, Interval: 180 * time.Second, Count: 9})
	}
}

// parseInbound is phase 1: validate the request and describe it.
func parseInbound(method, authority string, h http.Header, state *tls.ConnectionState) (*Inbound, error) {
	if method != http.MethodConnect {
		return nil, &Error{Status: http.StatusBadRequest, Op: "parse", Err: fmt.Errorf("%w: method %q is not CONNECT", ErrBadRequest, method)}
	}
	host, port, err := parseAuthority(authority)
	if err != nil {
		return nil, &Error{Status: http.StatusBadRequest, Op: "parse", Peer: authority, Err: fmt.Errorf("%w: %w", ErrBadRequest, err)}
	}
	in := &Inbound{
		Target:      authority,
		Host:        host,
		Port:        port,
		Forwarded:   h.Get("Forwarded"),
		Baggage:     h.Get("Baggage"),
		Traceparent: h.Get("Traceparent"),
	}
	if a, err := netip.ParseAddr(host); err == nil {
		in.TargetAddr = netip.AddrPortFrom(a, port)
	}
	if state == nil || len(state.PeerCertificates) == 0 {
		return nil, &Error{Status: http.StatusUnauthorized, Op: "parse", Err: fmt.Errorf("%w: no client certificate", ErrUnauthorized)}
	}
	in.PeerChain = state.PeerCertificates
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return nil, &Error{Status: http.StatusUnauthorized, Op: "parse", Err: fmt.Errorf("%w: %w", ErrUnauthorized, err)}
	}
	in.Peer = id
	return in, nil
}

// parseAuthority accepts "ip:port", "[v6]:port" and "hostname:port".
func parseAuthority(a string) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, fmt.Errorf("authority %q: %w", a, err)
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("authority %q: bad port", a)
	}
	if host == "" {
		return "", 0, fmt.Errorf("authority %q: empty host", a)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		if strings.Contains(host, "%") {
			return "", 0, fmt.Errorf("authority %q: zoned address", a)
		}
		return host, uint16(p), nil
	}
	if !validHostname(host) {
		return "", 0, fmt.Errorf("authority %q: invalid hostname", a)
	}
	return host, uint16(p), nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// authorize runs the Authorize hook.
func (s *Server) authorize(ctx context.Context, in *Inbound) error {
	if s.cfg.Hooks.Authorize != nil {
		if err := s.cfg.Hooks.Authorize(ctx, in); err != nil {
			return &Error{Status: statusFor(err, http.StatusUnauthorized), Op: "authorize", Peer: in.Target, Err: errors.Join(ErrUnauthorized, err)}
		}
	}
	return nil
}

// dialUpstream is phase 2's second half, after authorize: connect the
// upstream. On error the returned status is what the server answers.
func (s *Server) dialUpstream(ctx context.Context, in *Inbound) (net.Conn, error) {
	dial := s.cfg.Hooks.DialUpstream
	if dial == nil {
		dial = defaultDialUpstream
	}
	up, err := dial(ctx, in)
	if err != nil {
		return nil, &Error{Status: statusFor(err, http.StatusServiceUnavailable), Op: "dial upstream", Peer: in.Target, Err: errors.Join(ErrUpstream, err)}
	}
	return up, nil
}

func defaultDialUpstream(ctx context.Context, in *Inbound) (net.Conn, error) {
	d := net.Dialer{Timeout: DefaultConnTimeout}
	c, err := d.DialContext(ctx, "tcp", in.Target)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", in.Target, err)
	}
	return c, nil
}

// rejected logs a refused stream and returns the status to answer.
func (s *Server) rejected(err error, in *Inbound) int {
	status := statusFor(err, http.StatusBadRequest)
	fields := []zap.Field{zap.Int("status", status), zap.Error(err)}
	if in != nil {
		fields = append(fields, zap.String("target", in.Target), zap.Stringer("peer", in.Peer))
	}
	s.log.Debug("stream rejected", fields...)
	return status
}

// handleH2 runs one CONNECT stream: parse, authorize, then Takeover or
// dialUpstream and the copy, each direction half-closing on its own
// (END_STREAM one way, FIN the other) while the other keeps flowing.
func (s *Server) handleH2(parent context.Context, m *mux, str *h2stream, h *muxHeaders) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	m.mu.Lock()
	if str.reset != nil {
		m.mu.Unlock()
		return
	}
	str.cancel = cancel
	m.mu.Unlock()
	defer str.Close()
	if h.tooLarge {
		_ = str.respond(s.rejected(&Error{Status: http.StatusRequestHeaderFieldsTooLarge, Op: "parse", Err: fmt.Errorf("%w: headers over %d bytes", ErrBadRequest, ServerHeaderLimit)}, nil), nil)
		return
	}
	if h.method == http.MethodConnect && (h.scheme != "" || h.path != "" || h.protocol != "") {
		_ = str.respond(s.rejected(&Error{Status: http.StatusBadRequest, Op: "parse", Err: fmt.Errorf("%w: CONNECT with :scheme, :path or :protocol", ErrBadRequest)}, nil), nil)
		return
	}
	in, err := parseInbound(h.method, h.authority, h.header, m.tls)
	if err != nil {
		_ = str.respond(s.rejected(err, in), nil)
		return
	}
	in.Protocol = H2
	in.RemoteAddr, in.LocalAddr = m.c.RemoteAddr(), m.c.LocalAddr()
	if err := s.authorize(ctx, in); err != nil {
		_ = str.respond(s.rejected(err, in), nil)
		return
	}
	if s.cfg.Hooks.Takeover != nil {
		serve, err := s.cfg.Hooks.Takeover(ctx, in)
		if err != nil {
			_ = str.respond(s.rejected(&Error{Status: statusFor(err, http.StatusServiceUnavailable), Op: "takeover", Peer: in.Target, Err: errors.Join(ErrUpstream, err)}, in), nil)
			return
		}
		if serve != nil {
			if err := str.respond(http.StatusOK, in.ResponseHeader); err != nil {
				return
			}
			c := streamConn(str, in.Peer, in.LocalAddr, in.RemoteAddr)
			serve(ctx, c)
			_ = c.Close()
			return
		}
	}
	up, err := s.dialUpstream(ctx, in)
	if err != nil {
		_ = str.respond(s.rejected(err, in), nil)
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { _ = up.Close() })
	defer stop()
	if err := str.respond(http.StatusOK, in.ResponseHeader); err != nil {
		return
	}
	// client -> upstream in its own goroutine; upstream -> client here.
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := str.WriteTo(up); err != nil {
			if !isClosedErr(err) {
				s.log.Debug("copy to upstream ended", zap.String("target", in.Target), zap.Error(err))
			}
			str.Reset()
			_ = up.Close()
			return
		}
		_ = closeWriter(up)()
	}()
	if _, err := str.ReadFrom(up); err != nil {
		if !isClosedErr(err) {
			s.log.Debug("copy to client ended", zap.String("target", in.Target), zap.Error(err))
		}
		str.Reset()
		_ = up.Close()
	} else {
		_ = str.CloseWrite()
	}
	<-done
}
