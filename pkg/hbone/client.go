package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
)

// Request describes one HBONE stream to open.
type Request struct {
	// Source is the source workload's certificate, presented to the peer.
	Source *x509svid.SVID
	// Destinations are the identities the peer may present; at least one
	// must equal the peer's URI SAN. Required.
	Destinations []spiffeid.ID
	// Address is the tunnel endpoint, e.g. podIP:15008.
	Address netip.AddrPort
	// Authority is the CONNECT target (":authority"), e.g. podIP:targetPort.
	Authority string
	// SourceIP, when valid, is the local address the tunnel connection is
	// bound to (ztunnel spoofs the source pod's IP; see ClientConfig.Control).
	SourceIP netip.Addr
	// Protocol selects HTTP/2 (default) or HTTP/3 for this destination.
	Protocol Protocol
	// Headers sent on the CONNECT.
	Forwarded, Baggage, Traceparent string
}

// ClientConfig configures a [Client]. Bundle is required.
type ClientConfig struct {
	Bundle x509bundle.Source // trust bundle the peer's chain must lead to
	Logger *zap.Logger
	// ConnectTimeout bounds the TCP (or QUIC) connect plus handshake. Zero: 10 s.
	ConnectTimeout time.Duration
	// IdleRelease closes pooled connections unused this long. Zero: 5 min.
	IdleRelease time.Duration
	// MaxStreamsPerConn caps streams on one pooled connection. Zero: 100.
	MaxStreamsPerConn int
	// Control, if set, runs on each tunnel socket before connect (SO_MARK,
	// IP_TRANSPARENT/IP_FREEBIND for source-IP spoofing, ...).
	Control func(network, address string, c syscall.RawConn) error
	// Dial, if set, opens the TCP connection of each HTTP/2 tunnel instead
	// of a net.Dialer (for example from inside a pod's network namespace).
	// network is "tcp", address is Request.Address, local is
	// Request.SourceIP (invalid: any local address): the hook binds it and
	// applies any socket options itself, as Control is then not used.
	// ConnectTimeout bounds ctx. HTTP/3 (UDP) does not use it.
	Dial func(ctx context.Context, network, address string, local netip.Addr) (net.Conn, error)
}

// Client opens HBONE streams over pooled connections. Safe for concurrent use.
//
// Pool invariants: pools maps a poolKey to its pool and is guarded by mu;
// a pool is never removed (it is small and its key recurs), only its
// connections are. Each pool's own mutex guards its conns slice and its one
// in-flight dial; every caller that finds no free stream slot waits on that
// single dial (de-duplication), then retries. A connection is skipped once
// it is closing (GOAWAY received, ping lost, closed) and dropped from the
// slice on the next acquire or sweep; the sweeper closes connections idle
// longer than IdleRelease.
type Client struct {
	cfg    ClientConfig
	log    *zap.Logger
	life   context.Context // cancelled by Close; parent of dials and streams
	cancel context.CancelFunc

	mu     sync.Mutex
	pools  map[poolKey]*pool
	closed bool
	wg     sync.WaitGroup // sweeper and dial goroutines
}

// poolKey is ztunnel's WorkloadKey plus the protocol.
type poolKey struct {
	src   spiffeid.ID
	dst   string // sorted, comma-joined expected identities
	addr  netip.AddrPort
	srcIP netip.Addr
	proto Protocol
}

// NewClient builds a Client; call Close to release its connections.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Bundle == nil {
		return nil, &Error{Op: "new client", Err: errors.New("Bundle is required")}
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnTimeout
	}
	if cfg.IdleRelease == 0 {
		cfg.IdleRelease = DefaultIdleRelease
	}
	if cfg.MaxStreamsPerConn == 0 {
		cfg.MaxStreamsPerConn = MaxStreamsPerConn
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	life, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, log: log.Named("hbone"), life: life, cancel: cancel, pools: map[poolKey]*pool{}}
	c.wg.Add(1)
	go c.sweep()
	return c, nil
}

// Close closes every pooled connection (resetting open streams) and stops
// the pool. Dial fails with ErrClosed afterwards.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	pools := c.pools
	c.mu.Unlock()
	c.cancel()
	for _, p := range pools {
		p.closeAll()
	}
	c.wg.Wait()
	return nil
}

