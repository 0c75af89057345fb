// Command istiod-lite is the mesh control plane: it watches Kubernetes, serves
// the Istio workload API over delta xDS and runs the mesh CA on 15012. The
// controllers land with pkg/model, pkg/xds and pkg/ca; today the binary starts,
// logs its version and waits.
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
		fmt.Println("istiod-lite", version.String())
		return
	}
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite: logger:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Named("istiod-lite").Info("starting", zap.String("version", version.String()))
	<-ctx.Done()
	log.Named("istiod-lite").Info("stopped")
}
