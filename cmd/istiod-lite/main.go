// Command istiod-lite is the mesh control plane: it watches Kubernetes, serves
// the Istio workload API over delta xDS and runs the mesh CA on 15012 (TLS),
// with metrics on 15014 and health and debug endpoints on 8080. See
// pkg/istiod for what it runs and flags --help for its settings.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambient-mesh/mesh/pkg/istiod"
	"github.com/ambient-mesh/mesh/pkg/version"
)

func main() {
	var cfg istiod.Config
	fs := flag.NewFlagSet("istiod-lite", flag.ExitOnError)
	showVersion := fs.Bool("version", false, "print the version and exit")
	cfg.RegisterFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if *showVersion {
		fmt.Println("istiod-lite", version.String())
		return
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(1)
	}
}

func run(cfg istiod.Config) error {
	level, err := zapcore.ParseLevel(cfg.LogLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	log, err := zc.Build()
	if err != nil {
		return fmt.Errorf("logger: %w", err)
	}
	defer log.Sync() //nolint:errcheck
	var restCfg *rest.Config
	if cfg.Kubeconfig != "" {
		restCfg, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		restCfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes config (--kubeconfig %q, or in-cluster): %w", cfg.Kubeconfig, err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log = log.Named("istiod-lite")
	log.Info("version", zap.String("version", version.String()))
	return istiod.Run(ctx, cfg, restCfg, log)
}