// Dial opens one HBONE stream. ctx bounds the whole setup (pool wait, dial,
// handshake, CONNECT round trip) but not the returned Conn's lifetime.
func (c *Client) Dial(ctx context.Context, req *Request) (*Conn, error) {
	if err := validateRequest(req); err != nil {
		return nil, err
	}
	p, err := c.pool(req)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		mc, err := p.acquire(ctx, req)
		if err != nil {
			return nil, err
		}
		conn, err := mc.open(ctx, c.life, req)
		// A connection that went away under us (GOAWAY, lost ping) before
		// the peer answered: take another one.
		if err != nil && attempt < 2 && StatusOf(err) == 0 && ctx.Err() == nil && !mc.usable() {
			continue
		}
		return conn, err
	}
}

func validateRequest(req *Request) error {
	switch {
	case req == nil:
		return &Error{Op: "dial", Err: errors.New("nil request")}
	case req.Source == nil || len(req.Source.Certificates) == 0:
		return &Error{Op: "dial", Err: errors.New("request has no source certificate")}
	case len(req.Destinations) == 0:
		return &Error{Op: "dial", Err: errors.New("request has no destination identities")}
	case !req.Address.IsValid():
		return &Error{Op: "dial", Err: errors.New("request has no tunnel address")}
	}
	if _, _, err := parseAuthority(req.Authority); err != nil {
		return &Error{Op: "dial", Peer: req.Address.String(), Err: fmt.Errorf("%w: %w", ErrBadRequest, err)}
	}
	return nil
}

func keyOf(req *Request) poolKey {
	ids := make([]string, len(req.Destinations))
	for i, id := range req.Destinations {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	return poolKey{src: req.Source.ID, dst: strings.Join(ids, ","), addr: req.Address, srcIP: req.SourceIP, proto: req.Protocol}
}

func (c *Client) pool(req *Request) (*pool, error) {
	k := keyOf(req)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, &Error{Op: "dial", Peer: req.Address.String(), Err: ErrClosed}
	}
	p := c.pools[k]
	if p == nil {
		p = &pool{c: c, key: k}
		c.pools[k] = p
	}
	return p, nil
}

// sweep closes idle connections every IdleRelease/4 (at most every 30 s).
func (c *Client) sweep() {
	defer c.wg.Done()
	every := min(c.cfg.IdleRelease/4, 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.life.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		pools := make([]*pool, 0, len(c.pools))
		for _, p := range c.pools {
			pools = append(pools, p)
		}
		c.mu.Unlock()
		now := time.Now()
		for _, p := range pools {
			p.release(now)
		}
	}
}

// PoolStats reports, for tests and debugging, the number of pooled
// connections and the streams currently open on them for req's key.
func (c *Client) PoolStats(req *Request) (conns, streams int) {
	c.mu.Lock()
	p := c.pools[keyOf(req)]
	c.mu.Unlock()
	if p == nil {
		return 0, 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, mc := range p.conns {
		if mc.usable() {
			conns++
			streams += mc.streams()
		}
	}
	return conns, streams
}

// muxConn is one pooled multiplexed connection (HTTP/2 or HTTP/3).
type muxConn interface {
	// reserve takes a stream slot if fewer than max are in use and the
	// connection is usable. Called with the pool's lock held.
	reserve(max int) bool
	// open sends the CONNECT on a reserved slot.
	open(ctx, life context.Context, req *Request) (*Conn, error)
	usable() bool
	streams() int
	idleSince() (time.Time, bool) // when it became idle; false if busy
	close() error
}

type dialCall struct {
	done chan struct{}
	err  error
}

// pool holds the connections of one key; see Client for its invariants.
type pool struct {
	c     *Client
	key   poolKey
	mu    sync.Mutex
	conns []muxConn
	// retired holds connections that stopped taking streams (GOAWAY, ping
	// lost) while streams may still run on them; closed once idle or on
	// Client.Close.
	retired []muxConn
	dial    *dialCall
}

// retireLocked moves unusable connections out of conns. Caller holds p.mu.
func (p *pool) retireLocked() {
	p.conns = slices.DeleteFunc(p.conns, func(mc muxConn) bool {
		if mc.usable() {
			return false
		}
		p.retired = append(p.retired, mc)
		return true
	})
}

func (p *pool) acquire(ctx context.Context, req *Request) (muxConn, error) {
	for {
		p.mu.Lock()
		p.retireLocked()
		for _, mc := range p.conns {
			if mc.reserve(p.c.cfg.MaxStreamsPerConn) {
				p.mu.Unlock()
				return mc, nil
			}
		}
		d := p.dial
		if d == nil {
			d = &dialCall{done: make(chan struct{})}
			p.dial = d
			p.c.mu.Lock()
			closed := p.c.closed
			if !closed {
				p.c.wg.Add(1)
			}
			p.c.mu.Unlock()
			if closed {
				p.dial = nil
				p.mu.Unlock()
				return nil, &Error{Op: "dial", Peer: req.Address.String(), Err: ErrClosed}
			}
			go p.dialOne(d, req)
		}
		p.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, d.err
			}
		case <-ctx.Done():
			return nil, &Error{Op: "dial", Peer: req.Address.String(), Err: ctx.Err()}
		}
	}
}

