package xds

import (
	"fmt"
	"testing"

	"github.com/ambient-mesh/mesh/pkg/model"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

func benchResources(change int) model.Resources {
	r := model.Resources{Addresses: map[string]*workloadapi.Address{}, Authorizations: map[string]*security.Authorization{}}
	for i := range 11000 {
		st := workloadapi.WorkloadStatus_HEALTHY
		if i == change {
			st = workloadapi.WorkloadStatus_UNHEALTHY
		}
		uid := fmt.Sprintf("Kubernetes//Pod/ns-%d/pod-%d", i%50, i)
		r.Addresses[uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: uid, Name: fmt.Sprintf("pod-%d", i), Namespace: fmt.Sprintf("ns-%d", i%50), Status: st,
			Addresses: [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}}, ServiceAccount: "sa", Node: "node-1",
			CanonicalName: "app", CanonicalRevision: "v1", WorkloadName: "app", ClusterId: "Kubernetes",
			Services: map[string]*workloadapi.PortList{"ns/app.ns.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}},
		}}}
	}
	return r
}

// BenchmarkApplyOneChange is the server's cost for one changed pod in a
// freshly translated 11,000-resource snapshot (no clients).
func BenchmarkApplyOneChange(b *testing.B) {
	s, err := New(Options{Authenticator: NewFakeAuthenticator(nil)})
	if err != nil {
		b.Fatal(err)
	}
	snaps := []model.Resources{benchResources(1), benchResources(2)}
	s.apply(snaps[0])
	i := 0
	for b.Loop() {
		i++
		s.apply(snaps[i%2])
	}
}
