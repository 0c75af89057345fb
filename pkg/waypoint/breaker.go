package waypoint

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// Envoy's defaults where the DestinationRule leaves them unset.
const (
	defaultBaseEjection  = 30 * time.Second
	defaultInterval      = 10 * time.Second
	defaultMaxEjectedPct = 10
	// maxEjectionTime is Envoy's max_ejection_time default, which Istio
	// does not set: an ejection never lasts longer (or base_ejection_time
	// when that is longer).
	maxEjectionTime = 300 * time.Second
)

// outlierPolicy is a compiled OutlierDetection.
type outlierPolicy struct {
	consecutive5xx, consecutiveGateway uint32
	baseEjection, interval             time.Duration
	maxEjectedPct, minHealthPct        uint32
}

// ejectionTime is how long the k-th ejection in a row lasts: Envoy's
// base_ejection_time x k, capped at max_ejection_time.
func (od *outlierPolicy) ejectionTime(k int) time.Duration {
	return min(time.Duration(k)*od.baseEjection, max(maxEjectionTime, od.baseEjection))
}

func compileOutlier(od *waypointv1alpha1.OutlierDetection, at string, bad badFunc) (*outlierPolicy, error) {
	if od == nil || (od.GetConsecutive_5XxErrors() == 0 && od.GetConsecutiveGatewayErrors() == 0) {
		return nil, nil
	}
	base, err := duration(od.GetBaseEjectionTime(), at+".base_ejection_time", bad)
	if err != nil {
		return nil, err
	}
	interval, err := duration(od.GetInterval(), at+".interval", bad)
	if err != nil {
		return nil, err
	}
	if interval <= 0 {
		interval = defaultInterval
	}
	if od.GetMaxEjectionPercent() > 100 || od.GetMinHealthPercent() > 100 {
		return nil, bad(at, "percentages must be 0..100")
	}
	if base == 0 {
		base = defaultBaseEjection
	}
	maxPct := od.GetMaxEjectionPercent()
	if maxPct == 0 {
		maxPct = defaultMaxEjectedPct
	}
	return &outlierPolicy{consecutive5xx: od.GetConsecutive_5XxErrors(), consecutiveGateway: od.GetConsecutiveGatewayErrors(),
		baseEjection: base, interval: interval, maxEjectedPct: maxPct, minHealthPct: od.GetMinHealthPercent()}, nil
}

// targetKey names a backend (Service, subset): circuit-breaker and outlier
// state live per key, across config versions.
type targetKey struct{ svc, subset string }

// targetState is the runtime state of one backend (Service, subset).
//
// Concurrency: the counters are atomic; mu guards hosts; connMu guards
// conns and queue. A connection slot is handed from the releasing request
// to the first queued one without being freed, so queued requests are
// served in order and conns never exceeds the limit.
type targetState struct {
	inflight atomic.Int64 // requests in flight (circuit breaker)
	retries  atomic.Int64 // retries in flight (circuit breaker)

	mu    sync.Mutex
	hosts map[netip.AddrPort]*hostState

	connMu sync.Mutex
	conns  int64           // HTTP/1.1 tries on an upstream connection
	queue  []chan struct{} // tries waiting for a connection, oldest first
}

type hostState struct {
	c5xx, cgw    uint32
	ejections    int       // Envoy's ejection multiplier
	ejectedUntil time.Time // readmitted from then
	decayedTo    time.Time // healthy intervals are counted from here
}

// decay lowers the ejection multiplier by one per whole interval the host
// has been in rotation, as Envoy's detector does at each interval it finds
// the host not ejected. Lazily, at the host's next outcome.
func (h *hostState) decay(now time.Time, interval time.Duration) {
	if h.ejections == 0 || now.Before(h.ejectedUntil) {
		return
	}
	from := h.ejectedUntil
	if h.decayedTo.After(from) {
		from = h.decayedTo
	}
	n := int(now.Sub(from) / interval)
	if n <= 0 {
		return
	}
	h.ejections = max(0, h.ejections-n)
	h.decayedTo = from.Add(time.Duration(n) * interval)
}

func (p *Proxy) target(ref backendRef) *targetState {
	k := targetKey{ref.key, ref.subset}
	if v, ok := p.targets.Load(k); ok {
		return v.(*targetState)
	}
	v, _ := p.targets.LoadOrStore(k, &targetState{hosts: map[netip.AddrPort]*hostState{}})
	return v.(*targetState)
}

// acquire admits a request to the backend's connection pool: at most
// http2MaxRequests for h2, and for HTTP/1.1 maxConnections on a connection
// plus http1MaxPendingRequests waiting for one (connection then holds each
// try to maxConnections at once). false means the request is over a limit
// (503, x-envoy-overloaded). release must be called when ok.
func (p *Proxy) acquire(ref backendRef, h2 bool) (release func(), ok bool) {
	pool := ref.policy.connectionPool()
	if pool == nil {
		return func() {}, true
	}
	var limit int64
	switch {
	case h2:
		limit = int64(pool.GetHttp2MaxRequests())
	case pool.GetMaxConnections() > 0 && pool.GetHttp1MaxPendingRequests() > 0:
		// HTTP/1.1: one request per connection, plus those waiting for one.
		limit = int64(pool.GetMaxConnections() + pool.GetHttp1MaxPendingRequests())
	}
	if limit == 0 {
		return func() {}, true
	}
	ts := p.target(ref)
	if ts.inflight.Add(1) > limit {
		ts.inflight.Add(-1)
		return nil, false
	}
	return func() { ts.inflight.Add(-1) }, true
}

