package waypoint

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"

	"go.uber.org/zap"
)

// mirror sends a copy of r to the mirror backend, fire-and-forget: the copy
// is built here (headers and the buffered body), sent from its own
// goroutine under its own deadline, and its answer discarded. It never
// delays or alters the primary request. A request whose body was too large
// to buffer is not mirrored, and mirrors beyond maxMirrorsInFlight are
// dropped.
func (p *Proxy) mirror(mi *mirror, r *http.Request, c *call) {
	if mi.backend.invalid || (mi.fraction < 1_000_000 && rand.Uint32N(1_000_000) >= mi.fraction) {
		return
	}
	if c.hasBody && c.body == nil {
		p.log.Debug("mirror skipped: request body not buffered", zap.String("backend", mi.backend.key))
		return
	}
	select {
	case p.mirrorCh <- struct{}{}:
	default:
		p.log.Debug("mirror dropped: too many in flight", zap.String("backend", mi.backend.key))
		return
	}
	c.bodyShared = true // the mirror's goroutine reads it
	ctx, cancel := context.WithTimeout(context.Background(), mirrorTimeout)
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.Body = http.NoBody
	if len(c.body) > 0 {
		out.Body = io.NopCloser(bytes.NewReader(c.body))
		out.ContentLength = int64(len(c.body))
	}
	for _, h := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"} {
		out.Header.Del(h)
	}
	out.URL.Scheme = "http"
	tr := p.h1
	if p.upstreamH2(c.port, mi.backend) {
		tr = p.h2c
	}
	snap := c.snap
	p.mirrors.Add(1)
	go func() {
		defer p.mirrors.Done()
		defer func() { <-p.mirrorCh }()
		defer cancel()
		ep, err := p.lb.pick(snap, mi.backend)
		if err != nil {
			p.log.Debug("mirror failed", zap.String("backend", mi.backend.key), zap.Error(err))
			return
		}
		out.URL.Host = ep.addr.String()
		resp, err := tr.RoundTrip(out)
		if err != nil {
			p.log.Debug("mirror failed", zap.String("backend", mi.backend.key), zap.Error(err))
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}()
}
