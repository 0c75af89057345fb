// Package hbonetest is the loopback benchmark harness for package hbone:
// it sets up the same upstream behind four paths (plain TCP, plain TLS 1.3,
// our HBONE over HTTP/2 and HTTP/3, and Istio's pkg/hbone) and measures
// throughput, latency, allocations and idle memory. It is imported by
// pkg/hbone's benchmarks and by hack/bench/hbone (make bench-hbone); it is
// not for production code. All traffic stays on 127.0.0.1.
package hbonetest

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"

	"github.com/ambient-mesh/mesh/internal/meshtest"
	"github.com/ambient-mesh/mesh/pkg/hbone"
)

// Path names one way to reach the upstream.
type Path string

const (
	TCP   Path = "tcp"   // direct TCP to the upstream
	TLS   Path = "tls"   // TLS 1.3 (same config as HBONE's) straight to a TLS upstream
	H2    Path = "h2"    // our HBONE client -> our server (HTTP/2) -> TCP upstream
	H3    Path = "h3"    // same over HTTP/3
	Istio Path = "istio" // Istio's dialer -> Istio's server -> TCP upstream
)

// Paths lists every path, baselines first.
var Paths = []Path{TCP, TLS, H2, H3, Istio}

// Env is a running set of upstreams and proxies. Safe for concurrent use
// after New; Close stops everything it started.
type Env struct {
	CA     *meshtest.CA
	Client *hbone.Client

	mesh    struct{ clientTLS, serverTLS *tls.Config }
	up      net.Listener // TCP upstream
	upTLS   net.Listener // TLS upstream
	hbAddr  netip.AddrPort
	istioLn net.Listener
	istio   istiohbone.Dialer
	req     hbone.Request
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	upMu    sync.Mutex
	upConns map[net.Conn]struct{} // accepted upstream conns, closed by Close
	closers []func()
}

func init() {
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.WarnLevel) // Istio logs every stream at info
	}
}

// Options tune New; the zero value is the package defaults.
type Options struct {
	// ReadFrameSize is passed to hbone.ServerConfig (0: the default).
	ReadFrameSize uint32
}

// New starts the upstreams, our HBONE server (h2 and h3 on one port
// number) and Istio's HBONE server.
func New(opt Options) (*Env, error) {
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		return nil, err
	}
	cl, err := ca.SVID("bench", "client")
	if err != nil {
		return nil, err
	}
	sv, err := ca.SVID("bench", "server")
	if err != nil {
		return nil, err
	}
	e := &Env{CA: ca}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	dst := []spiffeid.ID{sv.ID}
	e.mesh.clientTLS = hbone.ClientTLSConfig(cl, ca.Bundle(), dst, hbone.ALPNH2)
	e.mesh.serverTLS = hbone.ServerTLSConfig(sv, ca.Bundle(), ca.TrustDomain, hbone.ALPNH2)

	if e.up, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	e.serveUpstream(e.up)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.upTLS = tls.NewListener(tl, e.mesh.serverTLS)
	e.serveUpstream(e.upTLS)

	srv, err := hbone.NewServer(hbone.ServerConfig{SVID: sv, Bundle: ca.Bundle(), DrainTimeout: time.Second, ReadFrameSize: opt.ReadFrameSize})
	if err != nil {
		return nil, err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket("udp", hl.Addr().String())
	if err != nil {
		return nil, err
	}
	e.hbAddr = netip.MustParseAddrPort(hl.Addr().String())
	e.wg.Add(2)
	go func() { defer e.wg.Done(); _ = srv.Serve(ctx, hl) }()
	go func() { defer e.wg.Done(); _ = srv.ServeH3(ctx, pc); _ = pc.Close() }()

	il, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.istioLn = tls.NewListener(il, e.mesh.serverTLS)
	isrv := istiohbone.NewServer()
	e.wg.Add(1)
	go func() { defer e.wg.Done(); _ = isrv.Serve(e.istioLn) }()
	e.closers = append(e.closers, func() { _ = isrv.Close() })
	e.istio = istiohbone.NewDialer(istiohbone.Config{ProxyAddress: il.Addr().String(), TLS: e.mesh.clientTLS})

	e.Client, err = hbone.NewClient(hbone.ClientConfig{Bundle: ca.Bundle()})
	if err != nil {
		return nil, err
	}
	e.req = hbone.Request{Source: cl, Destinations: dst, Address: e.hbAddr, Authority: e.up.Addr().String()}
	return e, nil
}

