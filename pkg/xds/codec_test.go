package xds

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/model"
)

func TestCodecEncodesDeltaResponsesAsProto(t *testing.T) {
	s, err := New(Options{Authenticator: NewFakeAuthenticator(nil)})
	if err != nil {
		t.Fatal(err)
	}
	c := s.caches[model.AddressTypeURL]
	upd := map[string]types.Resource{}
	for _, n := range []string{"a", "b", "c"} {
		upd[n] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: n, Name: n}}}
	}
	if err := c.update(upd, nil); err != nil {
		t.Fatal(err)
	}
	a, b := c.entries["a"].res, c.entries["b"].res
	// b replaced after a response named it: its old encoding is dropped and
	// the codec encodes it itself.
	if err := c.update(map[string]types.Resource{"b": &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "b", Name: "b2"}}}}, nil); err != nil {
		t.Fatal(err)
	}
	if c.encoding(b) != nil {
		t.Error("replaced resource still has a cached encoding")
	}
	if c.encoding(a) == nil {
		t.Error("resource a has no cached encoding")
	}
	aliased := &discovery.Resource{Name: "c", Version: "v", Resource: c.entries["c"].res.GetResource(), Aliases: []string{"/10.0.0.1"}}

	tests := []struct {
		name string
		msg  proto.Message
	}{
		{"delta response", &discovery.DeltaDiscoveryResponse{
			SystemVersionInfo: "7", TypeUrl: model.AddressTypeURL, Nonce: "n1",
			Resources:        []*discovery.Resource{a, b, aliased, c.entries["b"].res},
			RemovedResources: []string{"gone"},
			ControlPlane:     &core.ControlPlane{Identifier: "istiod-lite"},
		}},
		{"delta response of an unknown type", &discovery.DeltaDiscoveryResponse{TypeUrl: "other", Resources: []*discovery.Resource{a}}},
		{"removals only", &discovery.DeltaDiscoveryResponse{TypeUrl: model.AddressTypeURL, RemovedResources: []string{"x"}}},
		{"other message", &discovery.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResponseNonce: "n1"}},
	}
	cd := newCodec(s)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf, err := cd.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			got := tt.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(buf.Materialize(), got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !proto.Equal(got, tt.msg) {
				t.Errorf("decoded %v, want %v", got, tt.msg)
			}
		})
	}
}
