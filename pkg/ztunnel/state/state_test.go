package state

import (
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

func res(t *testing.T, name string, m proto.Message) xdsclient.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return xdsclient.Resource{Name: name, Version: "1", TypeURL: a.TypeUrl, Value: a.Value}
}

func wl(uid, ns, ip string, svcs ...string) *workloadapi.Address {
	w := &workloadapi.Workload{Uid: uid, Name: uid, Namespace: ns, ServiceAccount: "sa",
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Services: map[string]*workloadapi.PortList{}}
	for _, s := range svcs {
		w.Services[s] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func svc(ns, host, vip string) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: host, Namespace: ns, Hostname: host,
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
	}}}
}

func TestStoreIndexes(t *testing.T) {
	st := NewStore()
	err := st.HandleAddress(xdsclient.Delta{TypeURL: AddressTypeURL, Updated: []xdsclient.Resource{
		res(t, "c//Pod/ns1/a", wl("c//Pod/ns1/a", "ns1", "10.0.0.1", "ns1/web.ns1.svc.cluster.local")),
		res(t, "c//Pod/ns1/b", wl("c//Pod/ns1/b", "ns1", "10.0.0.2", "ns1/web.ns1.svc.cluster.local")),
		res(t, "ns1/web.ns1.svc.cluster.local", svc("ns1", "web.ns1.svc.cluster.local", "10.96.0.1")),
	}})
	if err != nil {
		t.Fatalf("HandleAddress: %v", err)
	}
	s := st.Snapshot()
	if w := s.WorkloadByIP(NetworkAddr{IP: netip.MustParseAddr("10.0.0.2")}); w.GetUid() != "c//Pod/ns1/b" {
		t.Errorf("WorkloadByIP(10.0.0.2) = %q, want c//Pod/ns1/b", w.GetUid())
	}
	if v := s.ServiceByIP(NetworkAddr{IP: netip.MustParseAddr("10.96.0.1")}); v.GetHostname() != "web.ns1.svc.cluster.local" {
		t.Errorf("ServiceByIP = %v", v)
	}
	if got := len(s.ServicesByHostname("web.ns1.svc.cluster.local")); got != 1 {
		t.Errorf("ServicesByHostname: %d services, want 1", got)
	}
	if got := len(s.Endpoints("ns1/web.ns1.svc.cluster.local")); got != 2 {
		t.Errorf("Endpoints: %d, want 2", got)
	}
	// Removal by resource name drops every index.
	if err := st.HandleAddress(xdsclient.Delta{TypeURL: AddressTypeURL, Removed: []string{"c//Pod/ns1/a", "ns1/web.ns1.svc.cluster.local"}}); err != nil {
		t.Fatal(err)
	}
	s2 := st.Snapshot()
	if s2.WorkloadByIP(NetworkAddr{IP: netip.MustParseAddr("10.0.0.1")}) != nil || s2.ServiceByIP(NetworkAddr{IP: netip.MustParseAddr("10.96.0.1")}) != nil {
		t.Errorf("removed workload/service still indexed")
	}
	if got := len(s2.Endpoints("ns1/web.ns1.svc.cluster.local")); got != 1 {
		t.Errorf("Endpoints after removal: %d, want 1", got)
	}
	// The old snapshot is unchanged.
	if s.Workload("c//Pod/ns1/a") == nil || s2.Version != s.Version+1 {
		t.Errorf("old snapshot changed or version not bumped: %d -> %d", s.Version, s2.Version)
	}
}

func TestNACKAppliesValidAndNamesField(t *testing.T) {
	bad := wl("c//Pod/ns1/bad", "ns1", "10.0.0.9")
	bad.GetWorkload().Addresses = [][]byte{{1, 2, 3}}
	tests := []struct {
		name      string
		res       xdsclient.Resource
		wantField string
	}{
		{"short address", res(t, "c//Pod/ns1/bad", bad), `"c//Pod/ns1/bad": workload.addresses[0]: 3 bytes`},
		{"name mismatch", res(t, "other", wl("c//Pod/ns1/x", "ns1", "10.0.0.8")), `"other": name: resource name differs`},
		{"service without hostname", res(t, "ns1/", svc("ns1", "", "10.96.0.9")), `service.hostname: empty`},
		{"not an address", res(t, "x", &security.Authorization{Name: "x"}), `"x": resource: cannot decode`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore()
			good := res(t, "c//Pod/ns1/a", wl("c//Pod/ns1/a", "ns1", "10.0.0.1"))
			err := st.HandleAddress(xdsclient.Delta{TypeURL: AddressTypeURL, Updated: []xdsclient.Resource{good, tc.res}})
			if err == nil || !strings.Contains(err.Error(), tc.wantField) {
				t.Fatalf("error = %v, want one containing %q", err, tc.wantField)
			}
			if st.Snapshot().Workload("c//Pod/ns1/a") == nil {
				t.Errorf("the valid resource of the batch was not applied")
			}
		})
	}
}

