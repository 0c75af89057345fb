// Package proxyadmin holds the HTTP endpoints ztunnel and the waypoint both
// serve beside their proxies: Prometheus metrics (15020), readiness
// (15021), and the admin port's log-level control and Go profiles (15000,
// localhost), plus the serve loop that shuts them down with the proxy.
// It also dials the control plane (CA and xDS) for both. Imported by
// pkg/ztunnel/app and pkg/waypoint/app.
package proxyadmin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Serve returns a runner that serves h on addr (listening with lc) until
// ctx ends, then shuts down within 5 s. An empty addr or "0" serves
// nothing and waits for ctx.
func Serve(addr string, h http.Handler, lc net.ListenConfig) func(context.Context) error {
	return func(ctx context.Context) error {
		if addr == "" || addr == "0" {
			<-ctx.Done()
			return nil
		}
		srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ln) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-done
			return nil
		}
	}
}

// Metrics serves g on /metrics and on Envoy's /stats/prometheus, where
// Istio's scrape annotations point.
func Metrics(g prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	mux.Handle("/metrics", h)
	mux.Handle("/stats/prometheus", h)
	return mux
}

// Readiness serves /healthz/ready: 200 "ready" when ready returns nil,
// else 503 with the reason.
func Readiness(ready func() error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Logging is the admin port's /logging: ?level=debug|info|warn|error sets
// the level; every call answers the current one.
func Logging(level zap.AtomicLevel) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if lv := r.URL.Query().Get("level"); lv != "" {
			l, err := zapcore.ParseLevel(lv)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			level.SetLevel(l)
		}
		fmt.Fprintf(w, "level=%s\n", level.Level())
	}
}

// Profiles adds Go's profiles under /debug/pprof/ (admin port, localhost
// only), as Istio's ztunnel serves its own there.
func Profiles(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Env returns the environment value of key, or def when it is unset; the
// proxies' flags take their defaults from it.
func Env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

// DrainDefault is Istio's self-termination deadline for its proxies: the
// pod's terminationGracePeriodSeconds (env TERMINATION_GRACE_PERIOD_SECONDS)
// minus 5 s, minus 1 s when it is 10 s or less, and 5 s when unset
// (zt:src/config.rs).
func DrainDefault() time.Duration {
	v, err := strconv.Atoi(os.Getenv("TERMINATION_GRACE_PERIOD_SECONDS"))
	switch {
	case err != nil || v <= 0:
		return 5 * time.Second
	case v <= 10:
		return time.Duration(v-1) * time.Second
	default:
		return time.Duration(v-5) * time.Second
	}
}

// ReleaseStartupPages returns a runner (for an app's run group) that waits
// until ready() passes, then releases the executable's resident pages
// ([ReleaseExecutablePages]) once, and once more after settle (certificate
// and config work done), logging the resident set before and after. It
// returns nil when ctx ends; a failure is logged, never fatal.
func ReleaseStartupPages(ready func() error, settle time.Duration, log *zap.Logger) func(context.Context) error {
	return func(ctx context.Context) error {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for ready() != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		release := func() {
			before := statusKiB("VmRSS:")
			span, err := ReleaseExecutablePages()
			if err != nil {
				log.Info("start-up pages not released", zap.Error(err))
				return
			}
			log.Info("released start-up pages of the executable", zap.Int64("mappedKiB", span>>10),
				zap.Int64("residentKiBBefore", before), zap.Int64("residentKiBAfter", statusKiB("VmRSS:")))
		}
		release()
		select {
		case <-ctx.Done():
		case <-time.After(settle):
			release()
		}
		return nil
	}
}

// statusKiB is a kB field of /proc/self/status ("VmRSS:", "RssFile:"),
// or -1.
func statusKiB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return v
			}
		}
	}
	return -1
}

// GODEBUG is the Go runtime setting the proxies' pods run with (env
// GODEBUG in manifests/ztunnel and in the waypoint Deployments istiod-lite
// writes). A proxy at a steady, moderate rate is idle between requests, and
// an idle Go process puts its system monitor (sysmon) into a deep sleep;
// the first system call after that wakes it with a futex, and the woken
// monitor polls every 20 µs for the next millisecond, taking the processor
// from any write(2) that lasts longer (a write into a veth pair costs about
// 26 µs) and waking another thread to run it. At 1000 requests per second
// the waypoint spent 7% of its profiled CPU in those wake-ups, and more in
// the thread hand-offs they cause. With schedtrace set the monitor never
// enters the deep sleep: it backs off to one check every 10 ms while
// nothing needs it. bench-waypoint measured 0.232 against 0.352 vCPU per
// 1000 rps, and lower latency, with this setting.
//
// The side effects: the runtime prints one scheduler summary line to
// stderr every 2^31-1 ms (24.8 days; at the first check once the node has
// been up that long), and a scheduler summary on a fatal error.
const GODEBUG = "schedtrace=2147483647"
