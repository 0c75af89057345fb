package waypoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errTryTimeout: one try outlived backend_request_timeout (504 UT).
var errTryTimeout = errors.New("upstream request timeout")

// roundTripper is the reverse proxy's transport: it picks an endpoint per
// try (round-robin, avoiding endpoints already tried when others exist),
// applies the per-try timeout, and retries connect failures and retriable
// statuses with jittered exponential backoff, as far as the request is
// replayable.
type roundTripper struct{ p *Proxy }

func (t roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	c, _ := req.Context().Value(callKey{}).(*call)
	if c == nil {
		return nil, errors.New("waypoint: request without routing state")
	}
	return t.p.roundTrip(req, c)
}

// roundTrip sends req, c's request, with c's retry policy: each try to an
// endpoint picked by the balancer, through the h1Pool where it can.
func (p *Proxy) roundTrip(req *http.Request, c *call) (*http.Response, error) {
	tr := p.h1
	if c.h2 {
		tr = p.h2c
	}
	rt := c.route
	tries := 1
	if c.body != nil { // replayable: no body, or a buffered one
		tries += rt.retry.attempts
	}
	var triedBuf [4]*endpoint
	tried := triedBuf[:0]
	ref := c.backend.backend
	oneShot := ref.policy.connectionPool().GetMaxRequestsPerConnection() == 1
	releaseRetry := func() {}
	defer func() { releaseRetry() }()
	for try := 0; ; try++ {
		last := try+1 >= tries
		ep, n, err := p.pickAvoiding(c, tried)
		if err != nil {
			return nil, err
		}
		tried = append(tried, ep)
		c.endpoint, c.attempts = ep, try+1

		ctx, cancel := req.Context(), context.CancelFunc(func() {})
		if rt.tryTimeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, rt.tryTimeout)
		}
		out := req
		// The h1Pool takes what keeps its connection (oneShot closes it).
		pooled := usesH1Pool(req, c) && !oneShot
		if rt.tryTimeout > 0 || !pooled {
			if !pooled && c.relay != nil { // the Transports' 1xx hook
				ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: c.relay.got1xx})
			}
			out = req.WithContext(ctx) // shallow copy; the URL is ours below
			u := *req.URL
			out.URL = &u
		}
		// Else the h1Pool takes forward's outbound request (its URL a
		// copy already) as it is, but for the endpoint, which
		// each try sets, and the body, which the pool sets from c.body.
		out.URL.Host = ep.host
		out.Close = out.Close || oneShot
		releaseConn, err := p.connection(ctx, ref, c.h2)
		if err != nil {
			// Still waiting for a connection when the try or the request
			// ended: nothing reached the endpoint.
			cancel()
			if rt.tryTimeout > 0 && ctx.Err() != nil && req.Context().Err() == nil {
				err = errTryTimeout
			}
			return nil, err
		}
		ep.active.Add(1)
		var resp *http.Response
		if pooled {
			resp, err = p.h1p.roundTrip(out, c.body, c.relay)
		} else {
			c.bodyShared = true // the Transport may write it after the answer came
			if body := c.body; body != nil && (try > 0 || len(body) > 0) {
				// The buffered body, on every try: as a reader net/http
				// knows is in memory (it goes out with the head, in one
				// write), and again for the Transport's own retries.
				out.Body = http.NoBody
				if len(body) > 0 {
					out.Body = io.NopCloser(bytes.NewReader(body))
					out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
				}
			}
			resp, err = tr.RoundTrip(out)
		}
		if err != nil {
			ep.active.Add(-1)
			releaseConn()
			cancel()
			tryTimedOut := rt.tryTimeout > 0 && ctx.Err() != nil && req.Context().Err() == nil
			if tryTimedOut {
				err = errTryTimeout
			}
			var de *dialError
			var retriable bool
			switch {
			case tryTimedOut:
				retriable = rt.retry.timeout()
				p.observe(ref, ep, n, http.StatusGatewayTimeout, false)
			case errors.As(err, &de):
				retriable = rt.retry.connectFailure()
				p.observe(ref, ep, n, 0, true)
			default:
				retriable = rt.retry.reset()
			}
			if last || !retriable || req.Context().Err() != nil {
				return nil, err
			}
			if !p.takeRetry(ref, &releaseRetry) {
				return nil, err
			}
		} else {
			p.observe(ref, ep, n, resp.StatusCode, false)
			if !last && rt.retry.status(resp.StatusCode) && !p.takeRetry(ref, &releaseRetry) {
				last = true // the retry budget is spent: this answer stands
			}
			if last || !rt.retry.status(resp.StatusCode) {
				if resp.StatusCode == http.StatusSwitchingProtocols {
					// An upgraded connection (WebSocket): the reverse proxy
					// needs its body as the raw connection, so it is not
					// wrapped; the try's context ends with the request's.
					context.AfterFunc(req.Context(), func() { cancel(); releaseConn() })
					ep.active.Add(-1)
					return resp, nil
				}
				if c.rec != nil && resp.ContentLength > 0 && !eventStream(resp.Header) {
					// The reverse proxy will not flush this one itself
					// (FlushInterval 0): the recorder does.
					c.rec.stream = true
					if b, ok := resp.Body.(*h1Body); ok {
						// As Envoy: the headers leave with the body bytes
						// that came with them, or alone at once.
						c.rec.body = bodyLate
						if b.pc.br.Buffered() > 0 {
							c.rec.body = bodyBuffered
						}
					}
				}
				c.answer = cancelBody{ReadCloser: resp.Body, cancel: cancel, active: ep.active, release: releaseConn, rec: c.rec}
				resp.Body = &c.answer // one answer per call: no allocation
				return resp, nil
			}
			// Retriable status: drop this answer (reading a little of it
			// lets the connection be reused) and try again.
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
			_ = resp.Body.Close()
			ep.active.Add(-1)
			releaseConn()
			cancel()
		}
		if err := sleepBackoff(req.Context(), rt.retry.backoff, try); err != nil {
			return nil, err
		}
	}
}

