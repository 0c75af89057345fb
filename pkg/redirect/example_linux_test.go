package redirect_test

import (
	"context"
	"log"
	"net"
	"net/netip"

	"github.com/ambient-mesh/mesh/pkg/redirect"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
)

// The node agent captures a pod: rules into the pod's netns, the pod's IPs
// into the node's probe sets. (Compiled, not run: it needs a real pod.)
func ExamplePodRules() {
	pod, err := netns.GetFromPath("/var/run/netns/cni-1234") // or the fd from ZDS
	if err != nil {
		log.Fatal(err)
	}
	defer pod.Close()
	if err := redirect.NewPodRules(redirect.PodConfig{DNSCapture: true}, zap.NewNop()).Install(pod); err != nil {
		log.Fatal(err) // the CNI plugin fails the pod's setup: no silent bypass
	}
	// In the node's own netns (netns.None() = the current one).
	host := redirect.NewHostRules(zap.NewNop())
	if err := host.AddPods(netns.None(), netip.MustParseAddr("10.244.0.7")); err != nil {
		log.Fatal(err)
	}
}

// ztunnel, handed a pod's netns, listens inside it and reads where each
// redirected connection was going. (Compiled, not run.)
func ExampleListen() {
	ctx := context.Background()
	pod, err := netns.GetFromPath("/var/run/netns/cni-1234")
	if err != nil {
		log.Fatal(err)
	}
	opts := redirect.SocketOptions{Mark: redirect.ZtunnelMark, ReusePort: true}
	ln, err := redirect.Listen(ctx, pod, "tcp", ":15001", opts)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		dst, err := redirect.OriginalDst(c) // e.g. 10.96.0.10:80, a service VIP
		if err != nil {
			c.Close()
			continue
		}
		// Outbound leg from the same netns, marked so it is not captured again.
		up, err := redirect.Dial(ctx, pod, net.Dialer{}, "tcp", dst.String(), opts)
		if err == nil {
			up.Close()
		}
		c.Close()
	}
}
