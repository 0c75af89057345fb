package xdsclient

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// decode runs the codec on b as gRPC hands it over (split in two buffers).
func decode(t testing.TB, b []byte) (*discovery.DeltaDiscoveryResponse, error) {
	t.Helper()
	h := len(b) / 2
	got := &discovery.DeltaDiscoveryResponse{}
	err := newCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:h]), mem.SliceBuffer(b[h:])}, got)
	return got, err
}

func TestCodecMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		return string(b)
	}
	msgs := []*discovery.DeltaDiscoveryResponse{
		{},
		{Nonce: "1"},
		{TypeUrl: "t", Resources: []*discovery.Resource{{}}},
		{TypeUrl: "t", Resources: []*discovery.Resource{{Name: "a", Resource: &anypb.Any{}}}},
		{RemovedResources: []string{"a", "b"}, SystemVersionInfo: "v"},
		// Fields the fast path leaves to proto.Unmarshal.
		{Resources: []*discovery.Resource{{Name: "a", Ttl: durationpb.New(5)}}},
		{Resources: []*discovery.Resource{{Name: "a", Metadata: &core.Metadata{}}}, ControlPlane: &core.ControlPlane{Identifier: "x"}},
		{RemovedResourceNames: []*discovery.ResourceName{{Name: "a"}}},
		{Resources: []*discovery.Resource{{Name: "a", CacheControl: &discovery.Resource_CacheControl{DoNotCache: true}}}},
	}
	for range 200 {
		m := &discovery.DeltaDiscoveryResponse{TypeUrl: str(), Nonce: str(), SystemVersionInfo: str()}
		for range rng.IntN(20) {
			r := &discovery.Resource{Name: str(), Version: str()}
			if rng.IntN(4) > 0 {
				r.Resource = &anypb.Any{TypeUrl: str(), Value: []byte(str())}
			}
			for range rng.IntN(3) {
				r.Aliases = append(r.Aliases, str())
			}
			m.Resources = append(m.Resources, r)
		}
		for range rng.IntN(3) {
			m.RemovedResources = append(m.RemovedResources, str())
		}
		msgs = append(msgs, m)
	}
	for i, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decode(t, b)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if !proto.Equal(got, m) {
			t.Fatalf("%d: decoded %v, want %v", i, got, m)
		}
	}
}

func TestCodecEdgeCases(t *testing.T) {
	res := func(fields ...[]byte) []byte {
		var r []byte
		for _, f := range fields {
			r = append(r, f...)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, respResources, protowire.BytesType), r)
	}
	field := func(num protowire.Number, v string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	anyOf := func(typeURL, v string) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, resResource, protowire.BytesType), append(field(anyTypeURL, typeURL), field(anyValue, v)...))
	}
	cases := map[string][]byte{
		// Last value wins for a scalar repeated on the wire.
		"repeated name": res(field(resName, "a"), field(resName, "b")),
		// An Any given twice is merged (proto.Unmarshal does it).
		"merged any": res(field(resName, "a"), anyOf("t1", "x"), anyOf("", "y")),
		// Unknown fields are kept by proto.Unmarshal.
		"unknown field":          append(res(field(resName, "a")), protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7)...),
		"unknown resource field": res(field(resName, "a"), protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7)),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			want := &discovery.DeltaDiscoveryResponse{}
			if err := proto.Unmarshal(b, want); err != nil {
				t.Fatal(err)
			}
			got, err := decode(t, b)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, want) {
				t.Fatalf("decoded %v, want %v", got, want)
			}
			wb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(want)
			gb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(got)
			if string(wb) != string(gb) {
				t.Fatalf("re-encoded differently:\n%x\n%x", gb, wb)
			}
		})
	}
	// Errors are proto.Unmarshal's.
	for name, b := range map[string][]byte{
		"invalid utf-8 name": res(field(resName, "\xff")),
		"truncated":          res(field(resName, "abc"))[:5],
		"bad tag":            {0x80},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := decode(t, b); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// A value handed to the handler cannot grow into the next field.
func TestCodecValuesDoNotOverlap(t *testing.T) {
	m := &discovery.DeltaDiscoveryResponse{Resources: []*discovery.Resource{
		{Name: "a", Resource: &anypb.Any{TypeUrl: "t", Value: []byte("one")}},
		{Name: "b", Resource: &anypb.Any{TypeUrl: "t", Value: []byte("two")}},
	}}
	b, _ := proto.Marshal(m)
	got, err := decode(t, b)
	if err != nil {
		t.Fatal(err)
	}
	_ = append(got.Resources[0].Resource.Value, "XXXXXXXXXXXXXXXXXXXXXX"...)
	if v := string(got.Resources[1].Resource.Value); v != "two" || got.Resources[1].Name != "b" {
		t.Fatalf("second resource changed: %q %q", got.Resources[1].Name, v)
	}
}

func BenchmarkCodec(b *testing.B) {
	m := &discovery.DeltaDiscoveryResponse{TypeUrl: "type.googleapis.com/istio.workload.Address", Nonce: "1"}
	for i := range 11000 {
		m.Resources = append(m.Resources, &discovery.Resource{Name: fmt.Sprintf("Kubernetes//Pod/ns-%d/pod-%d", i%50, i), Version: "0123456789abcdef",
			Resource: &anypb.Any{TypeUrl: m.TypeUrl, Value: make([]byte, 140)}})
	}
	enc, _ := proto.Marshal(m)
	// As gRPC hands a message over: in 16 KiB frames.
	var frames mem.BufferSlice
	for off := 0; off < len(enc); off += 16 << 10 {
		frames = append(frames, mem.SliceBuffer(enc[off:min(off+16<<10, len(enc))]))
	}
	for _, c := range []struct {
		name string
		f    func() error
	}{
		{"fast", func() error {
			return newCodec().Unmarshal(frames, &discovery.DeltaDiscoveryResponse{})
		}},
		{"proto", func() error { return proto.Unmarshal(enc, &discovery.DeltaDiscoveryResponse{}) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(enc)))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.f(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// held gives the versions a plain map would, whatever the order of full
// responses, changes and removals.
func TestHeldMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 50 {
		h, want := &held{m: map[string]string{}}, map[string]string{}
		for step := range 20 {
			var upd []*discovery.Resource
			var removed []string
			n := rng.IntN(8)
			if step == 0 || rng.IntN(10) == 0 {
				n = foldAt + rng.IntN(200)
			}
			for range n {
				upd = append(upd, &discovery.Resource{Name: fmt.Sprint(rng.IntN(foldAt * 2)), Version: fmt.Sprint(rng.IntN(3))})
			}
			for range rng.IntN(5) {
				removed = append(removed, fmt.Sprint(rng.IntN(foldAt*2)))
			}
			if rng.IntN(3) == 0 {
				removed = nil
			}
			h.apply(upd, removed)
			for _, r := range upd {
				want[r.GetName()] = r.GetVersion()
			}
			for _, n := range removed {
				delete(want, n)
			}
			if rng.IntN(7) == 0 || step == 19 {
				got := maps.Clone(h.flatten())
				if !maps.Equal(got, want) {
					t.Fatalf("round %d step %d: %d versions, want %d", round, step, len(got), len(want))
				}
			}
		}
	}
}