// dialOne makes one connection for the key, shared by every waiter. It runs
// under the client's lifetime, not a caller's context, so one caller giving
// up does not fail the others; ConnectTimeout bounds it.
func (p *pool) dialOne(d *dialCall, req *Request) {
	defer p.c.wg.Done()
	ctx, cancel := context.WithTimeout(p.c.life, p.c.cfg.ConnectTimeout)
	defer cancel()
	var mc muxConn
	var err error
	if p.key.proto == H3 {
		mc, err = p.c.dialH3(ctx, req)
	} else {
		mc, err = p.c.dialH2(ctx, req)
	}
	p.mu.Lock()
	if err == nil {
		p.conns = append(p.conns, mc)
	}
	p.dial = nil
	d.err = err
	close(d.done)
	p.mu.Unlock()
	if err != nil {
		p.c.log.Debug("tunnel dial failed", zap.Stringer("address", req.Address), zap.Error(err))
	}
}

func (p *pool) release(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retireLocked()
	p.retired = slices.DeleteFunc(p.retired, func(mc muxConn) bool {
		if mc.streams() == 0 {
			_ = mc.close()
			return true
		}
		return false
	})
	p.conns = slices.DeleteFunc(p.conns, func(mc muxConn) bool {
		if since, idle := mc.idleSince(); idle && now.Sub(since) >= p.c.cfg.IdleRelease {
			_ = mc.close()
			return true
		}
		return false
	})
}

func (p *pool) closeAll() {
	p.mu.Lock()
	conns := append(p.conns, p.retired...)
	p.conns, p.retired = nil, nil
	p.mu.Unlock()
	for _, mc := range conns {
		_ = mc.close()
	}
}

// dialTCP connects to the tunnel port and classifies failures.
func (c *Client) dialTCP(ctx context.Context, req *Request) (net.Conn, error) {
	if c.cfg.Dial != nil {
		raw, err := c.cfg.Dial(ctx, "tcp", req.Address.String(), req.SourceIP)
		if err != nil {
			return nil, dialError("dial tcp", req, err)
		}
		setTCPOptions(raw)
		return raw, nil
	}
	d := net.Dialer{
		Control:         c.cfg.Control,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 180 * time.Second, Interval: 180 * time.Second, Count: 9},
	}
	if req.SourceIP.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: req.SourceIP.AsSlice()}
	}
	raw, err := d.DialContext(ctx, "tcp", req.Address.String())
	if err != nil {
		return nil, dialError("dial tcp", req, err)
	}
	return raw, nil
}

func dialError(op string, req *Request, err error) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		err = fmt.Errorf("%w: %w", ErrConnectTimeout, err)
	}
	return &Error{Op: op, Peer: req.Address.String(), Err: err}
}

func (c *Client) dialH2(ctx context.Context, req *Request) (muxConn, error) {
	raw, err := c.dialTCP(ctx, req)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, ClientTLSConfig(req.Source, c.cfg.Bundle, req.Destinations, ALPNH2))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, dialError("tls handshake", req, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPNH2 {
		_ = raw.Close()
		return nil, &Error{Op: "tls handshake", Peer: req.Address.String(), Err: fmt.Errorf("%w: negotiated ALPN %q, want h2", ErrProtocol, p)}
	}
	cs := tc.ConnectionState()
	m := newMux(tc, &cs, false, muxSettings{
		maxFrame:     MaxFrameSize,
		streamWindow: StreamWindow,
		connWindow:   ConnectionWindow,
		headerList:   ClientHeaderLimit,
		pingInterval: PingInterval,
		pingTimeout:  PingTimeout,
	}, c.log)
	if err := m.start(); err != nil {
		m.closeWith(err)
		return nil, &Error{Op: "http2 handshake", Peer: req.Address.String(), Err: err}
	}
	peer, _ := x509svid.IDFromCert(cs.PeerCertificates[0])
	return &h2Conn{m: m, peer: peer, local: tc.LocalAddr(), remote: tc.RemoteAddr()}, nil
}
