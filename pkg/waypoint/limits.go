package waypoint

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// tokenBucket is a LocalRateLimit: it starts full with max tokens and gains
// perFill tokens every interval, up to max. Per waypoint replica.
//
// Concurrency: mu guards tokens and last.
type tokenBucket struct {
	name     string
	max      int64
	perFill  int64
	interval time.Duration

	mu     sync.Mutex
	tokens int64
	last   time.Time // time of the last fill
}

func compileRateLimit(rl *waypointv1alpha1.LocalRateLimit, at string, bad badFunc) (*tokenBucket, error) {
	if rl == nil {
		return nil, nil
	}
	if rl.GetMaxTokens() == 0 {
		return nil, bad(at+".max_tokens", "must be positive")
	}
	interval, err := duration(rl.GetFillInterval(), at+".fill_interval", bad)
	if err != nil {
		return nil, err
	}
	if interval <= 0 {
		return nil, bad(at+".fill_interval", "must be positive")
	}
	per := int64(rl.GetTokensPerFill())
	if per == 0 {
		per = 1
	}
	return &tokenBucket{name: rl.GetName(), max: int64(rl.GetMaxTokens()), perFill: per, interval: interval,
		tokens: int64(rl.GetMaxTokens()), last: time.Now()}, nil
}

// take takes a token; without one it returns how long until the next fill.
func (b *tokenBucket) take(now time.Time) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if fills := int64(now.Sub(b.last) / b.interval); fills > 0 {
		b.tokens = min(b.max, b.tokens+fills*b.perFill)
		b.last = b.last.Add(time.Duration(fills) * b.interval)
	}
	if b.tokens > 0 {
		b.tokens--
		return true, 0
	}
	return false, b.last.Add(b.interval).Sub(now)
}

// limited answers 429 with retry-after when b has no token; it reports
// whether it did.
func limited(b *tokenBucket, w http.ResponseWriter) bool {
	if b == nil {
		return false
	}
	ok, wait := b.take(time.Now())
	if ok {
		return false
	}
	secs := int64((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	http.Error(w, "local_rate_limited", http.StatusTooManyRequests)
	return true
}

// fault is a compiled VirtualService fault.
type fault struct {
	delay         time.Duration
	delayFraction uint32
	abortStatus   int
	abortGRPC     uint32
	abortFraction uint32
}

func compileFault(f *waypointv1alpha1.Fault, at string, bad badFunc) (*fault, error) {
	if f == nil {
		return nil, nil
	}
	out := &fault{}
	if d := f.GetDelay(); d != nil {
		v, err := duration(d.GetFixedDelay(), at+".delay.fixed_delay", bad)
		if err != nil {
			return nil, err
		}
		if d.GetFractionPerMillion() > 1_000_000 {
			return nil, bad(at+".delay.fraction_per_million", "%d exceeds 1000000", d.GetFractionPerMillion())
		}
		out.delay, out.delayFraction = v, d.GetFractionPerMillion()
	}
	if a := f.GetAbort(); a != nil {
		if a.GetGrpcStatus() == 0 && (a.GetHttpStatus() < 200 || a.GetHttpStatus() > 599) {
			return nil, bad(at+".abort.http_status", "%d is not an HTTP status", a.GetHttpStatus())
		}
		if a.GetGrpcStatus() > 16 {
			return nil, bad(at+".abort.grpc_status", "%d is not a gRPC status", a.GetGrpcStatus())
		}
		if a.GetFractionPerMillion() > 1_000_000 {
			return nil, bad(at+".abort.fraction_per_million", "%d exceeds 1000000", a.GetFractionPerMillion())
		}
		out.abortStatus, out.abortGRPC, out.abortFraction = int(a.GetHttpStatus()), a.GetGrpcStatus(), a.GetFractionPerMillion()
	}
	return out, nil
}

func hit(fraction uint32) bool {
	return fraction >= 1_000_000 || (fraction > 0 && rand.Uint32N(1_000_000) < fraction)
}

// inject applies the fault: it may delay (until ctx ends) and may answer
// the request itself, which it reports with aborted.
func (f *fault) inject(ctx context.Context, w http.ResponseWriter, grpc bool) (aborted, delayed bool) {
	if f == nil {
		return false, false
	}
	if f.delay > 0 && hit(f.delayFraction) {
		delayed = true
		t := time.NewTimer(f.delay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if (f.abortStatus != 0 || f.abortGRPC != 0) && hit(f.abortFraction) {
		if grpc && f.abortGRPC != 0 {
			// A trailers-only gRPC answer.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", strconv.FormatUint(uint64(f.abortGRPC), 10))
			w.Header().Set("Grpc-Message", "fault filter abort")
			w.WriteHeader(http.StatusOK)
			return true, delayed
		}
		http.Error(w, "fault filter abort", f.abortStatus)
		return true, delayed
	}
	return false, delayed
}
