package xds_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
)

// Example shows how istiod-lite wires the server: one gRPC server on 15012
// shared with the CA, the push loop, the debug endpoints, and a new snapshot
// on every watched change.
func Example() {
	ctx := context.Background()
	var (
		serverTLS *tls.Config         // istiod-lite's serving certificate
		authn     xds.Authenticator   // the TokenReview authenticator
		snapshots chan model.Snapshot // filled by the controllers from their informers
	)
	srv, err := xds.New(xds.Options{
		Authenticator: authn,
		TLS:           serverTLS,
		VerifyNode:    xds.ZtunnelNodeVerifier("istio-system/ztunnel"),
		Logger:        zap.NewExample(),
		Registerer:    prometheus.DefaultRegisterer,
	})
	if err != nil {
		panic(err)
	}
	go srv.Start(ctx) // debounced pushes; streams wait for the first snapshot

	g := grpc.NewServer(srv.GRPCServerOptions()...) // TLS from Options.TLS
	srv.Register(ctx, g)                            // the CA registers its service on g too
	lis, _ := net.Listen("tcp", ":15012")
	go g.Serve(lis)

	http.Handle("/debug/", srv.DebugHandler())

	for snap := range snapshots {
		res := model.Translate(snap)
		for _, d := range res.Diagnostics {
			_ = d // report as a status condition, an Event and a log line
		}
		srv.Update(res)
	}
}
