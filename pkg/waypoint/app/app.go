package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"go.opentelemetry.io/otel/attribute"

	"github.com/ambient-mesh/mesh/pkg/certmanager"
	"github.com/ambient-mesh/mesh/pkg/logging"
	"github.com/ambient-mesh/mesh/pkg/otel"
	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
	"github.com/ambient-mesh/mesh/pkg/waypoint"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// App is a configured waypoint. Build it with New, then Run it.
type App struct {
	cfg      Config
	name     string // "<namespace>/<gateway>"
	id       spiffeid.ID
	log      *zap.Logger
	level    zap.AtomicLevel
	store    *state.Store
	routes   *waypoint.Routes
	certs    *certmanager.Manager
	proxy    *waypoint.Proxy
	xds      *xdsclient.Client
	conns    []*grpc.ClientConn
	registry *prometheus.Registry
	tel      *waypoint.Telemetry

	stopAccess func() // flushes the buffered access log

	addressSynced atomic.Bool
	stopping      atomic.Bool
	hboneAddr     atomic.Pointer[net.Addr]
}

// HBONEAddr is the address the proxy listens on, once Run started it.
func (a *App) HBONEAddr() net.Addr {
	if p := a.hboneAddr.Load(); p != nil {
		return *p
	}
	return nil
}

// New builds the App: it reads the root certificate, prepares the gRPC
// connections (dialled lazily) and every component. level, if non-nil, is
// the logger's level, which /logging changes.
func New(cfg Config, log *zap.Logger, level *zap.AtomicLevel) (*App, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.GatewayName == "" || cfg.PodNamespace == "" {
		return nil, errors.New("-gateway-name (GATEWAY_NAME) and -pod-namespace (POD_NAMESPACE) are required")
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = cfg.GatewayName // istiod-lite gives the waypoint a service account named after the Gateway
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("-trust-domain %q: %w", cfg.TrustDomain, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", cfg.PodNamespace, "sa", cfg.ServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("waypoint identity: %w", err)
	}
	a := &App{cfg: cfg, name: cfg.PodNamespace + "/" + cfg.GatewayName, id: id, log: log.Named("app"),
		store: state.NewStore(), routes: waypoint.NewRoutes(), registry: prometheus.NewRegistry()}
	if level != nil {
		a.level = *level
	} else {
		a.level = zap.NewAtomicLevel()
	}
	cp, err := proxyadmin.DialControlPlane(proxyadmin.ControlPlane{XDSAddress: cfg.XDSAddress, CAAddress: cfg.CAAddress,
		ServerName: cfg.ServerName, RootCertFile: cfg.RootCertFile, TokenFile: cfg.TokenFile, ClusterID: cfg.ClusterID})
	if err != nil {
		return nil, err
	}
	a.conns = []*grpc.ClientConn{cp.CA, cp.XDS}
	a.certs, err = certmanager.New(certmanager.Config{
		Fetcher:     certmanager.NewCAClient(cp.CA, cp.Tokens, certmanager.CAClientOptions{ClusterID: cfg.ClusterID}),
		TrustDomain: cfg.TrustDomain,
		Roots:       cp.Roots,
		Logger:      log.Named("certs"),
	})
	if err != nil {
		a.close()
		return nil, err
	}
	a.certs.SetLocalIdentities([]spiffeid.ID{id})
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := waypoint.NewMetrics(a.registry)
	if err != nil {
		a.close()
		return nil, err
	}
	if a.tel, err = newTelemetry(cfg, a.name, a.registry, log); err != nil {
		a.close()
		return nil, err
	}
	a.registry.MustRegister(a.tel.Collector())
	// One line per request: buffered, flushed every second and when the
	// app closes (after the proxy drained). Always built: the Telemetry
	// resource turns it on and off (ACCESS_LOG until one does).
	access, stopAccess := logging.Buffered("access", a.level)
	a.stopAccess = stopAccess
	a.proxy, err = waypoint.New(waypoint.Config{
		Name: a.name, Addresses: a.store, Routes: a.routes,
		SVID: a.certs.SVIDSource(id), Bundle: a.certs, TrustDomain: td,
		Network: cfg.Network, MaxReplayBody: cfg.MaxReplayBody, DrainTimeout: cfg.DrainTimeout,
		Metrics: metrics, Telemetry: a.tel, Logger: log, AccessLog: access, Dial: cfg.TunnelDial,
	})
	if err != nil {
		a.closeTelemetry()
		a.close()
		return nil, err
	}
	a.xds, err = xdsclient.New(xdsclient.Config{
		Conn: cp.XDS,
		Node: a.node(),
		Subscriptions: []xdsclient.Subscription{
			{TypeURL: state.AddressTypeURL},
			{TypeURL: waypoint.ServiceConfigTypeURL},
			{TypeURL: waypoint.TelemetryTypeURL},
		},
		Handler:        a.handle,
		Logger:         log.Named("xds"),
		InitialBackoff: 10 * time.Millisecond,
		MaxBackoff:     15 * time.Second,
	})
	if err != nil {
		_ = a.proxy.Close()
		a.closeTelemetry()
		a.close()
		return nil, err
	}
	return a, nil
}

// newTelemetry builds the OTLP export from the OTEL_* variables (export
// off unless an endpoint is set), exporting the registry's istio_* metrics
// too; Telemetry resources from istiod-lite then select the collector,
// sampling and custom tags. service.name defaults to "<gateway>.<namespace>"
// as Istio's proxies name themselves.
func newTelemetry(cfg Config, name string, reg *prometheus.Registry, log *zap.Logger) (*waypoint.Telemetry, error) {
	lookup := cfg.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	base, err := otel.ConfigFromEnv(lookup)
	if err != nil {
		return nil, fmt.Errorf("OTEL_* environment: %w", err)
	}
	if base.ServiceName == "" || base.ServiceName == otel.DefaultServiceName {
		base.ServiceName = cfg.GatewayName + "." + cfg.PodNamespace
	}
	res := []attribute.KeyValue{attribute.String("k8s.namespace.name", cfg.PodNamespace)}
	if cfg.PodName != "" {
		res = append(res, attribute.String("k8s.pod.name", cfg.PodName))
	}
	return waypoint.NewTelemetry(context.Background(), waypoint.TelemetryConfig{
		Name: name, Base: base, LookupEnv: lookup, Logger: log, AccessLog: cfg.AccessLog,
		Options: []otel.Option{otel.WithPrometheusGatherer(reg), otel.WithResourceAttributes(res...)},
	})
}

// closeTelemetry flushes what is queued for export, for 5 s at most.
func (a *App) closeTelemetry() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.tel.Close(ctx); err != nil {
		a.log.Debug("flush telemetry", zap.Error(err))
	}
}