// Close stops the servers and closes the client.
func (e *Env) Close() {
	_ = e.Client.Close()
	e.cancel()
	_ = e.up.Close()
	_ = e.upTLS.Close()
	for _, f := range e.closers {
		f()
	}
	e.upMu.Lock()
	for c := range e.upConns {
		_ = c.Close()
	}
	e.upMu.Unlock()
	e.wg.Wait()
}

// Request returns a copy of the HBONE request to the upstream over proto.
func (e *Env) Request(proto hbone.Protocol) *hbone.Request {
	r := e.req
	r.Protocol = proto
	return &r
}

// Upstream protocol: the client sends one mode byte. 's' (sink): an
// 8-byte length n follows, the upstream reads n bytes and answers one
// byte. 'e' (echo): the upstream echoes until EOF.
func (e *Env) serveUpstream(ln net.Listener) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.upMu.Lock()
			if e.upConns == nil {
				e.upConns = map[net.Conn]struct{}{}
			}
			e.upConns[c] = struct{}{}
			e.upMu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer func() {
					e.upMu.Lock()
					delete(e.upConns, c)
					e.upMu.Unlock()
					_ = c.Close()
				}()
				serveOne(c)
			}()
		}
	}()
}

func serveOne(c net.Conn) {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:1]); err != nil {
		return
	}
	switch hdr[0] {
	case 's':
		if _, err := io.ReadFull(c, hdr[1:9]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint64(hdr[1:9]))
		// Hide io.Discard's ReadFrom, which would read in 8 KiB pieces
		// (one syscall each) instead of the 256 KiB buffer meant here.
		sink := struct{ io.Writer }{io.Discard}
		if m, _ := io.CopyBuffer(sink, io.LimitReader(c, n), make([]byte, 256<<10)); m != n {
			return
		}
		_, _ = c.Write([]byte{1})
	case 'e':
		_, _ = io.CopyBuffer(c, c, make([]byte, 32<<10))
	}
}

// Dial opens one stream to the upstream over p.
func (e *Env) Dial(ctx context.Context, p Path) (net.Conn, error) {
	switch p {
	case TCP:
		var d net.Dialer
		return d.DialContext(ctx, "tcp", e.up.Addr().String())
	case TLS:
		d := tls.Dialer{Config: e.mesh.clientTLS}
		return d.DialContext(ctx, "tcp", e.upTLS.Addr().String())
	case H2:
		return e.Client.Dial(ctx, e.Request(hbone.H2))
	case H3:
		return e.Client.Dial(ctx, e.Request(hbone.H3))
	case Istio:
		return e.istio.DialContext(ctx, "tcp", e.up.Addr().String())
	}
	return nil, fmt.Errorf("unknown path %q", p)
}

// Send pushes n bytes over one new stream of p and waits for the
// upstream's acknowledgement; it returns the elapsed time.
func (e *Env) Send(ctx context.Context, p Path, n int64) (time.Duration, error) {
	c, err := e.Dial(ctx, p)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return sendOn(c, n)
}

var payload = func() []byte {
	b := make([]byte, 256<<10)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}()

func sendOn(c net.Conn, n int64) (time.Duration, error) {
	start := time.Now()
	var hdr [9]byte
	hdr[0] = 's'
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	for left := n; left > 0; {
		k := min(left, int64(len(payload)))
		w, err := c.Write(payload[:k])
		if err != nil {
			return 0, err
		}
		left -= int64(w)
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, fmt.Errorf("ack: %w", err)
	}
	return time.Since(start), nil
}

// Throughput returns the best of runs single-stream transfers of n bytes,
// in Gbit/s.
func (e *Env) Throughput(ctx context.Context, p Path, n int64, runs int) (float64, error) {
	best := time.Duration(1<<63 - 1)
	for range runs {
		d, err := e.Send(ctx, p, n)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		best = min(best, d)
	}
	return gbps(n, best), nil
}

