package xds

import (
	"slices"
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

// A wildcard client holding nothing gets the cache's shared full list,
// which the codec writes from one encoding; it decodes to the same message
// and a change invalidates it.
func TestCodecFullList(t *testing.T) {
	s, err := New(Options{Authenticator: NewFakeAuthenticator(nil)})
	if err != nil {
		t.Fatal(err)
	}
	c := s.caches[model.AddressTypeURL]
	upd := map[string]types.Resource{}
	for _, n := range []string{"c", "a", "b"} {
		upd[n] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: n, Name: n}}}
	}
	if err := c.update(upd, nil); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	f := c.fullList()
	c.mu.Unlock()
	if got := []string{f.resources[0].GetName(), f.resources[1].GetName(), f.resources[2].GetName()}; got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Fatalf("full list %v, want sorted a b c", got)
	}
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: model.AddressTypeURL, Nonce: "1", SystemVersionInfo: "1", Resources: f.resources}
	if c.fullEncoding(resp.Resources) == nil {
		t.Fatal("full list not recognized")
	}
	if c.fullEncoding(f.resources[1:]) != nil || c.fullEncoding(slices.Clone(f.resources)) != nil {
		t.Fatal("another list taken for the full list")
	}
	buf, err := newCodec(s).Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	got := &discovery.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(buf.Materialize(), got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, resp) {
		t.Fatalf("decoded %v, want %v", got, resp)
	}
	if err := c.update(map[string]types.Resource{"b": &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "b", Name: "b2"}}}}, nil); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	f2 := c.fullList()
	c.mu.Unlock()
	if f2 == f || f2.resources[1].GetVersion() == f.resources[1].GetVersion() {
		t.Fatal("full list not rebuilt after a change")
	}
	// An old full list still encodes, resource by resource.
	buf, err = newCodec(s).Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	got.Reset()
	if err := proto.Unmarshal(buf.Materialize(), got); err != nil || !proto.Equal(got, resp) {
		t.Fatalf("old full list decoded %v (%v), want %v", got, err, resp)
	}
}