// handle applies one delta: Addresses to the state store, ServiceConfigs
// to the route table, the waypoint's Telemetry to the OTLP export (each
// NACKs its invalid resources and keeps the last good ones).
func (a *App) handle(d xdsclient.Delta) error {
	switch d.TypeURL {
	case state.AddressTypeURL:
		err := a.store.HandleAddress(d)
		a.addressSynced.Store(true)
		return err
	case waypoint.ServiceConfigTypeURL:
		return a.routes.Handle(d)
	case waypoint.TelemetryTypeURL:
		return a.tel.Handle(d)
	}
	return fmt.Errorf("unexpected type %s", d.TypeURL)
}

// node is the waypoint's xDS node: Istio's "<type>~<ip>~<pod>.<ns>~<ns>.svc.<domain>"
// with type waypoint, and the Gateway in the metadata.
func (a *App) node() *core.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAME": a.cfg.PodName, "NAMESPACE": a.cfg.PodNamespace, "INSTANCE_IPS": a.cfg.InstanceIP,
		"CLUSTER_ID": a.cfg.ClusterID, "SERVICE_ACCOUNT": a.cfg.ServiceAccount, "WAYPOINT": a.name,
		"LABELS": map[string]any{"gateway.networking.k8s.io/gateway-name": a.cfg.GatewayName},
	})
	return &core.Node{
		Id:       fmt.Sprintf("waypoint~%s~%s.%s~%s.svc.cluster.local", a.cfg.InstanceIP, a.cfg.PodName, a.cfg.PodNamespace, a.cfg.PodNamespace),
		Metadata: md,
	}
}

// Ready reports whether the waypoint may take traffic: not stopping, the
// Address state received and its certificate held. ServiceConfigs are not
// waited for: istiod-lite binds Services to a waypoint only once it is
// ready, so there may be none yet.
func (a *App) Ready() error {
	if a.stopping.Load() {
		return errors.New("stopping")
	}
	if !a.addressSynced.Load() {
		return fmt.Errorf("xds %s not received", state.AddressTypeURL)
	}
	if _, ok := a.certs.Current(a.id); !ok {
		return fmt.Errorf("no certificate for %s yet", a.id)
	}
	return nil
}

