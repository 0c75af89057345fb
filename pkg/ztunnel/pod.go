package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/ambient-mesh/mesh/pkg/hbone"
	"github.com/ambient-mesh/mesh/pkg/redirect"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/authz"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/dns"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/route"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// pod is one captured pod's proxy: three listeners in its netns, an HBONE
// client dialing from its netns with its certificate, and its connections.
//
// Concurrency: mu guards conns (every proxied connection, for draining and
// policy re-checks). ctx ends when the pod is removed; wg counts the accept
// loops, the HBONE server and every connection handler.
type pod struct {
	p      *Proxy
	info   PodInfo
	id     spiffeid.ID
	ns     netns.NsHandle
	log    *zap.Logger
	client *hbone.Client
	server *hbone.Server
	// ctx ends when the pod stops accepting (drain start); connsCtx, its
	// parent, is the context of the connections' own work (dials), which
	// ends when the drain does. A connection accepted just before the
	// drain began is served like the others, not dropped.
	ctx         context.Context
	cancel      context.CancelFunc
	connsCtx    context.Context
	cancelConns context.CancelFunc
	wg          sync.WaitGroup

	mu      sync.Mutex
	conns   map[*tracked]struct{}
	closing bool // the drain ended: no connection is tracked any more
}

// tracked is one proxied connection. For inbound ones az holds what the
// policy was evaluated on, so a policy change can re-check it.
type tracked struct {
	inbound bool
	az      authz.Conn
	close   func()
}

func startPod(p *Proxy, info PodInfo, id spiffeid.ID, ns netns.NsHandle) (*pod, error) {
	log := p.log.With(zap.String("pod", info.Namespace+"/"+info.Name))
	client, err := hbone.NewClient(hbone.ClientConfig{
		Bundle:         p.cfg.Certs,
		Logger:         log.Named("hbone-client"),
		ConnectTimeout: p.cfg.ConnectTimeout,
		Control:        nsControl(ns, redirect.SocketOptions{Mark: p.cfg.Mark}),
	})
	if err != nil {
		return nil, err
	}
	connsCtx, cancelConns := context.WithCancel(p.life)
	ctx, cancel := context.WithCancel(connsCtx)
	pd := &pod{p: p, info: info, id: id, ns: ns, log: log, client: client, ctx: ctx, cancel: cancel,
		connsCtx: connsCtx, cancelConns: cancelConns, conns: map[*tracked]struct{}{}}
	pd.server, err = hbone.NewServer(hbone.ServerConfig{
		SVID:         svidSource{certs: p.cfg.Certs, id: id, timeout: p.cfg.ConnectTimeout},
		Bundle:       p.cfg.Certs,
		TrustDomain:  p.td,
		Hooks:        hbone.Hooks{Authorize: pd.authorizeHBONE, DialUpstream: pd.dialApp},
		Logger:       log.Named("hbone-server"),
		DrainTimeout: p.cfg.DrainTimeout,
	})
	if err != nil {
		cancelConns()
		_ = client.Close()
		return nil, err
	}
	lo := redirect.SocketOptions{Mark: p.cfg.Mark, ReusePort: true}
	var lns []net.Listener
	for _, port := range []int{route.OutboundPort, route.InboundPlaintextPort, route.HBONEPort} {
		ln, err := redirect.Listen(ctx, ns, "tcp", ":"+strconv.Itoa(port), lo)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			cancelConns()
			_ = client.Close()
			return nil, fmt.Errorf("listen :%d in pod netns: %w", port, err)
		}
		lns = append(lns, ln)
	}
	if p.cfg.DNS != nil {
		if err := pd.startDNS(lo); err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			cancelConns()
			pd.wg.Wait()
			_ = client.Close()
			return nil, err
		}
	}
	pd.wg.Add(3)
	go pd.acceptLoop(lns[0], pd.outbound)
	go pd.acceptLoop(lns[1], pd.plaintextInbound)
	go func() {
		defer pd.wg.Done()
		if err := pd.server.Serve(ctx, lns[2]); err != nil && ctx.Err() == nil {
			log.Error("hbone listener failed", zap.Error(err))
		}
	}()
	return pd, nil
}