// Aggregate runs streams concurrent transfers of n bytes each over p and
// returns the total throughput in Gbit/s.
func (e *Env) Aggregate(ctx context.Context, p Path, streams int, n int64) (float64, error) {
	conns := make([]net.Conn, streams)
	for i := range conns {
		c, err := e.Dial(ctx, p)
		if err != nil {
			for _, c := range conns[:i] {
				_ = c.Close()
			}
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	start := time.Now()
	errs := make(chan error, streams)
	for _, c := range conns {
		go func() { _, err := sendOn(c, n); errs <- err }()
	}
	var err error
	for range streams {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	return gbps(int64(streams)*n, time.Since(start)), nil
}

func gbps(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e9 }

// RTT measures k echo round trips of size bytes on one stream of p and
// returns the median.
func (e *Env) RTT(ctx context.Context, p Path, size, k int) (time.Duration, error) {
	c, err := e.Dial(ctx, p)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{'e'}); err != nil {
		return 0, err
	}
	buf := make([]byte, size)
	out := payload[:size]
	ds := make([]time.Duration, 0, k)
	for i := 0; i < k+10; i++ { // 10 warm-up rounds
		t0 := time.Now()
		if _, err := c.Write(out); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, err
		}
		if i >= 10 {
			ds = append(ds, time.Since(t0))
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], nil
}

// Setup measures the median time to a usable stream (first echo byte back)
// over k fresh connections (fresh=true: a new Client each time, so TCP,
// TLS and HTTP/2 or QUIC handshakes are included) or over the pool.
func (e *Env) Setup(ctx context.Context, p Path, k int, fresh bool) (time.Duration, error) {
	ds := make([]time.Duration, 0, k)
	for range k {
		t0 := time.Now()
		var c net.Conn
		var err error
		var cl *hbone.Client
		if fresh && (p == H2 || p == H3) {
			cl, err = hbone.NewClient(hbone.ClientConfig{Bundle: e.CA.Bundle()})
			if err != nil {
				return 0, err
			}
			req := e.Request(hbone.H2)
			if p == H3 {
				req.Protocol = hbone.H3
			}
			c, err = cl.Dial(ctx, req)
		} else {
			c, err = e.Dial(ctx, p)
		}
		if err == nil {
			err = echoByte(c)
			_ = c.Close()
		}
		if cl != nil {
			_ = cl.Close()
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		ds = append(ds, time.Since(t0))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], nil
}

func echoByte(c net.Conn) error {
	if _, err := c.Write([]byte{'e', 'x'}); err != nil {
		return err
	}
	var b [1]byte
	_, err := io.ReadFull(c, b[:])
	return err
}

// AllocsPerStream is the mean number of heap allocations (client and
// server side together, this process) for one pooled stream: Dial, one
// echoed byte, Close.
func (e *Env) AllocsPerStream(ctx context.Context, p Path, k int) (float64, error) {
	if c, err := e.Dial(ctx, p); err == nil { // warm the pool
		_ = echoByte(c)
		_ = c.Close()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range k {
		c, err := e.Dial(ctx, p)
		if err != nil {
			return 0, err
		}
		err = echoByte(c)
		_ = c.Close()
		if err != nil {
			return 0, err
		}
	}
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / float64(k), nil
}

// IdleStreamKiB opens n idle streams over proto to a server whose
// upstreams are in-memory pipes, and returns the heap and stack growth per
// stream in KiB, client and server side together.
func IdleStreamKiB(ctx context.Context, proto hbone.Protocol, n int) (float64, error) {
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		return 0, err
	}
	cl, err := ca.SVID("bench", "client")
	if err != nil {
		return 0, err
	}
	sv, err := ca.SVID("bench", "server")
	if err != nil {
		return 0, err
	}
	var mu sync.Mutex
	var held []net.Conn
	srv, err := hbone.NewServer(hbone.ServerConfig{SVID: sv, Bundle: ca.Bundle(), DrainTimeout: time.Second,
		Hooks: hbone.Hooks{DialUpstream: func(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
			a, b := net.Pipe()
			mu.Lock()
			held = append(held, b)
			mu.Unlock()
			return a, nil
		}}})
	if err != nil {
		return 0, err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	pc, err := net.ListenPacket("udp", hl.Addr().String())
	if err != nil {
		return 0, err
	}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(sctx, hl) }()
	go func() { defer wg.Done(); _ = srv.ServeH3(sctx, pc); _ = pc.Close() }()
	client, err := hbone.NewClient(hbone.ClientConfig{Bundle: ca.Bundle()})
	if err != nil {
		cancel()
		return 0, err
	}
	req := &hbone.Request{Source: cl, Destinations: []spiffeid.ID{sv.ID}, Address: netip.MustParseAddrPort(hl.Addr().String()), Authority: "10.0.0.1:80", Protocol: proto}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
		_ = client.Close()
		mu.Lock()
		for _, c := range held {
			_ = c.Close()
		}
		mu.Unlock()
		cancel()
		wg.Wait()
	}()
	// Warm up: one stream, so the connection itself is not counted.
	c, err := client.Dial(ctx, req)
	if err != nil {
		return 0, err
	}
	conns = append(conns, c)
	before := inUse()
	for range n {
		c, err := client.Dial(ctx, req)
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	// Wait until the server has dialed every upstream (its side is set up).
	for deadline := time.Now().Add(10 * time.Second); ; {
		mu.Lock()
		k := len(held)
		mu.Unlock()
		if k == n+1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	after := inUse()
	return float64(after-before) / float64(n) / 1024, nil
}

func inUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
