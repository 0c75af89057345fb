// Command istiod-lite is the mesh control plane: it watches Kubernetes, serves
// the Istio workload API over delta xDS and runs the mesh CA on 15012 (TLS),
// with metrics on 15014 and health and debug endpoints on 8080. See
// pkg/istiod for what it runs and flags --help for its settings.
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/ambient-mesh/mesh/internal/kubeclient"
	"github.com/ambient-mesh/mesh/pkg/logging"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

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
	log, err := logging.New(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	restCfg, err := kubeclient.RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log = log.Named("istiod-lite")
	log.Info("version", zap.String("version", version.String()))
	return istiod.Run(ctx, cfg, restCfg, log)
}
