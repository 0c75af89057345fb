package ztunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/hbone"
	"github.com/ambient-mesh/mesh/pkg/redirect"
)

var (
	nodeW = netip.MustParseAddr("10.78.3.1")
	podW  = netip.MustParseAddr("10.78.3.2")
	wpVIP = netip.MustParseAddr("10.96.78.30")
	viaWP = netip.MustParseAddr("10.96.78.20")
)

// A service with a waypoint: A's ztunnel must send the connection over
// HBONE to the waypoint pod's 15008 with the original VIP:port as
// :authority, presenting A's identity and expecting the waypoint's. The
// "waypoint" here is a bare HBONE server in a third netns (waypoints are not
// captured) that answers with what it saw.
func TestWaypointRedirection(t *testing.T) {
	m := newMesh(t, true, zaptest.NewLogger(t), nil)
	node := mustNS(t, m.nodeName)
	_, w := newNS(t, "w")
	nl := nlHandle(t, node)
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vw"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(w))}); err != nil {
		t.Fatal(err)
	}
	wl := nlHandle(t, w)
	addr(t, nl, "vw", nodeW, netip.Addr{})
	addr(t, wl, "eth0", podW, nodeW)
	waitUp(t, nl, "vw")
	waitUp(t, wl, "eth0")

	svid, err := m.ca.SVID("b", "waypoint")
	if err != nil {
		t.Fatal(err)
	}
	wpCerts := &StaticCerts{Bundle: m.ca.Bundle()}
	wpCerts.Add(svid)
	srv, err := hbone.NewServer(hbone.ServerConfig{SVID: svidSource{certs: wpCerts, id: svid.ID, timeout: ioTimeout}, Bundle: m.ca.Bundle(), Hooks: hbone.Hooks{
		DialUpstream: func(_ context.Context, in *hbone.Inbound) (net.Conn, error) {
			a, b := net.Pipe()
			go func() {
				defer b.Close()
				fmt.Fprintf(b, "waypoint saw %s from %s\n", in.Target, in.Peer)
			}()
			return a, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := redirect.Listen(t.Context(), w, "tcp", ":15008", redirect.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })

	wpKey := "b/waypoint.b.svc.cluster.local"
	wpWorkload := clientWorkload([]netip.Addr{podW}, "b", "waypoint", wpKey)
	wpWorkload.Services[wpKey] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}}
	m.extraW = []*workloadapi.Workload{wpWorkload}
	m.extraS = []*workloadapi.Service{
		{Name: "waypoint", Namespace: "b", Hostname: "waypoint.b.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: wpVIP.AsSlice()}}, Ports: []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}},
		{Name: "viawp", Namespace: "b", Hostname: "viawp.b.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: viaWP.AsSlice()}}, Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
			Waypoint: &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "b", Hostname: "waypoint.b.svc.cluster.local"}}, HboneMtlsPort: 15008}},
	}
	m.setPolicies()

	c, r := dialFromApp(t, m.a, netip.AddrPortFrom(viaWP, 80))
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read from waypoint: %v", err)
	}
	if want := "waypoint saw 10.96.78.20:80 from spiffe://cluster.local/ns/a/sa/client\n"; line != want {
		t.Errorf("waypoint got %q, want %q", line, want)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("read to end: %v", err)
	}
}
