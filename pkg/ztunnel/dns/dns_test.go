package dns

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func svc(ns, host string, vips ...string) *workloadapi.Service {
	s := &workloadapi.Service{Name: host, Namespace: ns, Hostname: host}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: netip.MustParseAddr(v).AsSlice()})
	}
	return s
}

func testSnapshot() *state.Snapshot {
	ep := &workloadapi.Workload{Uid: "u1", Name: "db-0", Namespace: "data", Addresses: [][]byte{netip.MustParseAddr("10.0.5.1").AsSlice()},
		Services: map[string]*workloadapi.PortList{"data/db.data.svc.cluster.local": {}}}
	sick := &workloadapi.Workload{Uid: "u2", Name: "db-1", Namespace: "data", Addresses: [][]byte{netip.MustParseAddr("10.0.5.2").AsSlice()},
		Status: workloadapi.WorkloadStatus_UNHEALTHY, Services: map[string]*workloadapi.PortList{"data/db.data.svc.cluster.local": {}}}
	return state.NewSnapshot([]*workloadapi.Workload{ep, sick}, []*workloadapi.Service{
		svc("demo", "web.demo.svc.cluster.local", "10.96.0.1", "fd00::1"),
		svc("other", "web.other.svc.cluster.local", "10.96.0.2"),
		svc("data", "db.data.svc.cluster.local"),    // headless
		svc("demo", "api.example.com", "10.96.0.3"), // ServiceEntry-style host
	}, nil)
}

func TestLookup(t *testing.T) {
	snap := testSnapshot()
	tests := []struct {
		name, ns, q string
		qtype       uint16
		found       bool
		want        []string
	}{
		{"fqdn", "demo", "web.demo.svc.cluster.local.", mdns.TypeA, true, []string{"10.96.0.1"}},
		{"short name in own namespace", "demo", "web.", mdns.TypeA, true, []string{"10.96.0.1"}},
		{"short name resolves in pod's namespace", "other", "web", mdns.TypeA, true, []string{"10.96.0.2"}},
		{"namespace qualified", "other", "web.demo.", mdns.TypeA, true, []string{"10.96.0.1"}},
		{"svc qualified", "other", "web.demo.svc", mdns.TypeA, true, []string{"10.96.0.1"}},
		{"aaaa", "demo", "web", mdns.TypeAAAA, true, []string{"fd00::1"}},
		{"aaaa missing is empty not miss", "other", "web", mdns.TypeAAAA, true, nil},
		{"headless: healthy endpoints", "demo", "db.data", mdns.TypeA, true, []string{"10.0.5.1"}},
		{"external host in state", "demo", "api.example.com.", mdns.TypeA, true, []string{"10.96.0.3"}},
		{"case insensitive", "demo", "WEB.Demo.", mdns.TypeA, true, []string{"10.96.0.1"}},
		{"unknown forwards", "demo", "example.org.", mdns.TypeA, false, nil},
		{"unknown namespace", "demo", "web.nope", mdns.TypeA, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ips, _, found := Lookup(snap, "", tc.ns, DefaultDomain, tc.q, tc.qtype)
			var got []string
			for _, ip := range ips {
				got = append(got, ip.String())
			}
			if found != tc.found || !slices.Equal(got, tc.want) {
				t.Errorf("Lookup(%q from %s) = %v, found %v; want %v, found %v", tc.q, tc.ns, got, found, tc.want, tc.found)
			}
		})
	}
}

// startUpstream runs a resolver on loopback answering every A query with
// 192.0.2.1.
func startUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &Server{Store: state.NewStore(), Forward: func(_ context.Context, q *mdns.Msg, _ string) (*mdns.Msg, error) {
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		return m, nil
	}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- up.Serve(ctx, pc, nil) }()
	t.Cleanup(func() { cancel(); <-done; pc.Close() })
	return pc.LocalAddr().String()
}

func TestServerAnswersAndForwards(t *testing.T) {
	upstream := startUpstream(t)
	store := state.NewStore()
	store.Replace(testSnapshot())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &Server{Store: store, Namespace: "demo", Forward: func(ctx context.Context, q *mdns.Msg, network string) (*mdns.Msg, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "udp", upstream)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return Exchange(ctx, q, c, "udp")
	}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, ln) }()
	defer func() { cancel(); <-done }()

	for _, tc := range []struct {
		net, q, want string
	}{
		{"udp", "web.", "10.96.0.1"},
		{"tcp", "web.demo.svc.cluster.local.", "10.96.0.1"},
		{"udp", "example.org.", "192.0.2.1"},
		{"tcp", "example.org.", "192.0.2.1"},
	} {
		addr := pc.LocalAddr().String()
		if tc.net == "tcp" {
			addr = ln.Addr().String()
		}
		c := &mdns.Client{Net: tc.net, Timeout: 5 * time.Second}
		m := new(mdns.Msg)
		m.SetQuestion(tc.q, mdns.TypeA)
		resp, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.net, tc.q, err)
		}
		if len(resp.Answer) != 1 || resp.Answer[0].(*mdns.A).A.String() != tc.want || resp.Id != m.Id {
			t.Errorf("%s %s: answer %v (id %d, sent %d), want %s", tc.net, tc.q, resp.Answer, resp.Id, m.Id, tc.want)
		}
	}
}
