package waypoint

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"istio.io/istio/pkg/workloadapi"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/hbone"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// Defaults of Config.
const (
	DefaultHBONEPort     = 15008
	DefaultMaxReplayBody = 64 << 10
	DefaultDrainTimeout  = 5 * time.Second
	// maxMirrorsInFlight bounds concurrent mirror requests; beyond it
	// mirrors are dropped rather than queued (they must never slow the
	// primary).
	maxMirrorsInFlight = 256
	mirrorTimeout      = 10 * time.Second
)

// Config configures a Proxy. Name, Addresses, Routes, SVID and Bundle are
// required.
type Config struct {
	// Name is the waypoint's Gateway, "<namespace>/<name>": a Service is
	// served only when its ServiceConfig lists it.
	Name string
	// Addresses is the istio.workload.Address state (Services, Workloads).
	Addresses *state.Store
	// Routes is the ServiceConfig table.
	Routes *Routes
	// SVID is the waypoint's own certificate, presented to clients and to
	// backends alike; Bundle is the mesh trust bundle.
	SVID   x509svid.Source
	Bundle x509bundle.Source
	// TrustDomain of the mesh: clients must belong to it. Zero:
	// cluster.local. (Set, it also keeps New from waiting for the first
	// certificate.)
	TrustDomain spiffeid.TrustDomain
	// Network of the waypoint; VIP and pod IP lookups use it.
	Network string
	// HBONEPort is the tunnel port of backend pods. Zero: 15008.
	HBONEPort uint16
	// Dial, if set, opens the TCP connection of each outbound HBONE tunnel
	// (hbone.ClientConfig.Dial); tests redirect podIP:15008 with it.
	Dial func(ctx context.Context, network, address string, local netip.Addr) (net.Conn, error)
	// MaxReplayBody is the largest request body buffered so that the request
	// can be retried or mirrored. Zero: 64 KiB.
	MaxReplayBody int
	// DrainTimeout bounds graceful shutdown once Serve's context ends.
	// Zero: 5 s.
	DrainTimeout time.Duration
	// Metrics, if set, records Istio's request and TCP metrics.
	Metrics *Metrics
	// Telemetry, if set, exports request spans and
	// http.server.request.duration over OTLP (TelemetryTypeURL resources
	// configure it). Nil: no spans; traceparent still gets a new span id.
	Telemetry *Telemetry
	// Logger for the proxy's own events; AccessLog, if set, gets one line
	// per request and per TCP connection while the Telemetry (if any) has
	// the access log on.
	Logger    *zap.Logger
	AccessLog *zap.Logger
}

// Proxy is the waypoint's L7 proxy. Build it with New, run it with Serve.
//
// Concurrency: the route table and address state are read from immutable
// snapshots per request. The upstream transports (one HTTP/1.1 keep-alive
// pool and one h2c transport) and the HBONE client pool are shared by all
// requests. mirrors counts mirror goroutines, which Serve waits for.
type Proxy struct {
	cfg     Config
	log     *zap.Logger
	access  *zap.Logger
	hsrv    *hbone.Server
	client  *hbone.Client
	h1, h2c *http.Transport
	h1p     *h1Pool // plain HTTP/1.1 requests (usesH1Pool); h1 for the rest
	lb      balancer
	handler http.Handler

	targets  sync.Map // targetKey -> *targetState: circuit-breaker and outlier state
	streams  atomic.Pointer[streamListener]
	h1s      h1conns // the streams serveH1 serves
	mirrors  sync.WaitGroup
	mirrorCh chan struct{} // semaphore of maxMirrorsInFlight
}

// New checks cfg and builds a Proxy.
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Addresses == nil || cfg.Routes == nil:
		return nil, errors.New("waypoint: Config.Addresses and Config.Routes are required")
	case cfg.SVID == nil || cfg.Bundle == nil:
		return nil, errors.New("waypoint: Config.SVID and Config.Bundle are required")
	}
	if ns, n, ok := cutName(cfg.Name); !ok || ns == "" || n == "" {
		return nil, fmt.Errorf("waypoint: Config.Name %q is not <namespace>/<name>", cfg.Name)
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = DefaultHBONEPort
	}
	if cfg.MaxReplayBody == 0 {
		cfg.MaxReplayBody = DefaultMaxReplayBody
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	access := cfg.AccessLog
	if access == nil {
		access = zap.NewNop()
	}
	p := &Proxy{cfg: cfg, log: log.Named("waypoint"), access: access, mirrorCh: make(chan struct{}, maxMirrorsInFlight)}
	var err error
	p.client, err = hbone.NewClient(hbone.ClientConfig{Bundle: cfg.Bundle, Logger: log, Dial: cfg.Dial})
	if err != nil {
		return nil, err
	}
	p.hsrv, err = hbone.NewServer(hbone.ServerConfig{
		SVID: cfg.SVID, Bundle: cfg.Bundle, TrustDomain: cfg.TrustDomain, Logger: log, DrainTimeout: cfg.DrainTimeout,
		Hooks: hbone.Hooks{Takeover: p.takeover, DialUpstream: p.admit},
	})
	if err != nil {
		_ = p.client.Close()
		return nil, err
	}
	p.h1, p.h2c = p.transports()
	p.h1p = &h1Pool{dial: func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := p.dialEndpoint(ctx, addr)
		if err != nil {
			return nil, err
		}
		return abortOnClose{c}, nil
	}}
	p.handler = p.reverseProxy()
	return p, nil
}