// startDNS serves the DNS proxy on 15053 (UDP and TCP) on the pod's
// loopback addresses, where the capture rules' REDIRECT delivers the pod's
// own queries (127.0.0.1, ::1), and nowhere else: a wildcard socket would
// answer UDP from other hosts on the pod IP. ::1 is skipped when the netns
// has no IPv6.
func (pd *pod) startDNS(o redirect.SocketOptions) error {
	srv := &dns.Server{Store: pd.p.cfg.Store, Network: pd.p.cfg.Network, Namespace: pd.info.Namespace, Domain: pd.p.cfg.DNS.Domain,
		Forward: pd.forwardDNS, Logger: pd.log.Named("dns")}
	type sockets struct {
		pc net.PacketConn
		ln net.Listener
	}
	var open []sockets
	closeAll := func() {
		for _, s := range open {
			_ = s.pc.Close()
			_ = s.ln.Close()
		}
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		addr := net.JoinHostPort(host, strconv.Itoa(route.DNSPort))
		pc, err := redirect.ListenPacket(pd.ctx, pd.ns, "udp", addr, o)
		if err != nil {
			if host == "::1" {
				pd.log.Debug("dns proxy without ipv6 loopback", zap.Error(err))
				continue
			}
			closeAll()
			return fmt.Errorf("listen udp %s in pod netns: %w", addr, err)
		}
		ln, err := redirect.Listen(pd.ctx, pd.ns, "tcp", addr, o)
		if err != nil {
			_ = pc.Close()
			closeAll()
			return fmt.Errorf("listen tcp %s in pod netns: %w", addr, err)
		}
		open = append(open, sockets{pc, ln})
	}
	for _, s := range open {
		pd.wg.Add(1)
		go func() {
			defer pd.wg.Done()
			defer s.pc.Close()
			defer s.ln.Close()
			if err := srv.Serve(pd.ctx, s.pc, s.ln); err != nil && pd.ctx.Err() == nil {
				pd.log.Error("dns proxy failed", zap.Error(err))
			}
		}()
	}
	return nil
}

// forwardDNS sends a query the mesh does not answer to the upstreams in
// turn, from the pod's netns with ztunnel's mark (so it is not captured
// again; the capture rules put it in its own conntrack zone).
func (pd *pod) forwardDNS(ctx context.Context, q *mdns.Msg, network string) (*mdns.Msg, error) {
	var errs []error
	for _, up := range pd.p.cfg.DNS.Upstreams {
		c, err := redirect.Dial(ctx, pd.ns, net.Dialer{}, network, up, redirect.SocketOptions{Mark: pd.p.cfg.Mark})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := dns.Exchange(ctx, q, c, network)
		_ = c.Close()
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", up, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no dns upstream configured")
	}
	return nil, errors.Join(errs...)
}

func (pd *pod) acceptLoop(ln net.Listener, handle func(net.Conn)) {
	defer pd.wg.Done()
	stop := context.AfterFunc(pd.ctx, func() { _ = ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			if pd.ctx.Err() == nil {
				pd.log.Error("accept failed", zap.Stringer("addr", ln.Addr()), zap.Error(err))
			}
			return
		}
		if h := testHookAccepted.Load(); h != nil {
			(*h)(pd)
		}
		pd.wg.Add(1)
		go func() {
			defer pd.wg.Done()
			handle(c)
		}()
	}
}

// testHookAccepted, if set, runs after each accept (tests).
var testHookAccepted atomic.Pointer[func(*pod)]

