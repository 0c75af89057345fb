package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"go.opentelemetry.io/otel/attribute"

	"github.com/ambient-mesh/mesh/pkg/certmanager"
	"github.com/ambient-mesh/mesh/pkg/otel"
	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
	"github.com/ambient-mesh/mesh/pkg/ztunnel"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// App is a configured ztunnel. Build it with New, then Run it.
type App struct {
	cfg      Config
	log      *zap.Logger
	level    zap.AtomicLevel
	store    *state.Store
	certs    *certmanager.Manager
	proxy    *ztunnel.Proxy
	xds      *xdsclient.Client
	conns    []*grpc.ClientConn
	registry *prometheus.Registry
	otelCfg  otel.Config // OTLP metrics export, from the OTEL_* variables

	synced     sync.Map // type URL -> true once a response was applied
	podsSynced atomic.Bool
	stopping   atomic.Bool

	// configIn is closed once both xDS types were applied: the node agent
	// feed waits for it before opening pods' listeners.
	configIn     chan struct{}
	configInOnce sync.Once
}

// New builds the App: it reads the root certificate, prepares the gRPC
// connections (not dialed until Run) and every component. level, if
// non-nil, is the logger's level, which /logging changes.
func New(cfg Config, log *zap.Logger, level *zap.AtomicLevel) (*App, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.WorkerThreads < 0 {
		return nil, fmt.Errorf("worker threads (ZTUNNEL_WORKER_THREADS) %d: must be 0 (Go's default) or more", cfg.WorkerThreads)
	}
	if cfg.WorkerThreads > 0 {
		runtime.GOMAXPROCS(cfg.WorkerThreads)
	}
	a := &App{cfg: cfg, log: log.Named("app"), store: state.NewStore(), registry: prometheus.NewRegistry(), configIn: make(chan struct{})}
	a.log.Info("worker threads", zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)))
	var err error
	if level != nil {
		a.level = *level
	} else {
		a.level = zap.NewAtomicLevel()
	}
	a.podsSynced.Store(!cfg.WaitForPodSync)
	lookup := cfg.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if a.otelCfg, err = otel.ConfigFromEnv(lookup); err != nil {
		return nil, fmt.Errorf("OTEL_* environment: %w", err)
	}
	if a.otelCfg.ServiceName == "" || a.otelCfg.ServiceName == otel.DefaultServiceName {
		a.otelCfg.ServiceName = "ztunnel"
	}
	cp, err := proxyadmin.DialControlPlane(proxyadmin.ControlPlane{XDSAddress: cfg.XDSAddress, CAAddress: cfg.CAAddress,
		ServerName: cfg.ServerName, RootCertFile: cfg.RootCertFile, TokenFile: cfg.TokenFile, ClusterID: cfg.ClusterID})
	if err != nil {
		return nil, err
	}
	a.conns = []*grpc.ClientConn{cp.CA, cp.XDS}
	a.certs, err = certmanager.New(certmanager.Config{
		Fetcher:     certmanager.NewCAClient(cp.CA, cp.Tokens, certmanager.CAClientOptions{Impersonate: true, ClusterID: cfg.ClusterID}),
		TrustDomain: cfg.TrustDomain,
		Roots:       cp.Roots,
		Logger:      log.Named("certs"),
	})
	if err != nil {
		a.close()
		return nil, err
	}
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := telemetry.NewMetrics(a.registry)
	if err != nil {
		a.close()
		return nil, err
	}
	var dnsCfg *ztunnel.DNSConfig
	if cfg.DNSProxy {
		ups, err := dnsUpstreams(cfg)
		if err != nil {
			a.close()
			return nil, err
		}
		dnsCfg = &ztunnel.DNSConfig{Upstreams: ups, Domain: cfg.ClusterDomain}
	}
	a.proxy, err = ztunnel.New(ztunnel.Config{
		Store: a.store, Certs: ztunnel.CertManager(a.certs), TrustDomain: cfg.TrustDomain, Network: cfg.Network,
		DrainTimeout: cfg.DrainTimeout, Metrics: metrics, DNS: dnsCfg, Logger: log,
	})
	if err != nil {
		a.close()
		return nil, err
	}
	a.xds, err = xdsclient.New(xdsclient.Config{
		Conn: cp.XDS,
		Node: a.node(),
		Subscriptions: []xdsclient.Subscription{
			{TypeURL: state.AddressTypeURL},
			{TypeURL: state.AuthorizationTypeURL},
		},
		Handler:        a.xdsHandler(),
		Logger:         log.Named("xds"),
		InitialBackoff: 10 * time.Millisecond, // issue 7: reconnect 10 ms .. 15 s
		MaxBackoff:     15 * time.Second,
	})
	if err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// dnsUpstreams is -dns-upstreams, or the nameservers of -resolv-conf.