func (a *App) close() {
	for _, c := range a.conns {
		_ = c.Close()
	}
	if a.stopAccess != nil {
		a.stopAccess()
	}
}

// Run serves until ctx ends (SIGTERM in main), then drains: readiness turns
// false, the proxy stops accepting and finishes requests until
// DrainTimeout. It returns the first component failure, or nil.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	defer a.closeTelemetry() // after the proxy drained: its last spans are flushed
	defer func() { _ = a.proxy.Close() }()
	ln, err := net.Listen("tcp", a.cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.HBONEAddr, err)
	}
	addr := ln.Addr()
	a.hboneAddr.Store(&addr)
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
	run("proxy", func(ctx context.Context) error { return a.proxy.Serve(ctx, ln) })
	run("metrics", proxyadmin.Serve(a.cfg.MetricsAddr, a.metricsMux(), net.ListenConfig{}))
	run("readiness", proxyadmin.Serve(a.cfg.ReadinessAddr, a.readinessMux(), net.ListenConfig{}))
	run("admin", proxyadmin.Serve(a.cfg.AdminAddr, a.adminMux(), net.ListenConfig{}))
	run("memory", proxyadmin.ReleaseStartupPages(a.Ready, time.Minute, a.log))
	a.log.Info("started", zap.String("waypoint", a.name), zap.Stringer("identity", a.id), zap.String("xds", a.cfg.XDSAddress), zap.String("hbone", a.cfg.HBONEAddr))
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
		_, _ = w.Write(ConfigDump(a.name, a.store.Snapshot(), a.routes, a.certInfo(), a.tel.Dump()))
	})
	mux.HandleFunc("/logging", proxyadmin.Logging(a.level))
	proxyadmin.Profiles(mux)
	return mux
}

// CertInfo is a certificate as the config dump shows it: never the key.
type CertInfo struct {
	Identity  string    `json:"identity"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	RefreshAt time.Time `json:"refresh_at,omitzero"`
	Serial    string    `json:"serial,omitempty"`
}

func (a *App) certInfo() []CertInfo {
	c, ok := a.certs.Current(a.id)
	if !ok {
		return []CertInfo{{Identity: a.id.String()}}
	}
	return []CertInfo{{Identity: a.id.String(), NotBefore: c.Leaf.NotBefore, NotAfter: c.Leaf.NotAfter, RefreshAt: c.RefreshAt, Serial: c.Leaf.SerialNumber.String()}}
}

// ConfigDump renders the waypoint's name, Address state, ServiceConfigs,
// certificate and telemetry (the Telemetry resource and what is in force:
// access log, spans, sampling, metric overrides), protos in their
// protojson form. It holds no keys.
func ConfigDump(name string, snap *state.Snapshot, routes *waypoint.Routes, certs []CertInfo, tel waypoint.TelemetryDump) []byte {
	list := func(n int, item func(i int) []byte) []json.RawMessage {
		out := make([]json.RawMessage, 0, n)
		for i := range n {
			out = append(out, item(i))
		}
		return out
	}
	ws, ss, cs := snap.Workloads(), snap.Services(), routes.Configs()
	var resource json.RawMessage = []byte("null")
	if tel.Resource != nil {
		resource, _ = protojson.Marshal(tel.Resource)
	}
	out, _ := json.MarshalIndent(map[string]any{
		"waypoint":        name,
		"version":         snap.Version,
		"workloads":       list(len(ws), func(i int) []byte { b, _ := protojson.Marshal(ws[i]); return b }),
		"services":        list(len(ss), func(i int) []byte { b, _ := protojson.Marshal(ss[i]); return b }),
		"service_configs": list(len(cs), func(i int) []byte { b, _ := protojson.Marshal(cs[i]); return b }),
		"certificates":    certs,
		"telemetry": map[string]any{
			"resource":         resource,
			"access_log":       tel.AccessLog,
			"spans":            tel.Spans,
			"sampling_percent": tel.SamplingPercent,
			"metric_overrides": list(len(tel.MetricOverrides), func(i int) []byte { b, _ := protojson.Marshal(tel.MetricOverrides[i]); return b }),
		},
	}, "", "  ")
	return out
}
