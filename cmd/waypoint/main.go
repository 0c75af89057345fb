// Command waypoint is the ambient mesh's optional L7 proxy, one Deployment
// per waypoint Gateway (class istio-waypoint): it terminates HBONE on 15008
// for the Services bound to the waypoint, applies their HTTPRoute, GRPCRoute
// and TCPRoute configuration (splits, matches, filters, retries, timeouts,
// mirrors) and tunnels on to backend pods over HBONE. It is a thin main over
// pkg/waypoint/app: flags (each with its environment variable) ->
// app.Config -> app.New -> Run until SIGTERM, which drains.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ambient-mesh/mesh/pkg/logging"
	"github.com/ambient-mesh/mesh/pkg/otel"
	"github.com/ambient-mesh/mesh/pkg/version"
	"github.com/ambient-mesh/mesh/pkg/waypoint/app"
)

func main() {
	var cfg app.Config
	cfg.RegisterFlags(flag.CommandLine)
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage of %s:\n", os.Args[0])
		flag.PrintDefaults()
		fmt.Fprintln(flag.CommandLine.Output(), "\nOTLP export (environment; a Telemetry resource naming a provider overrides the collector and sampling):")
		for _, v := range otel.EnvVars {
			fmt.Fprintf(flag.CommandLine.Output(), "  %s (default %q)\n    \t%s\n", v.Name, v.Default, v.Help)
		}
	}
	flag.Parse()
	if *showVersion {
		fmt.Println("waypoint", version.String())
		return
	}
	level := zap.NewAtomicLevel()
	if l, err := zapcore.ParseLevel(cfg.LogLevel); err == nil {
		level.SetLevel(l)
	}
	log, err := logging.Build(level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Named("waypoint").Info("starting", zap.String("version", version.String()))
	gc := app.TuneGC(os.Getenv, "/sys/fs/cgroup")
	gogc, memLimit := os.Getenv("GOGC"), os.Getenv("GOMEMLIMIT")
	if gc.GCPercent != 0 {
		gogc = strconv.Itoa(gc.GCPercent)
	}
	if gc.MemoryLimit != 0 {
		memLimit = strconv.FormatInt(gc.MemoryLimit, 10)
	}
	log.Named("waypoint").Info("garbage collector", zap.String("gogc", gogc), zap.String("memoryLimit", memLimit))
	a, err := app.New(cfg, log, &level)
	if err != nil {
		log.Fatal("configure waypoint", zap.Error(err))
	}
	if err := a.Run(ctx); err != nil {
		log.Fatal("waypoint failed", zap.Error(err))
	}
	log.Named("waypoint").Info("stopped")
}