func dnsUpstreams(cfg Config) ([]string, error) {
	var out []string
	if cfg.DNSUpstreams != "" {
		for _, u := range strings.Split(cfg.DNSUpstreams, ",") {
			if u = strings.TrimSpace(u); u != "" {
				if _, _, err := net.SplitHostPort(u); err != nil {
					return nil, fmt.Errorf("dns upstream %q: %w", u, err)
				}
				out = append(out, u)
			}
		}
		return out, nil
	}
	rc, err := mdns.ClientConfigFromFile(cfg.ResolvConf)
	if err != nil {
		return nil, fmt.Errorf("dns upstreams from %s: %w", cfg.ResolvConf, err)
	}
	for _, s := range rc.Servers {
		out = append(out, net.JoinHostPort(s, rc.Port))
	}
	return out, nil
}

// xdsHandler applies deltas to the store and records, per type, that a
// response arrived (a NACKed batch still applied its valid part).
func (a *App) xdsHandler() xdsclient.Handler {
	h := a.store.Handler()
	return func(d xdsclient.Delta) error {
		err := h(d)
		a.synced.Store(d.TypeURL, true)
		if a.configMissing() == "" {
			a.configInOnce.Do(func() { close(a.configIn) })
		}
		return err
	}
}

// node is ztunnel's xDS node (zt:src/xds/client.rs node()).
func (a *App) node() *core.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAME": a.cfg.PodName, "NAMESPACE": a.cfg.PodNamespace, "INSTANCE_IPS": a.cfg.InstanceIP,
		"NODE_NAME": a.cfg.NodeName, "CLUSTER_ID": a.cfg.ClusterID,
	})
	return &core.Node{
		Id:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", a.cfg.InstanceIP, a.cfg.PodName, a.cfg.PodNamespace, a.cfg.PodNamespace),
		Metadata: md,
	}
}

// Pods is where the node agent feed (pkg/zds) hands over pods.
func (a *App) Pods() ztunnel.PodSink { return a.proxy }

// MarkPodsSynced tells readiness the node agent's snapshot has been applied.
func (a *App) MarkPodsSynced() { a.podsSynced.Store(true) }

// Store is the xDS-fed state (for tests and the DNS proxy).
func (a *App) Store() *state.Store { return a.store }

// configTypes are the xDS types ztunnel needs before it takes traffic.
var configTypes = []string{state.AddressTypeURL, state.AuthorizationTypeURL}

// configMissing is the first type of configTypes not applied yet, or "".
func (a *App) configMissing() string {
	for _, t := range configTypes {
		if _, ok := a.synced.Load(t); !ok {
			return t
		}
	}
	return ""
}

// Ready reports whether ztunnel may take traffic: not stopping, both xDS
// types received, and the pod snapshot applied (when waited for).
func (a *App) Ready() error {
	if a.stopping.Load() {
		return errors.New("stopping")
	}
	if t := a.configMissing(); t != "" {
		return fmt.Errorf("xds %s not received", t)
	}
	if !a.podsSynced.Load() {
		return errors.New("pod snapshot not received")
	}
	return nil
}

func (a *App) close() {
	for _, c := range a.conns {
		_ = c.Close()
	}
}