// track registers a connection; the returned func unregisters it.
func (pd *pod) track(t *tracked) (untrack func(), ok bool) {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	if pd.closing {
		return nil, false
	}
	pd.conns[t] = struct{}{}
	return func() {
		pd.mu.Lock()
		delete(pd.conns, t)
		pd.mu.Unlock()
	}, true
}

// outbound handles one connection the app made, redirected to 15001.
func (pd *pod) outbound(c net.Conn) {
	start := time.Now()
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		pd.log.Warn("outbound: no original destination", zap.Error(err))
		_ = c.Close()
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	snap := pd.p.cfg.Store.Snapshot()
	srcW := snap.WorkloadByIP(state.NetworkAddr{Network: pd.p.cfg.Network, IP: src.Addr()})
	req, err := route.Outbound(snap, route.Source{Workload: srcW, IP: src.Addr(), Network: pd.p.cfg.Network}, dst, pd.p.pick)
	if err != nil {
		pd.p.acc.Warn("connection failed", zap.String("direction", "outbound"), zap.Stringer("src.addr", src), zap.Stringer("dst.addr", dst), zap.Error(err))
		_ = c.Close()
		return
	}
	tc := &telemetry.Conn{Reporter: telemetry.Source, Src: src.String(), Dst: req.Dial.String(), HBONETarget: req.Authority,
		SrcWorkload: srcW, SrcIdentity: pd.id, DstWorkload: req.Workload, DstService: req.Service,
		MutualTLS: req.Kind == route.HBONE, Start: start}
	if len(req.Identities) > 0 {
		tc.DstIdentity = req.Identities[0]
	}
	pd.p.cfg.Metrics.Opened(tc)
	ctx, cancel := context.WithTimeout(pd.connsCtx, pd.p.cfg.ConnectTimeout)
	up, err := pd.dialOutbound(ctx, req, src)
	cancel()
	if err != nil {
		tc.ResponseFlags = telemetry.FlagConnect
		if hbone.StatusOf(err) == 401 {
			tc.ResponseFlags = telemetry.FlagDeny
		}
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		telemetry.Log(pd.p.acc, tc, 0, 0, err)
		_ = c.Close()
		return
	}
	t := &tracked{close: func() { _ = c.Close(); _ = up.Close() }}
	untrack, ok := pd.track(t)
	if !ok {
		t.close()
		return
	}
	sent, recv := pipe(c, up)
	untrack()
	pd.p.cfg.Metrics.Closed(tc, sent, recv)
	telemetry.Log(pd.p.acc, tc, sent, recv, nil)
}

func (pd *pod) dialOutbound(ctx context.Context, req *route.Request, src netip.AddrPort) (net.Conn, error) {
	if req.Kind == route.Passthrough {
		return redirect.Dial(ctx, pd.ns, net.Dialer{}, "tcp", req.Dial.String(), redirect.SocketOptions{Mark: pd.p.cfg.Mark})
	}
	svid, err := pd.p.cfg.Certs.SVID(ctx, pd.id)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", pd.id, err)
	}
	return pd.client.Dial(ctx, &hbone.Request{
		Source:       svid,
		Destinations: req.Identities,
		Address:      req.Dial,
		Authority:    req.Authority,
		Forwarded:    fmt.Sprintf("for=%q", src.String()),
	})
}

// local resolves an inbound target to this pod's workload and checks it is
// not one of ztunnel's own ports.
func (pd *pod) local(target netip.AddrPort, arrivedOn netip.Addr) (*state.Snapshot, error) {
	if arrivedOn.IsValid() && target.Addr().Unmap() != arrivedOn {
		return nil, &hbone.Error{Status: 400, Op: "validate", Peer: target.String(), Err: fmt.Errorf("target IP is not the pod's address %s", arrivedOn)}
	}
	for _, p := range route.OwnPorts {
		if target.Port() == p {
			return nil, &hbone.Error{Status: 503, Op: "validate", Peer: target.String(), Err: route.ErrLoop}
		}
	}
	return pd.p.cfg.Store.Snapshot(), nil
}