func cutName(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return "", "", false
}

// stream is one accepted HBONE stream to a Service port of this waypoint.
type stream struct {
	in      *hbone.Inbound
	svc     *service             // its ServiceConfig
	port    *port                // the port's routes
	svcAddr *workloadapi.Service // its Address resource
	src     *workloadapi.Workload
	srcAddr string
}

// takeover is the HBONE Takeover hook: it resolves the target (503 when
// unknown or not served by this waypoint) and hands streams to HTTP ports
// to the HTTP server on the stream itself. TCP ports return nil, so the
// HBONE server runs admit (connect the backend before answering 200).
func (p *Proxy) takeover(_ context.Context, in *hbone.Inbound) (func(context.Context, net.Conn), error) {
	st, err := p.resolve(in)
	if err != nil {
		return nil, err
	}
	if st.port.protocol == waypointv1alpha1.Protocol_TCP {
		return nil, nil
	}
	ln := p.streams.Load()
	if ln == nil {
		return nil, &hbone.Error{Status: http.StatusServiceUnavailable, Op: "admit", Peer: in.Target, Err: errors.New("waypoint not serving")}
	}
	select {
	case <-ln.done:
		return nil, refuse(in, http.StatusServiceUnavailable, "waypoint draining")
	default:
	}
	if st.port.protocol == waypointv1alpha1.Protocol_HTTP {
		return func(ctx context.Context, c net.Conn) { p.serveH1(ctx, st, c, ln) }, nil
	}
	return func(ctx context.Context, c net.Conn) { ln.serve(ctx, st, c) }, nil
}

// admit is the HBONE DialUpstream hook for TCP ports: authorize, then
// connect an L4 backend.
func (p *Proxy) admit(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
	st, err := p.resolve(in)
	if err != nil {
		return nil, err
	}
	if st.port.protocol != waypointv1alpha1.Protocol_TCP {
		return nil, refuse(in, http.StatusServiceUnavailable, "port %d is served over HTTP/2 HBONE only", st.port.port)
	}
	if ok, by := authorize(st.svc.authz, newAuthzRequest(in.Peer, st.port.port, nil)); !ok {
		return nil, refuse(in, http.StatusUnauthorized, "denied by %s", by)
	}
	return p.dialTCP(ctx, st)
}

func refuse(in *hbone.Inbound, status int, why string, args ...any) error {
	return &hbone.Error{Status: status, Op: "admit", Peer: in.Target, Err: fmt.Errorf(why, args...)}
}

// resolve finds the Service the stream targets and its config.
func (p *Proxy) resolve(in *hbone.Inbound) (*stream, error) {
	snap := p.cfg.Addresses.Snapshot()
	var svcAddr *workloadapi.Service
	var cfg *service
	if in.TargetAddr.IsValid() {
		svcAddr = snap.ServiceByIP(state.NetworkAddr{Network: p.cfg.Network, IP: in.TargetAddr.Addr()})
		if svcAddr == nil {
			if snap.WorkloadByIP(state.NetworkAddr{Network: p.cfg.Network, IP: in.TargetAddr.Addr()}) != nil {
				return nil, refuse(in, http.StatusServiceUnavailable, "pod-addressed traffic is not served by this waypoint (workload waypoints are not supported)")
			}
			return nil, refuse(in, http.StatusServiceUnavailable, "no service has address %s", in.TargetAddr.Addr())
		}
		cfg = p.cfg.Routes.lookup(state.ServiceKey(svcAddr))
	} else {
		// host:port: the service hostname (several namespaces may declare
		// it; take the one bound to this waypoint).
		for _, s := range snap.ServicesByHostname(in.Host) {
			if c := p.cfg.Routes.lookup(state.ServiceKey(s)); c != nil && c.waypoints[p.cfg.Name] {
				svcAddr, cfg = s, c
				break
			}
		}
		if svcAddr == nil {
			return nil, refuse(in, http.StatusServiceUnavailable, "no service %s bound to waypoint %s", in.Host, p.cfg.Name)
		}
	}
	switch {
	case cfg == nil:
		return nil, refuse(in, http.StatusServiceUnavailable, "service %s has no waypoint configuration", state.ServiceKey(svcAddr))
	case !cfg.waypoints[p.cfg.Name]:
		return nil, refuse(in, http.StatusServiceUnavailable, "service %s does not use waypoint %s", cfg.key, p.cfg.Name)
	}
	pt := cfg.ports[uint32(in.Port)]
	if pt == nil {
		return nil, refuse(in, http.StatusServiceUnavailable, "service %s has no port %d", cfg.key, in.Port)
	}
	st := &stream{in: in, svc: cfg, port: pt, svcAddr: svcAddr}
	if in.RemoteAddr != nil {
		st.srcAddr = in.RemoteAddr.String()
		if ap, err := netip.ParseAddrPort(st.srcAddr); err == nil {
			st.src = snap.WorkloadByIP(state.NetworkAddr{Network: p.cfg.Network, IP: ap.Addr()})
		}
	}
	return st, nil
}