// Run serves until ctx ends (SIGTERM in main): readiness turns false, the
// pods' listeners close and their connections drain for DrainTimeout,
// then everything stops. It returns the first component failure, or nil.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	// OTLP export of the Prometheus registry (istio_* and process metrics)
	// when OTEL_EXPORTER_OTLP_ENDPOINT (or the metrics one) is set; the
	// ztunnel exports no spans.
	var res []attribute.KeyValue
	if a.cfg.PodName != "" {
		res = append(res, attribute.String("k8s.pod.name", a.cfg.PodName))
	}
	if a.cfg.NodeName != "" {
		res = append(res, attribute.String("k8s.node.name", a.cfg.NodeName))
	}
	exp, err := otel.New(ctx, a.otelCfg, otel.WithPrometheusGatherer(a.registry), otel.WithResourceAttributes(res...))
	if err != nil {
		return fmt.Errorf("otlp export: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = exp.Shutdown(sctx) // the last metrics, unless the collector is down
	}()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	run := func(name string, fn func(context.Context) error) {
		wg.Go(func() {
			if err := fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		})
	}
	go func() { <-ctx.Done(); a.stopping.Store(true) }()
	run("certificates", a.certs.Start)
	run("xds", a.xds.Run)
	run("proxy", a.proxy.Run)
	if a.cfg.ZDSSocket != "" {
		run("node agent feed", func(ctx context.Context) error {
			// Pods' listeners open only once the xDS state is in. In a
			// rolling restart the old ztunnel serves the pods (SO_REUSEPORT)
			// until then; a listener of ours with no workloads yet would
			// refuse the connections the kernel gave it.
			select {
			case <-a.configIn:
			case <-ctx.Done():
				return nil
			}
			a.log.Info("xds state received; taking the node agent's pods")
			return runZDS(ctx, a.cfg.ZDSSocket, a.proxy, a.MarkPodsSynced, a.log, 100*time.Millisecond, time.Second)
		})
	}
	run("metrics", proxyadmin.Serve(a.cfg.MetricsAddr, a.metricsMux(), listenReusePort))
	run("readiness", proxyadmin.Serve(a.cfg.ReadinessAddr, a.readinessMux(), listenReusePort))
	run("memory", proxyadmin.ReleaseStartupPages(a.Ready, time.Minute, a.log))
	run("admin", proxyadmin.Serve(a.cfg.AdminAddr, a.adminMux(), listenReusePort))
	a.log.Info("started", zap.String("xds", a.cfg.XDSAddress), zap.String("node", a.cfg.NodeName), zap.String("zds", a.cfg.ZDSSocket))
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (a *App) metricsMux() http.Handler { return proxyadmin.Metrics(a.registry) }

func (a *App) readinessMux() http.Handler { return proxyadmin.Readiness(a.Ready) }

func (a *App) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(ConfigDump(a.store.Snapshot(), a.certInfo(), a.proxy.Pods()))
	})
	mux.HandleFunc("/logging", proxyadmin.Logging(a.level))
	proxyadmin.Profiles(mux)
	return mux
}

// CertInfo is a certificate as the config dump shows it: never the key.
type CertInfo struct {
	Identity  string    `json:"identity"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RefreshAt time.Time `json:"refresh_at"`
	Serial    string    `json:"serial"`
}

func (a *App) certInfo() []CertInfo {
	var out []CertInfo
	for _, id := range a.certs.Identities() {
		c, ok := a.certs.Current(id)
		if !ok {
			out = append(out, CertInfo{Identity: id.String()})
			continue
		}
		out = append(out, CertInfo{Identity: id.String(), NotBefore: c.Leaf.NotBefore, NotAfter: c.Leaf.NotAfter, RefreshAt: c.RefreshAt, Serial: c.Leaf.SerialNumber.String()})
	}
	return out
}

// ConfigDump renders the state, certificates and pods as JSON (protos in
// their protojson form).
func ConfigDump(snap *state.Snapshot, certs []CertInfo, pods []string) []byte {
	raw := func(ms []json.RawMessage) []json.RawMessage {
		if ms == nil {
			return []json.RawMessage{}
		}
		return ms
	}
	var ws, ss, ps []json.RawMessage
	for _, w := range snap.Workloads() {
		b, _ := protojson.Marshal(w)
		ws = append(ws, b)
	}
	for _, s := range snap.Services() {
		b, _ := protojson.Marshal(s)
		ss = append(ss, b)
	}
	for _, p := range snap.Policies() {
		b, _ := protojson.Marshal(p)
		ps = append(ps, b)
	}
	if certs == nil {
		certs = []CertInfo{}
	}
	if pods == nil {
		pods = []string{}
	}
	out, _ := json.MarshalIndent(map[string]any{
		"version":      snap.Version,
		"workloads":    raw(ws),
		"services":     raw(ss),
		"policies":     raw(ps),
		"certificates": certs,
		"pods":         pods,
	}, "", "  ")
	return out
}