func TestRejectedKeepsPrevious(t *testing.T) {
	st := NewStore()
	if err := st.HandleAddress(xdsclient.Delta{Updated: []xdsclient.Resource{res(t, "u", wl("u", "ns", "10.0.0.1"))}}); err != nil {
		t.Fatal(err)
	}
	bad := wl("u", "ns", "10.0.0.1")
	bad.GetWorkload().Addresses = [][]byte{{0}}
	if err := st.HandleAddress(xdsclient.Delta{Updated: []xdsclient.Resource{res(t, "u", bad)}}); err == nil {
		t.Fatal("bad update accepted")
	}
	if got := IPs(st.Snapshot().Workload("u")); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("after a rejected update the workload has IPs %v, want the previous [10.0.0.1]", got)
	}
}

func TestPoliciesForScope(t *testing.T) {
	st := NewStore()
	pols := []*security.Authorization{
		{Name: "g", Namespace: "istio-system", Scope: security.Scope_GLOBAL},
		{Name: "n1", Namespace: "ns1", Scope: security.Scope_NAMESPACE},
		{Name: "n2", Namespace: "ns2", Scope: security.Scope_NAMESPACE},
		{Name: "sel", Namespace: "ns1", Scope: security.Scope_WORKLOAD_SELECTOR},
		{Name: "sel2", Namespace: "ns1", Scope: security.Scope_WORKLOAD_SELECTOR},
	}
	var rs []xdsclient.Resource
	for _, p := range pols {
		rs = append(rs, res(t, PolicyKey(p), p))
	}
	if err := st.HandleAuthorization(xdsclient.Delta{Updated: rs}); err != nil {
		t.Fatal(err)
	}
	w := wl("u", "ns1", "10.0.0.1").GetWorkload()
	w.AuthorizationPolicies = []string{"ns1/sel", "ns1/missing"}
	var got []string
	for _, p := range st.Snapshot().PoliciesFor(w) {
		got = append(got, PolicyKey(p))
	}
	if want := "istio-system/g ns1/n1 ns1/sel"; strings.Join(got, " ") != want {
		t.Errorf("PoliciesFor = %v, want %s", got, want)
	}
	bad := &security.Authorization{Name: "b", Namespace: "ns1", Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
		SourceIps: []*security.Address{{Address: []byte{10, 0, 0, 0}, Length: 33}}}}}}}}}
	err := st.HandleAuthorization(xdsclient.Delta{Updated: []xdsclient.Resource{res(t, "ns1/b", bad)}, Removed: []string{"ns1/n1"}})
	if err == nil || !strings.Contains(err.Error(), "groups[0].rules[0].matches[0].source_ips[0]: prefix length 33") {
		t.Fatalf("error = %v, want the field and reason", err)
	}
	if st.Snapshot().Policy("ns1/n1") != nil {
		t.Errorf("removal in a NACKed batch not applied")
	}
}

func TestChangedWakes(t *testing.T) {
	st := NewStore()
	ch, s0 := st.Changed()
	if err := st.HandleAuthorization(xdsclient.Delta{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Changed channel not closed by a delta")
	}
	if st.Snapshot().Version != s0.Version+1 {
		t.Errorf("version did not advance")
	}
}

func TestHandlerDispatch(t *testing.T) {
	st := NewStore()
	h := st.Handler()
	if err := h(xdsclient.Delta{TypeURL: "type.googleapis.com/other"}); err == nil {
		t.Error("unknown type accepted")
	}
	if err := h(xdsclient.Delta{TypeURL: AddressTypeURL, Updated: []xdsclient.Resource{res(t, "u", wl("u", "ns", "10.0.0.1"))}}); err != nil {
		t.Fatal(err)
	}
	if st.Snapshot().Workload("u") == nil {
		t.Error("address not applied through Handler")
	}
}
