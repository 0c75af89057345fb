package route

import (
	"errors"
	"net/netip"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

const svcKey = "ns/web.ns.svc.cluster.local"

func workload(name, ip string, proto workloadapi.TunnelProtocol, svcs ...string) *workloadapi.Workload {
	w := &workloadapi.Workload{Uid: "c//Pod/ns/" + name, Name: name, Namespace: "ns", ServiceAccount: name,
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: proto,
		Services: map[string]*workloadapi.PortList{}}
	for _, s := range svcs {
		w.Services[s] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
	return w
}

func service(host, vip string, wp *workloadapi.GatewayAddress) *workloadapi.Service {
	return &workloadapi.Service{Name: host, Namespace: "ns", Hostname: host,
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 90}},
		Waypoint:  wp, SubjectAltNames: []string{"spiffe://cluster.local/ns/ns/sa/extra"}}
}

func gwAddr(ip string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr(ip).AsSlice()}}, HboneMtlsPort: 15008}
}

func gwHost(host string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "ns", Hostname: host}}}
}

func TestOutbound(t *testing.T) {
	client := workload("client", "10.0.0.1", workloadapi.TunnelProtocol_HBONE)
	web1 := workload("web1", "10.0.1.1", workloadapi.TunnelProtocol_HBONE, svcKey)
	web2 := workload("web2", "10.0.1.2", workloadapi.TunnelProtocol_HBONE, svcKey)
	sick := workload("web3", "10.0.1.3", workloadapi.TunnelProtocol_HBONE, svcKey)
	sick.Status = workloadapi.WorkloadStatus_UNHEALTHY
	plain := workload("legacy", "10.0.2.1", workloadapi.TunnelProtocol_NONE)
	wp := workload("waypoint", "10.0.3.1", workloadapi.TunnelProtocol_HBONE, "ns/waypoint.ns.svc.cluster.local")
	podWithWP := workload("behind", "10.0.4.1", workloadapi.TunnelProtocol_HBONE)
	podWithWP.Waypoint = gwAddr("10.96.0.100")
	wpSvc := service("waypoint.ns.svc.cluster.local", "10.96.0.100", nil)
	wpSvc.Ports = []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}
	emptySvc := service("empty.ns.svc.cluster.local", "10.96.0.3", nil)
	snap := state.NewSnapshot(
		[]*workloadapi.Workload{client, web1, web2, sick, plain, wp, podWithWP},
		[]*workloadapi.Service{
			service("web.ns.svc.cluster.local", "10.96.0.1", nil),
			service("viawp.ns.svc.cluster.local", "10.96.0.2", gwHost("waypoint.ns.svc.cluster.local")),
			service("viawpaddr.ns.svc.cluster.local", "10.96.0.4", gwAddr("10.96.0.100")),
			service("lostwp.ns.svc.cluster.local", "10.96.0.5", gwHost("gone.ns.svc.cluster.local")),
			emptySvc, wpSvc,
		}, nil)
	src := Source{Workload: client, IP: netip.MustParseAddr("10.0.0.1")}

	tests := []struct {
		name    string
		src     Source
		dst     string
		pick    int
		want    string // Request.String()
		wantErr error
	}{
		{"vip to first endpoint", src, "10.96.0.1:80", 0, "hbone 10.0.1.1:15008 authority=10.0.1.1:8080 ids=spiffe://cluster.local/ns/ns/sa/web1,spiffe://cluster.local/ns/ns/sa/extra", nil},
		{"vip round robin skips unhealthy", src, "10.96.0.1:80", 1, "hbone 10.0.1.2:15008 authority=10.0.1.2:8080 ids=spiffe://cluster.local/ns/ns/sa/web2,spiffe://cluster.local/ns/ns/sa/extra", nil},
		{"vip wraps", src, "10.96.0.1:80", 2, "hbone 10.0.1.1:15008 authority=10.0.1.1:8080 ids=spiffe://cluster.local/ns/ns/sa/web1,spiffe://cluster.local/ns/ns/sa/extra", nil},
		{"vip port without target keeps port", src, "10.96.0.1:90", 0, "hbone 10.0.1.1:15008 authority=10.0.1.1:90 ids=spiffe://cluster.local/ns/ns/sa/web1,spiffe://cluster.local/ns/ns/sa/extra", nil},
		{"vip without endpoints", src, "10.96.0.3:80", 0, "", ErrNoHealthyUpstream},
		{"pod ip direct", src, "10.0.1.2:8080", 0, "hbone 10.0.1.2:15008 authority=10.0.1.2:8080 ids=spiffe://cluster.local/ns/ns/sa/web2", nil},
		{"unhealthy pod ip still direct", src, "10.0.1.3:8080", 0, "hbone 10.0.1.3:15008 authority=10.0.1.3:8080 ids=spiffe://cluster.local/ns/ns/sa/web3", nil},
		{"tunnel NONE is plain tcp", src, "10.0.2.1:5432", 0, "tcp 10.0.2.1:5432", nil},
		{"unknown ip passthrough", src, "93.184.216.34:443", 0, "tcp 93.184.216.34:443", nil},
		{"service waypoint by hostname", src, "10.96.0.2:80", 0, "hbone 10.0.3.1:15008 authority=10.96.0.2:80 ids=spiffe://cluster.local/ns/ns/sa/waypoint waypoint", nil},
		{"service waypoint by address", src, "10.96.0.4:80", 0, "hbone 10.0.3.1:15008 authority=10.96.0.4:80 ids=spiffe://cluster.local/ns/ns/sa/waypoint waypoint", nil},
		{"waypoint missing", src, "10.96.0.5:80", 0, "", ErrUnknownWaypoint},
		{"pod waypoint keeps pod authority", src, "10.0.4.1:8080", 0, "hbone 10.0.3.1:15008 authority=10.0.4.1:8080 ids=spiffe://cluster.local/ns/ns/sa/waypoint waypoint", nil},
		{"waypoint itself goes direct", Source{Workload: wp, IP: netip.MustParseAddr("10.0.3.1")}, "10.0.4.1:8080", 0, "hbone 10.0.4.1:15008 authority=10.0.4.1:8080 ids=spiffe://cluster.local/ns/ns/sa/behind", nil},
		{"own outbound port refused", src, "10.0.0.1:15001", 0, "", ErrLoop},
		{"own hbone port refused", src, "10.0.0.1:15008", 0, "", ErrLoop},
		{"loopback 15006 refused", src, "127.0.0.1:15006", 0, "", ErrLoop},
		{"source without workload, own ip", Source{IP: netip.MustParseAddr("10.9.9.9")}, "10.9.9.9:15053", 0, "", ErrLoop},
		{"other pod's 15008 allowed", src, "10.0.1.1:15008", 0, "hbone 10.0.1.1:15008 authority=10.0.1.1:15008 ids=spiffe://cluster.local/ns/ns/sa/web1", nil},
		{"own app port fine", src, "10.0.0.1:8080", 0, "hbone 10.0.0.1:15008 authority=10.0.0.1:8080 ids=spiffe://cluster.local/ns/ns/sa/client", nil},
		{"v4-mapped destination", src, "[::ffff:10.0.1.2]:8080", 0, "hbone 10.0.1.2:15008 authority=10.0.1.2:8080 ids=spiffe://cluster.local/ns/ns/sa/web2", nil},
		{"other network unknown", Source{Workload: client, IP: netip.MustParseAddr("10.0.0.1"), Network: "net2"}, "10.0.1.2:8080", 0, "tcp 10.0.1.2:8080", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Outbound(snap, tc.src, netip.MustParseAddrPort(tc.dst), func(n int) int { return tc.pick % n })
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Outbound(%s) error = %v, want %v (request %v)", tc.dst, err, tc.wantErr, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Outbound(%s): %v", tc.dst, err)
			}
			if got.String() != tc.want {
				t.Errorf("Outbound(%s)\n got %s\nwant %s", tc.dst, got, tc.want)
			}
		})
	}
}

func TestRoundRobinSpreads(t *testing.T) {
	var n uint64
	pick := RoundRobin(func() uint64 { n++; return n })
	seen := map[int]int{}
	for range 9 {
		seen[pick(3)]++
	}
	for i := range 3 {
		if seen[i] != 3 {
			t.Errorf("endpoint %d picked %d times in 9, want 3 (%v)", i, seen[i], seen)
		}
	}
}
