// Command ztunnel is the per-node L4 proxy of the ambient mesh: it captures
// the traffic of ambient pods on its node and carries it over HBONE (mTLS
// HTTP/2 CONNECT on 15008). It is a thin main over pkg/ztunnel/app: flags
// (each with its environment variable) -> app.Config -> app.New -> Run until
// SIGTERM, which drains. Pods arrive from the node agent over its ZDS socket
// (pkg/zds, -zds-socket).
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/ambient-mesh/mesh/pkg/logging"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ambient-mesh/mesh/pkg/version"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/app"
)

func main() {
	var cfg app.Config
	cfg.RegisterFlags(flag.CommandLine)
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("ztunnel", version.String())
		return
	}
	level := zap.NewAtomicLevel()
	if l, err := zapcore.ParseLevel(cfg.LogLevel); err == nil {
		level.SetLevel(l)
	}
	log, err := logging.Build(level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Named("ztunnel").Info("starting", zap.String("version", version.String()))
	a, err := app.New(cfg, log, &level)
	if err != nil {
		log.Fatal("configure ztunnel", zap.Error(err))
	}
	if err := a.Run(ctx); err != nil {
		log.Fatal("ztunnel failed", zap.Error(err))
	}
	log.Named("ztunnel").Info("stopped")
}
