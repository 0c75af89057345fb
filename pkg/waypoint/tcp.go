package waypoint

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// dialTCP is the L4 path of a TCP port: pick a TCPRoute backend by weight,
// an endpoint round-robin, and open the HBONE stream to it; the HBONE
// server then copies both ways. Failures answer 503.
func (p *Proxy) dialTCP(ctx context.Context, st *stream) (net.Conn, error) {
	t := st.port.tcp
	wb := pickWeighted(t.backends, t.total)
	if wb == nil || wb.backend.invalid {
		return nil, refuse(st.in, http.StatusServiceUnavailable, "tcp route %s: no valid backend", t.name)
	}
	snap := p.cfg.Addresses.Snapshot()
	ep, err := p.lb.pick(snap, wb.backend)
	if err != nil {
		return nil, refuse(st.in, http.StatusServiceUnavailable, "backend %s: %w", wb.backend.key, err)
	}
	conn, err := p.dialHBONE(ctx, ep.addr, ep.identity)
	if err != nil {
		return nil, refuse(st.in, http.StatusServiceUnavailable, "backend %s endpoint %s: %w", wb.backend.key, ep.addr, err)
	}
	tc := &telemetry.Conn{
		Reporter: Reporter, Src: st.srcAddr, Dst: ep.addr.String(), HBONETarget: st.in.Target,
		SrcWorkload: st.src, SrcIdentity: st.in.Peer,
		DstWorkload: ep.workload, DstService: snap.Service(wb.backend.key), DstIdentity: ep.identity,
		MutualTLS: true, Start: time.Now(), Overrides: p.cfg.Telemetry.state().metricOverrides(),
	}
	m := p.cfg.Metrics.tcpMetrics()
	m.Opened(tc)
	return &countingConn{Conn: conn, done: func(sent, recv int64) {
		// sent: client -> backend (what the client sent); recv: back.
		m.Closed(tc, sent, recv)
		if p.cfg.Telemetry.state().accessLogOn() {
			telemetry.Log(p.access, tc, sent, recv, nil)
		}
	}}, nil
}

// countingConn counts the bytes of an L4 stream and reports them once on
// Close.
type countingConn struct {
	net.Conn
	written, read atomic.Int64
	once          sync.Once
	done          func(written, read int64)
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *countingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.done(c.written.Load(), c.read.Load()) })
	return err
}