// dialError marks a failure to open the tunnel to an endpoint (retriable
// as a connect failure, 503 UF).
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dialEndpoint opens an HBONE stream to the workload at addr (its
// podIP:targetPort) through its pod's port 15008, presenting the
// waypoint's certificate and expecting the workload's identity.
func (p *Proxy) dialEndpoint(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, &dialError{fmt.Errorf("endpoint address %q: %w", addr, err)}
	}
	w := p.cfg.Addresses.Snapshot().WorkloadByIP(state.NetworkAddr{Network: p.cfg.Network, IP: ap.Addr()})
	if w == nil {
		return nil, &dialError{fmt.Errorf("endpoint %s: no workload has this address", addr)}
	}
	id, err := state.Identity(w)
	if err != nil {
		return nil, &dialError{err}
	}
	return p.dialHBONE(ctx, ap, id)
}

func (p *Proxy) dialHBONE(ctx context.Context, ap netip.AddrPort, id spiffeid.ID) (net.Conn, error) {
	svid, err := p.cfg.SVID.GetX509SVID()
	if err != nil {
		return nil, &dialError{fmt.Errorf("waypoint certificate: %w", err)}
	}
	c, err := p.client.Dial(ctx, &hbone.Request{
		Source:       svid,
		Destinations: []spiffeid.ID{id},
		Address:      netip.AddrPortFrom(ap.Addr(), p.cfg.HBONEPort),
		Authority:    ap.String(),
	})
	if err != nil {
		return nil, &dialError{err}
	}
	return c, nil
}

// Serve accepts HBONE on ln (a TCP listener; TLS is done here) until ctx
// ends, then drains like ztunnel: stop accepting, GOAWAY and graceful
// HTTP shutdown until DrainTimeout, then force-close. It returns nil
// after a drain caused by ctx. A Proxy serves one listener at a time.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	streams := newStreamListener(ln.Addr())
	if !p.streams.CompareAndSwap(nil, streams) {
		return errors.New("waypoint: Serve is already running")
	}
	defer p.streams.Store(nil)
	p.h1s.draining.Store(false)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           p.handler,
		Protocols:         &protocols,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       time.Hour, // Envoy's HBONE idle timeout; the tunnel has its own pings
		ErrorLog:          zap.NewStdLog(p.log.Named("http")),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*streamConn); ok {
				return context.WithValue(ctx, streamKey{}, sc.st)
			}
			return ctx
		},
	}
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Serve(streams) }()

	serveEnded := make(chan struct{})
	shutdownDone := make(chan struct{})
	go func() {
		defer close(shutdownDone)
		select {
		case <-ctx.Done():
		case <-serveEnded:
		}
		p.h1s.drain()
		dctx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
		defer cancel()
		if err := hs.Shutdown(dctx); err != nil {
			p.log.Warn("drain deadline passed, closing http connections", zap.Error(err))
		}
		_ = hs.Close()
	}()
	p.log.Info("serving", zap.String("waypoint", p.cfg.Name), zap.Stringer("address", ln.Addr()))
	err := p.hsrv.Serve(ctx, ln)
	close(serveEnded)
	<-shutdownDone
	<-httpDone
	p.mirrors.Wait()
	p.h1.CloseIdleConnections()
	p.h1p.closeIdle(false)
	p.h2c.CloseIdleConnections()
	p.log.Info("stopped", zap.String("waypoint", p.cfg.Name))
	return err
}

// Close releases the outbound HBONE connections. Call it after Serve
// returned.
func (p *Proxy) Close() error {
	p.h1.CloseIdleConnections()
	p.h1p.closeIdle(true)
	p.h2c.CloseIdleConnections()
	return p.client.Close()
}
