// Command ztunnel is the per-node L4 proxy of the ambient mesh: it captures
// the traffic of ambient pods on its node and carries it over HBONE (mTLS
// HTTP/2 CONNECT on 15008). The data path lands with pkg/hbone and the
// ztunnel issue; today the binary starts, logs its version and waits.
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
		fmt.Println("ztunnel", version.String())
		return
	}
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel: logger:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Named("ztunnel").Info("starting", zap.String("version", version.String()))
	<-ctx.Done()
	log.Named("ztunnel").Info("stopped")
}