// takeRetry takes a slot of the backend's retry budget (max_retries),
// releasing the one this request held; false: no retry.
func (p *Proxy) takeRetry(ref backendRef, held *func()) bool {
	release, ok := p.retryBudget(ref)
	if !ok {
		return false
	}
	(*held)()
	*held = release
	return true
}

// pickAvoiding picks the next endpoint by the backend's balancer, skipping
// ejected endpoints (outlier detection) and those already tried for this
// request (Istio's default previous_hosts retry predicate) while others
// remain. It also returns the number of endpoints.
func (p *Proxy) pickAvoiding(c *call, tried []*endpoint) (*endpoint, int, error) {
	ref := c.backend.backend
	set := p.lb.endpoints(c.snap, ref)
	n := len(set.eps)
	if n == 0 {
		return nil, 0, errNoEndpoints
	}
	var now time.Time
	if ref.policy.outlierPolicy() != nil {
		now = time.Now()
	}
	var healthyTried, anyPick *endpoint
	for range n + len(tried) + 1 {
		e, err := set.pick()
		if err != nil {
			return nil, 0, err
		}
		if anyPick == nil {
			anyPick = e
		}
		if p.ejected(ref, e, n, now) {
			continue
		}
		seen := false
		for _, t := range tried {
			seen = seen || t.addr == e.addr
		}
		if !seen {
			return e, n, nil
		}
		if healthyTried == nil {
			healthyTried = e
		}
	}
	if healthyTried != nil {
		return healthyTried, n, nil
	}
	return anyPick, n, nil // every endpoint is ejected
}

// sleepBackoff waits base·2^try, capped at 10·base, with jitter (half of
// it fixed, half random), or until ctx ends.
func sleepBackoff(ctx context.Context, base time.Duration, try int) error {
	d := base << min(try, 16)
	d = min(d, base*maxBackoffFactor)
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cancelBody releases a try's context, its endpoint's in-flight count and
// its connection slot once its response body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel  context.CancelFunc
	active  *atomic.Int64
	release func()
	rec     *recorder // its recorder stops flushing on its own once the copy is over
	once    sync.Once
}

func (b *cancelBody) Close() error {
	if b.rec != nil {
		b.rec.endStream()
	}
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.cancel()
		b.active.Add(-1)
		b.release()
	})
	return err
}

// eventStream tells whether the reverse proxy takes resp for server-sent
// events (and then flushes it itself), as httputil.ReverseProxy decides.
func eventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	if !strings.Contains(strings.ToLower(ct), "event-stream") {
		return false
	}
	base, _, _ := mime.ParseMediaType(ct)
	return base == "text/event-stream"
}
