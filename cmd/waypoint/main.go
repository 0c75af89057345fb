// Command waypoint is the optional per-namespace L7 proxy of the ambient mesh
// (HTTPRoute splitting, retries, timeouts, outlier detection). The L7 engine
// lands with pkg/waypoint; today the binary starts, logs its version and waits.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/ambient-mesh/mesh/pkg/version"
)

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("waypoint", version.String())
		return
	}
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint: logger:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Named("waypoint").Info("starting", zap.String("version", version.String()))
	<-ctx.Done()
	log.Named("waypoint").Info("stopped")
}