// errNoLocalWorkload: the destination is not (yet) a workload in the state,
// so the policies that apply to it are unknown; ztunnel answers 503 rather
// than guess (istio-ambient-facts §1.7).
var errNoLocalWorkload = errors.New("local workload not found")

// decide evaluates the policies of the destination workload. ok is false
// when the state does not know that workload.
func (pd *pod) decide(snap *state.Snapshot, c authz.Conn) (d authz.Decision, ok bool) {
	w := snap.WorkloadByIP(state.NetworkAddr{Network: pd.p.cfg.Network, IP: c.Dst.Addr()})
	if w == nil {
		return authz.Decision{Reason: errNoLocalWorkload.Error()}, false
	}
	return authz.Evaluate(snap.PoliciesFor(w), c), true
}

func inboundConn(in *hbone.Inbound) authz.Conn {
	return authz.Conn{Source: in.Peer, SrcIP: addrIP(in.RemoteAddr), Dst: netip.AddrPortFrom(in.TargetAddr.Addr().Unmap(), in.TargetAddr.Port())}
}

// authorizeHBONE is the HBONE server's Authorize hook.
func (pd *pod) authorizeHBONE(_ context.Context, in *hbone.Inbound) error {
	if !in.TargetAddr.IsValid() {
		return &hbone.Error{Status: 400, Op: "validate", Peer: in.Target, Err: errors.New("service hostname targets are not supported yet")}
	}
	snap, err := pd.local(in.TargetAddr, addrIP(in.LocalAddr))
	if err != nil {
		return err
	}
	c := inboundConn(in)
	d, known := pd.decide(snap, c)
	if !known {
		return &hbone.Error{Status: 503, Op: "authorize", Peer: in.Target, Err: errNoLocalWorkload}
	}
	if !d.Allow {
		tc := pd.inboundTelemetry(snap, c, in.Target, true)
		tc.Src = in.RemoteAddr.String()
		tc.ResponseFlags = telemetry.FlagDeny
		pd.p.cfg.Metrics.Opened(tc)
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		pd.p.acc.Info("connection denied", zap.String("direction", "inbound"), zap.Stringer("src.identity", in.Peer),
			zap.Stringer("src.addr", in.RemoteAddr), zap.String("dst.hbone_addr", in.Target), zap.String("policy", d.Policy), zap.String("reason", d.Reason))
		return &hbone.Error{Status: 401, Op: "authorize", Peer: in.Target, Err: fmt.Errorf("%w: %s %s", hbone.ErrUnauthorized, d.Reason, d.Policy)}
	}
	return nil
}

// dialApp is the HBONE server's DialUpstream hook: connect to the app from
// the original source IP and track the connection for policy re-checks.
func (pd *pod) dialApp(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
	c := inboundConn(in)
	tc := pd.inboundTelemetry(pd.p.cfg.Store.Snapshot(), c, in.Target, true)
	tc.Src = in.RemoteAddr.String()
	pd.p.cfg.Metrics.Opened(tc)
	up, err := pd.dialFrom(ctx, c.SrcIP, c.Dst)
	if err != nil {
		tc.ResponseFlags = telemetry.FlagConnect
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		telemetry.Log(pd.p.acc, tc, 0, 0, err)
		return nil, &hbone.Error{Status: 503, Op: "dial upstream", Peer: in.Target, Err: err}
	}
	return pd.trackInbound(up, c, tc)
}

// inboundTelemetry describes an inbound connection to this pod.
func (pd *pod) inboundTelemetry(snap *state.Snapshot, c authz.Conn, target string, mtls bool) *telemetry.Conn {
	return &telemetry.Conn{Reporter: telemetry.Destination, Src: c.SrcIP.String(), Dst: c.Dst.String(), HBONETarget: target,
		SrcWorkload: snap.WorkloadByIP(state.NetworkAddr{Network: pd.p.cfg.Network, IP: c.SrcIP}), SrcIdentity: c.Source,
		DstWorkload: snap.WorkloadByIP(state.NetworkAddr{Network: pd.p.cfg.Network, IP: c.Dst.Addr()}), DstIdentity: pd.id,
		MutualTLS: mtls, Start: time.Now()}
}

