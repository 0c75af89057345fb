package istiod

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/zapr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	telemetryv1alpha1 "istio.io/client-go/pkg/apis/telemetry/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/ambient-mesh/mesh/api/policy/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/controller"
	"github.com/ambient-mesh/mesh/pkg/gateway"
	"github.com/ambient-mesh/mesh/pkg/meshconfig"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/routestatus"
	"github.com/ambient-mesh/mesh/pkg/xds"
)

// Scheme holds every kind istiod-lite reads or writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, gatewayv1.Install, securityv1.AddToScheme,
		networkingv1.AddToScheme, policyv1alpha1.AddToScheme, telemetryv1.AddToScheme, telemetryv1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// runnable adapts a function to a manager Runnable that runs on every replica.
type runnable func(context.Context) error

func (r runnable) Start(ctx context.Context) error { return r(ctx) }
func (runnable) NeedLeaderElection() bool          { return false }

// Run runs istiod-lite until ctx ends. restCfg reaches the API server.
//
// Start-up: the manager starts (informers, leader election); the leader
// makes sure CA keys exist (the plug-in cacerts Secret, or a self-signed root
// it stores once); every replica waits for the keys, then serves xDS and the
// CA on one TLS gRPC port with its own certificate for istiod.<ns>.svc.
// Shutdown is two-stage: gRPC stops accepting and drains streams for
// ShutdownGrace, then the rest is cut.
func Run(ctx context.Context, cfg Config, restCfg *rest.Config, log *zap.Logger) error {
	ctrl.SetLogger(zapr.NewLogger(log.Named("controller-runtime")))
	scheme, err := Scheme()
	if err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	var meshFile *meshv1alpha1.MeshConfig
	if cfg.MeshConfigFile != "" {
		mc, warnings, err := meshconfig.ReadFile(cfg.MeshConfigFile)
		if err != nil {
			return err
		}
		for _, w := range warnings {
			log.Warn("mesh config file", zap.String("file", cfg.MeshConfigFile), zap.String("warning", w))
		}
		meshFile = mc
	}
	mgr, err := ctrl.NewManager(restCfg, manager.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: "0"}, // served by serveMetrics
		HealthProbeBindAddress:        "0",
		LeaderElection:                cfg.LeaderElection,
		LeaderElectionID:              cfg.LeaderElectionID,
		LeaderElectionNamespace:       cfg.Namespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 durOrNil(cfg.LeaseDuration),
		RenewDeadline:                 durOrNil(cfg.RenewDeadline),
		RetryPeriod:                   durOrNil(cfg.RetryPeriod),
		GracefulShutdownTimeout:       &cfg.ShutdownGrace,
		Cache:                         cache.Options{DefaultTransform: cache.TransformStripManagedFields()},
		// One Run per process in production; tests run several in one binary.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}

	// This Run's own metrics, served on MetricsAddr together with
	// controller-runtime's (process-global) registry.
	reg := prometheus.NewRegistry()

	// TLS for 15012 is the CA's serving certificate, known once keys exist.
	var serving atomic.Pointer[tls.Config]
	grpcTLS := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			if c := serving.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("istiod-lite: CA not ready")
		},
	}
	// Pod-bound tokens are checked here against the API server's published
	// keys and the informer caches; the rest by TokenReview.
	checks, err := ca.NewTokenChecks(reg)
	if err != nil {
		return err
	}
	pods := ca.ClientPods{Reader: mgr.GetClient(), Indexed: true}
	caAuth := &ca.CachingAuthenticator{Next: &ca.LocalAuthenticator{
		Checks:          checks,
		Client:          cs,
		Pods:            pods,
		ServiceAccounts: ca.ClientServiceAccounts{Reader: mgr.GetClient()},
		Next:            &ca.TokenReviewAuthenticator{Client: cs},
		Logger:          log.Named("authn"),
	}}
	xdsSrv, err := xds.New(xds.Options{
		Authenticator: xds.BearerAuthenticator(func(ctx context.Context, tok string) (xds.Identity, error) {
			c, err := caAuth.Authenticate(ctx, tok)
			if err != nil {
				return xds.Identity{}, err
			}
			return xds.Identity{Namespace: c.Namespace, ServiceAccount: c.ServiceAccount, PodName: c.PodName, PodUID: string(c.PodUID), NodeName: c.NodeName}, nil
		}),
		Logger:        log.Named("xds"),
		Registerer:    reg,
		TLS:           grpcTLS,
		Debounce:      cfg.XDSDebounce,
		ShutdownGrace: cfg.ShutdownGrace,
	})
	if err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	// Leader only: the route statuses of each translation.
	routeStatus := &routestatus.Writer{Client: mgr.GetClient(), Logger: log.Named("routestatus")}
	collector := &controller.Collector{
		Client: mgr.GetClient(),
		Mesh: model.MeshConfig{ClusterID: cfg.ClusterID, TrustDomain: cfg.TrustDomain, DomainSuffix: cfg.DomainSuffix, RootNamespace: cfg.Namespace,
			Istio: meshFile},
		MeshConfigMap: types.NamespacedName{Namespace: cfg.Namespace, Name: meshconfig.ConfigMapName},
		Sink: func(r model.Resources) {
			xdsSrv.Update(r)
			routeStatus.Update(r)
		},
		Logger: log.Named("model"),
		Events: mgr.GetEventRecorder("istiod-lite"),
		IsLeader: func() bool {
			select {
			case <-mgr.Elected():
				return true
			default:
				return false
			}
		},
	}
	if err := collector.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the model collector: %w", err)
	}
	routeStatus.Watches = collector.Watches
	if err := mgr.Add(routeStatus); err != nil {
		return err
	}
	waypoints := &gateway.Reconciler{Client: mgr.GetClient(), Opts: gateway.Options{
		Image:        cfg.WaypointImage,
		XDSAddress:   "istiod." + cfg.Namespace + ".svc:15012",
		DomainSuffix: cfg.DomainSuffix,
		Logger:       log.Named("waypoints"),
	}}
	if err := waypoints.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the waypoint deployer: %w", err)
	}
	if err := mgr.Add(runnable(xdsSrv.Start)); err != nil {
		return err
	}
	// Leader only: make sure CA keys exist, activate staged roots and prune
	// replaced ones after their overlap.
	if err := mgr.Add(&ca.RootRotator{Client: cs, Namespace: cfg.Namespace,
		Options: ca.RootOptions{TrustDomain: cfg.TrustDomain, Logger: log.Named("ca")}}); err != nil {
		return err
	}
	// Impersonation asks "does this service account have a pod on that
	// node?" on every CreateCertificate: answer from an index.
	if err := ca.IndexPods(ctx, mgr.GetFieldIndexer()); err != nil {
		return fmt.Errorf("index pods for the CA: %w", err)
	}
	// Token checks read service accounts from the cache: start its
	// informer with the others, not on the first stream.
	if _, err := mgr.GetCache().GetInformer(ctx, &corev1.ServiceAccount{}); err != nil {
		return fmt.Errorf("service account informer for token checks: %w", err)
	}

	var grpcReady atomic.Bool
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return mgr.Start(ctx) })
	g.Go(func() error {
		return serveHTTP(ctx, "metrics", cfg.MetricsAddr, promhttp.HandlerFor(prometheus.Gatherers{crmetrics.Registry, reg}, promhttp.HandlerOpts{}))
	})
	g.Go(func() error {
		return serveDebug(ctx, cfg.DebugAddr, xdsSrv, func() error {
			switch {
			case !grpcReady.Load():
				return errors.New("CA keys not loaded or gRPC not serving yet")
			case !collector.Built():
				return errors.New("mesh model not built yet (informers syncing)")
			}
			return nil
		})
	})
	g.Go(func() error {
		keys, err := ca.WaitForKeys(ctx, cs, cfg.Namespace, 500*time.Millisecond)
		if err != nil {
			return fmt.Errorf("wait for CA keys in namespace %s (the leader creates them; check its log): %w", cfg.Namespace, err)
		}
		authority, err := ca.New(keys, ca.Options{TrustDomain: cfg.TrustDomain, DefaultTTL: cfg.DefaultCertTTL, MaxTTL: cfg.MaxCertTTL, Logger: log.Named("ca")})
		if err != nil {
			return fmt.Errorf("CA: %w", err)
		}
		caSrv, err := ca.NewServer(authority, ca.ServerOptions{
			Authenticator:       caAuth,
			Pods:                pods,
			TrustedNodeAccounts: cfg.TrustedNodeAccounts,
			SystemNamespace:     cfg.Namespace,
			Logger:              log.Named("ca"),
		})
		if err != nil {
			return fmt.Errorf("CA server: %w", err)
		}
		if err := (&ca.RootCertReconciler{Client: mgr.GetClient(), Roots: authority.RootsPEM}).SetupWithManager(mgr, ca.RootsChangedChannel(authority)); err != nil {
			return fmt.Errorf("root cert publisher: %w", err)
		}
		reloader := &ca.Reloader{CA: authority, Client: cs, Namespace: cfg.Namespace, Logger: log.Named("ca")}
		if err := mgr.Add(runnable(reloader.Start)); err != nil {
			return err
		}
		ns := cfg.Namespace
		serving.Store(authority.ServerTLSConfig("istiod."+ns+".svc", "istiod."+ns+".svc."+cfg.DomainSuffix, "istiod-lite."+ns+".svc", "istiod-lite."+ns+".svc."+cfg.DomainSuffix))
		return serveGRPC(ctx, cfg, xdsSrv, caSrv, &grpcReady, log)
	})
	log.Info("starting", zap.String("namespace", cfg.Namespace), zap.String("grpc", cfg.GRPCAddr),
		zap.String("metrics", cfg.MetricsAddr), zap.String("debug", cfg.DebugAddr), zap.Bool("leader_election", cfg.LeaderElection))
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func serveGRPC(ctx context.Context, cfg Config, xdsSrv *xds.Server, caSrv *ca.Server, ready *atomic.Bool, log *zap.Logger) error {
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	gs := grpc.NewServer(xdsSrv.GRPCServerOptions()...)
	xdsSrv.Register(ctx, gs)
	caSrv.Register(gs)
	ready.Store(true)
	log.Info("serving xds and ca", zap.String("addr", lis.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc server on %s: %w", cfg.GRPCAddr, err)
	case <-ctx.Done():
	}
	ready.Store(false)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownGrace):
		log.Warn("grpc drain deadline passed; closing remaining streams", zap.Duration("grace", cfg.ShutdownGrace))
		gs.Stop()
	}
	return nil
}

func serveDebug(ctx context.Context, addr string, xdsSrv *xds.Server, ready func() error) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/debug/", xdsSrv.DebugHandler())
	return serveHTTP(ctx, "debug", addr, mux)
}

// serveHTTP serves h on addr until ctx ends.
func serveHTTP(ctx context.Context, what, addr string, h http.Handler) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for %s on %s: %w", what, addr, err)
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server on %s: %w", what, addr, err)
	}
	return nil
}

// durOrNil is d for a manager option, or nil (its default) when d is 0.
func durOrNil(d time.Duration) *time.Duration {
	if d <= 0 {
		return nil
	}
	return &d
}