// connection waits for one of the backend's maxConnections HTTP/1.1
// connections, as Envoy's pending requests do: an HTTP/1.1 connection
// carries one request at a time, so no more than maxConnections tries
// reach the backend at once. The wait ends with ctx. release must be
// called, once, when the try is over. h2 multiplexes on one connection
// and never waits.
func (p *Proxy) connection(ctx context.Context, ref backendRef, h2 bool) (release func(), err error) {
	limit := int64(ref.policy.connectionPool().GetMaxConnections())
	if h2 || limit == 0 {
		return func() {}, nil
	}
	ts := p.target(ref)
	var once sync.Once
	release = func() { once.Do(func() { ts.releaseConnection(limit) }) }
	ts.connMu.Lock()
	if ts.conns < limit && len(ts.queue) == 0 {
		ts.conns++
		ts.connMu.Unlock()
		return release, nil
	}
	ready := make(chan struct{})
	ts.queue = append(ts.queue, ready)
	ts.connMu.Unlock()
	select {
	case <-ready:
		return release, nil
	case <-ctx.Done():
	}
	ts.connMu.Lock()
	if i := slices.Index(ts.queue, ready); i >= 0 {
		ts.queue = slices.Delete(ts.queue, i, i+1)
		ts.connMu.Unlock()
		return nil, ctx.Err()
	}
	ts.connMu.Unlock()
	release() // handed a slot while giving up: pass it on
	return nil, ctx.Err()
}

// releaseConnection hands the slot to the oldest queued try, or frees it
// (also when the limit shrank since, so the count falls back under it).
func (ts *targetState) releaseConnection(limit int64) {
	ts.connMu.Lock()
	defer ts.connMu.Unlock()
	if len(ts.queue) > 0 && ts.conns <= limit {
		close(ts.queue[0])
		ts.queue = ts.queue[1:]
		return
	}
	ts.conns--
}

// retryBudget takes a retry slot (max_retries); false: do not retry.
func (p *Proxy) retryBudget(ref backendRef) (release func(), ok bool) {
	max := int64(ref.policy.connectionPool().GetMaxRetries())
	if max == 0 {
		return func() {}, true
	}
	ts := p.target(ref)
	if ts.retries.Add(1) > max {
		ts.retries.Add(-1)
		return nil, false
	}
	return func() { ts.retries.Add(-1) }, true
}

func (tp *targetPolicy) connectionPool() *waypointv1alpha1.ConnectionPool {
	if tp == nil {
		return nil
	}
	return tp.pool
}

// ejected reports whether ep is ejected now, among n endpoints: never when
// fewer than min_health_percent would be left healthy.
func (p *Proxy) ejected(ref backendRef, ep *endpoint, n int, now time.Time) bool {
	od := ref.policy.outlierPolicy()
	if od == nil {
		return false
	}
	ts := p.target(ref)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	h := ts.hosts[ep.addr]
	if h == nil || !now.Before(h.ejectedUntil) {
		return false
	}
	if od.minHealthPct > 0 {
		out := ts.ejectedLocked(now)
		if (n-out)*100 < int(od.minHealthPct)*n {
			return false
		}
	}
	return true
}

func (ts *targetState) ejectedLocked(now time.Time) int {
	out := 0
	for _, h := range ts.hosts {
		if now.Before(h.ejectedUntil) {
			out++
		}
	}
	return out
}

func (tp *targetPolicy) outlierPolicy() *outlierPolicy {
	if tp == nil {
		return nil
	}
	return tp.outlier
}

// observe records the outcome of one try on ep (code 0: no response, e.g.
// a connect failure) and ejects ep after enough consecutive errors, as
// far as max_ejection_percent allows (at least one endpoint may always be
// ejected, as in Envoy).
func (p *Proxy) observe(ref backendRef, ep *endpoint, n int, code int, connectFailure bool) {
	od := ref.policy.outlierPolicy()
	if od == nil {
		return
	}
	gateway := connectFailure || code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
	fivexx := code >= 500 || connectFailure
	ts := p.target(ref)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	h := ts.hosts[ep.addr]
	if h == nil {
		h = &hostState{}
		ts.hosts[ep.addr] = h
	}
	now := time.Now()
	h.decay(now, od.interval)
	if !fivexx && !gateway {
		h.c5xx, h.cgw = 0, 0
		return
	}
	if fivexx {
		h.c5xx++
	}
	if gateway {
		h.cgw++
	}
	trip := (od.consecutive5xx > 0 && h.c5xx >= od.consecutive5xx) || (od.consecutiveGateway > 0 && h.cgw >= od.consecutiveGateway)
	if !trip || now.Before(h.ejectedUntil) {
		return
	}
	out := ts.ejectedLocked(now)
	if out > 0 && (out+1)*100 > int(od.maxEjectedPct)*n {
		return
	}
	h.ejections++
	h.ejectedUntil = now.Add(od.ejectionTime(h.ejections))
	h.c5xx, h.cgw = 0, 0
	p.log.Info("endpoint ejected", zap.String("backend", ref.key), zap.String("endpoint", ep.addr.String()),
		zap.Duration("for", od.ejectionTime(h.ejections)))
}
