package authz

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi/security"
)

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

func cidr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

// pol builds a policy with one group of one rule holding the given matches.
func pol(name string, action security.Action, ms ...*security.Match) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: "ns", Action: action,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: ms}}}}}
}

func TestEvaluate(t *testing.T) {
	sleep := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/web")
	conn := func(id spiffeid.ID) Conn {
		return Conn{Source: id, SrcIP: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddrPort("10.0.0.2:8080")}
	}
	allowSleep := pol("allow-sleep", security.Action_ALLOW, &security.Match{Principals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}})
	denySleep := pol("deny-sleep", security.Action_DENY, &security.Match{Principals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}})
	strict := pol("strict", security.Action_DENY, &security.Match{NotPrincipals: []*security.StringMatch{presence()}})
	allowAll := &security.Authorization{Name: "allow-all", Namespace: "ns", Groups: []*security.Group{{}}}
	denyNothing := &security.Authorization{Name: "allow-nothing", Namespace: "ns"}
	dry := pol("dry", security.Action_DENY, &security.Match{Principals: []*security.StringMatch{presence()}})
	dry.DryRun = true

	tests := []struct {
		name     string
		policies []*security.Authorization
		conn     Conn
		allow    bool
		policy   string
	}{
		{"no policies allow", nil, conn(sleep), true, ""},
		{"matching allow allows", []*security.Authorization{allowSleep}, conn(sleep), true, "ns/allow-sleep"},
		{"allow not matching denies", []*security.Authorization{allowSleep}, conn(other), false, ""},
		{"deny wins over allow", []*security.Authorization{allowSleep, denySleep}, conn(sleep), false, "ns/deny-sleep"},
		{"deny not matching, no allow: allow", []*security.Authorization{denySleep}, conn(other), true, ""},
		{"strict denies plaintext", []*security.Authorization{strict}, conn(spiffeid.ID{}), false, "ns/strict"},
		{"strict allows mtls", []*security.Authorization{strict}, conn(sleep), true, ""},
		{"allow-all rule matches all", []*security.Authorization{allowAll}, conn(spiffeid.ID{}), true, "ns/allow-all"},
		{"allow with no rules denies all", []*security.Authorization{denyNothing}, conn(sleep), false, ""},
		{"dry run never decides", []*security.Authorization{dry}, conn(sleep), true, ""},
		{"namespace match", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{Namespaces: []*security.StringMatch{exact("default")}})}, conn(sleep), true, "ns/a"},
		{"not_namespaces excludes", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{NotNamespaces: []*security.StringMatch{exact("default")}})}, conn(sleep), false, ""},
		{"namespace needs identity", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{Namespaces: []*security.StringMatch{exact("default")}})}, conn(spiffeid.ID{}), false, ""},
		{"source cidr", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/24")}})}, conn(sleep), true, "ns/a"},
		{"source cidr miss", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{SourceIps: []*security.Address{cidr("10.1.0.0/16")}})}, conn(sleep), false, ""},
		{"not source ip", []*security.Authorization{pol("a", security.Action_DENY, &security.Match{NotSourceIps: []*security.Address{cidr("10.0.0.1/32")}})}, conn(sleep), true, ""},
		{"destination port", []*security.Authorization{pol("a", security.Action_DENY, &security.Match{DestinationPorts: []uint32{8080}})}, conn(sleep), false, "ns/a"},
		{"not destination port", []*security.Authorization{pol("a", security.Action_DENY, &security.Match{NotDestinationPorts: []uint32{8080}})}, conn(sleep), true, ""},
		{"destination ip", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{DestinationIps: []*security.Address{cidr("10.0.0.2/32")}})}, conn(sleep), true, "ns/a"},
		{"fields AND-ed", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{Principals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}, DestinationPorts: []uint32{9090}})}, conn(sleep), false, ""},
		{"values OR-ed", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{9090, 8080}})}, conn(sleep), true, "ns/a"},
		{"matches OR-ed", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{9090}}, &security.Match{DestinationPorts: []uint32{8080}})}, conn(sleep), true, "ns/a"},
		{"rules AND-ed", []*security.Authorization{{Name: "a", Namespace: "ns", Groups: []*security.Group{{Rules: []*security.Rules{
			{Matches: []*security.Match{{DestinationPorts: []uint32{8080}}}},
			{Matches: []*security.Match{{Namespaces: []*security.StringMatch{exact("other")}}}},
		}}}}}, conn(sleep), false, ""},
		{"groups OR-ed", []*security.Authorization{{Name: "a", Namespace: "ns", Groups: []*security.Group{
			{Rules: []*security.Rules{{Matches: []*security.Match{{Namespaces: []*security.StringMatch{exact("other")}}}}}},
			{Rules: []*security.Rules{{Matches: []*security.Match{{DestinationPorts: []uint32{8080}}}}}},
		}}}, conn(sleep), true, "ns/a"},
		{"service account", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "default", ServiceAccount: "sleep"}}})}, conn(sleep), true, "ns/a"},
		{"not service account", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "default", ServiceAccount: "sleep"}}})}, conn(sleep), false, ""},
		{"prefix principal", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Prefix{Prefix: "cluster.local/ns/default/"}}}})}, conn(sleep), true, "ns/a"},
		{"suffix principal", []*security.Authorization{pol("a", security.Action_ALLOW, &security.Match{Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Suffix{Suffix: "/sa/web"}}}})}, conn(sleep), false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Evaluate(tc.policies, tc.conn)
			if got.Allow != tc.allow || got.Policy != tc.policy {
				t.Errorf("Evaluate = {allow %v, policy %q, %s}, want {allow %v, policy %q}", got.Allow, got.Policy, got.Reason, tc.allow, tc.policy)
			}
		})
	}
}
