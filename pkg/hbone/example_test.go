package hbone_test

import (
	"context"
	"io"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambient-mesh/mesh/pkg/hbone"
)

// Inbound, as ztunnel runs it inside a destination pod's netns: present
// the pod's certificate, authorize, dial the app, copy.
func ExampleServer() {
	var (
		ctx    context.Context    // cancelled on drain
		podSV  *x509svid.SVID     // the destination pod's certificate
		bundle *x509bundle.Bundle // mesh root
		ln     net.Listener       // :15008 inside the pod netns
		pc     net.PacketConn     // udp :15008, for HTTP/3
	)
	srv, err := hbone.NewServer(hbone.ServerConfig{
		SVID:   podSV,
		Bundle: bundle,
		Hooks: hbone.Hooks{
			Authorize: func(ctx context.Context, in *hbone.Inbound) error {
				// AuthorizationPolicy on in.Peer, in.TargetAddr, ...; an error answers 401.
				return nil
			},
			DialUpstream: func(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
				// Dial the app from the original source IP; an error answers 503.
				var d net.Dialer
				return d.DialContext(ctx, "tcp", in.Target)
			},
		},
	})
	if err != nil {
		return
	}
	go func() { _ = srv.ServeH3(ctx, pc) }()
	_ = srv.Serve(ctx, ln) // blocks; drains (GOAWAY) when ctx ends
}

// Outbound: one pooled stream from pod A to pod B's 15008.
func ExampleClient_Dial() {
	var (
		ctx    context.Context
		srcSV  *x509svid.SVID // pod A's certificate
		bundle *x509bundle.Bundle
		app    net.Conn // the captured connection from pod A
	)
	client, err := hbone.NewClient(hbone.ClientConfig{Bundle: bundle})
	if err != nil {
		return
	}
	defer client.Close()
	conn, err := client.Dial(ctx, &hbone.Request{
		Source:       srcSV,
		Destinations: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/b")},
		Address:      netip.MustParseAddrPort("10.0.0.2:15008"),
		Authority:    "10.0.0.2:8080",
		Forwarded:    `for="10.0.0.1:41000"`,
	})
	if err != nil {
		// hbone.StatusOf(err) is 401/503/... when the peer answered;
		// errors.Is(err, hbone.ErrConnectTimeout) when 15008 is blocked.
		return
	}
	defer conn.Close()
	go func() { _, _ = io.Copy(conn, app); _ = conn.CloseWrite() }()
	_, _ = io.Copy(app, conn)
}