// dialFrom connects to the app at dst inside the pod netns, from src
// (IP_TRANSPARENT, ztunnel's mark: the capture rules deliver the app's
// replies back to this socket).
func (pd *pod) dialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(ctx, pd.p.cfg.ConnectTimeout)
	defer cancel()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	up, err := redirect.Dial(ctx, pd.ns, d, "tcp", dst.String(), redirect.SocketOptions{Mark: pd.p.cfg.Mark, Transparent: true})
	if err != nil {
		return nil, err
	}
	return up.(*net.TCPConn), nil
}

// appConn is an inbound connection to the app: it counts bytes each way
// and, when closed, leaves the pod's set and reports the connection. It
// hides *net.TCPConn's ReadFrom/WriteTo so every byte passes Read/Write.
type appConn struct {
	tcp     *net.TCPConn
	rc      syscall.RawConn // for TryWrite, which only the HBONE reader calls
	toApp   atomic.Int64    // client -> app (request direction)
	fromApp atomic.Int64    // app -> client
	once    sync.Once
	onClose func(toApp, fromApp int64)
}

func (a *appConn) Read(b []byte) (int, error) {
	n, err := a.tcp.Read(b)
	a.fromApp.Add(int64(n))
	return n, err
}

func (a *appConn) Write(b []byte) (int, error) {
	n, err := a.tcp.Write(b)
	a.toApp.Add(int64(n))
	return n, err
}

// TryWrite lets the HBONE connection's reader write to the app without
// waking the stream's copier (hbone.TryWriter); it never blocks.
func (a *appConn) TryWrite(b []byte) (int, error) {
	if a.rc == nil {
		rc, err := a.tcp.SyscallConn()
		if err != nil {
			return 0, err
		}
		a.rc = rc
	}
	n, err := hbone.TryWrite(a.rc, b)
	a.toApp.Add(int64(n))
	return n, err
}

func (a *appConn) CloseWrite() error                  { return a.tcp.CloseWrite() }
func (a *appConn) LocalAddr() net.Addr                { return a.tcp.LocalAddr() }
func (a *appConn) RemoteAddr() net.Addr               { return a.tcp.RemoteAddr() }
func (a *appConn) SetDeadline(t time.Time) error      { return a.tcp.SetDeadline(t) }
func (a *appConn) SetReadDeadline(t time.Time) error  { return a.tcp.SetReadDeadline(t) }
func (a *appConn) SetWriteDeadline(t time.Time) error { return a.tcp.SetWriteDeadline(t) }

func (a *appConn) Close() error {
	err := a.tcp.Close()
	a.once.Do(func() { a.onClose(a.toApp.Load(), a.fromApp.Load()) })
	return err
}

func (pd *pod) trackInbound(up *net.TCPConn, c authz.Conn, tc *telemetry.Conn) (*appConn, error) {
	t := &tracked{inbound: true, az: c, close: func() { _ = up.Close() }}
	untrack, ok := pd.track(t)
	if !ok {
		_ = up.Close()
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		return nil, &hbone.Error{Status: 503, Op: "dial upstream", Peer: c.Dst.String(), Err: errors.New("pod is draining")}
	}
	return &appConn{tcp: up, onClose: func(toApp, fromApp int64) {
		untrack()
		pd.p.cfg.Metrics.Closed(tc, toApp, fromApp)
		telemetry.Log(pd.p.acc, tc, toApp, fromApp, nil)
	}}, nil
}

// plaintextInbound handles a non-HBONE connection redirected to 15006. It is
// authorized with no peer identity, so a STRICT PeerAuthentication (a DENY
// on not_principals presence, from istiod) refuses it and PERMISSIVE lets it
// through.
func (pd *pod) plaintextInbound(c net.Conn) {
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		pd.log.Warn("inbound plaintext: no original destination", zap.Error(err))
		_ = c.Close()
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	snap, err := pd.local(dst, netip.Addr{})
	if err != nil {
		pd.p.acc.Warn("connection failed", zap.String("direction", "inbound"), zap.Stringer("src.addr", c.RemoteAddr()), zap.Stringer("dst.addr", dst), zap.Error(err))
		_ = c.Close()
		return
	}
	az := authz.Conn{SrcIP: addrIP(c.RemoteAddr()), Dst: dst}
	tc := pd.inboundTelemetry(snap, az, "", false)
	tc.Src = c.RemoteAddr().String()
	pd.p.cfg.Metrics.Opened(tc)
	d, known := pd.decide(snap, az)
	if !known {
		tc.ResponseFlags = telemetry.FlagConnect
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		pd.p.acc.Warn("connection failed", zap.String("direction", "inbound"), zap.Stringer("src.addr", c.RemoteAddr()), zap.Stringer("dst.addr", dst), zap.Error(errNoLocalWorkload))
		_ = c.Close()
		return
	}
	if !d.Allow {
		tc.ResponseFlags = telemetry.FlagDeny
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		pd.p.acc.Info("connection denied", zap.String("direction", "inbound"), zap.Stringer("src.addr", c.RemoteAddr()), zap.Stringer("dst.addr", dst),
			zap.String("policy", d.Policy), zap.String("reason", d.Reason))
		_ = c.Close()
		return
	}
	up, err := pd.dialFrom(pd.connsCtx, az.SrcIP, dst)
	if err != nil {
		tc.ResponseFlags = telemetry.FlagConnect
		pd.p.cfg.Metrics.Closed(tc, 0, 0)
		telemetry.Log(pd.p.acc, tc, 0, 0, err)
		_ = c.Close()
		return
	}
	app, err := pd.trackInbound(up, az, tc)
	if err != nil {
		_ = c.Close()
		return
	}
	pipe(c, app)
}

// recheck closes inbound connections the current policies deny.
func (pd *pod) recheck(snap *state.Snapshot) {
	pd.mu.Lock()
	var deny []*tracked
	for t := range pd.conns {
		if !t.inbound {
			continue
		}
		// A workload missing from the state is left alone: its removal is
		// the node agent's RemovePod, not a policy decision.
		if d, known := pd.decide(snap, t.az); known && !d.Allow {
			deny = append(deny, t)
		}
	}
	pd.mu.Unlock()
	for _, t := range deny {
		pd.log.Info("connection closed by policy change", zap.Stringer("src.identity", t.az.Source), zap.Stringer("src.addr", t.az.SrcIP), zap.Stringer("dst.addr", t.az.Dst))
		t.close()
	}
}

// stopAndDrain closes the listeners, waits up to DrainTimeout for the
// connections (those accepted before the listeners closed included) to
// end, closes what is left, and releases the pod.
func (pd *pod) stopAndDrain() {
	pd.cancel()
	done := make(chan struct{})
	go func() {
		pd.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(pd.p.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		pd.stopTracking()
	case <-timer.C:
		left := pd.stopTracking()
		pd.log.Info("drain deadline reached, closing connections", zap.Int("connections", len(left)))
		for _, t := range left {
			t.close()
		}
		<-done
	}
	_ = pd.client.Close()
	_ = pd.ns.Close()
}

// stopTracking ends the pod's connections' context (dials still under way
// give up) and returns the connections still tracked; none is tracked
// after it.
func (pd *pod) stopTracking() []*tracked {
	pd.mu.Lock()
	pd.closing = true
	left := make([]*tracked, 0, len(pd.conns))
	for t := range pd.conns {
		left = append(left, t)
	}
	pd.mu.Unlock()
	pd.cancelConns()
	return left
}
