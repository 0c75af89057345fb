package xdsclient

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unsafe"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// split cuts b into buffers as gRPC hands a message over, in one of a few
// patterns chosen by k: whole, halves, 1 to 7 byte pieces, 16 KiB frames.
func split(b []byte, k int) [][]byte {
	var out [][]byte
	switch k % 4 {
	case 0:
		return [][]byte{b}
	case 1:
		return [][]byte{b[:len(b)/2], b[len(b)/2:]}
	case 2:
		for off, n := 0, 1; off < len(b); off, n = off+n, n%7+1 {
			out = append(out, b[off:min(off+n, len(b))])
		}
	default:
		for off := 0; off < len(b); off += 16 << 10 {
			out = append(out, b[off:min(off+16<<10, len(b))])
		}
	}
	return out
}

// decode runs the codec on b cut as split(b, k) cuts it.
func decode(t testing.TB, b []byte, k int) (*response, error) {
	t.Helper()
	var data mem.BufferSlice
	for _, p := range split(b, k) {
		data = append(data, mem.SliceBuffer(p))
	}
	got := &response{}
	err := newCodec().Unmarshal(data, got)
	return got, err
}

// want is what proto.Unmarshal makes of b.
func want(t testing.TB, b []byte) *response {
	t.Helper()
	m := &discovery.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatal(err)
	}
	r := &response{}
	fromProto(m, r)
	return r
}

// sameResponse compares two responses, an empty list equal to none.
func sameResponse(a, b *response) bool {
	if a.SystemVersion != b.SystemVersion || a.TypeURL != b.TypeURL || a.Nonce != b.Nonce ||
		!slices.Equal(a.Removed, b.Removed) || len(a.Resources) != len(b.Resources) {
		return false
	}
	for i := range a.Resources {
		x, y := a.Resources[i], b.Resources[i]
		if x.Name != y.Name || x.Version != y.Version || x.TypeURL != y.TypeURL ||
			!bytes.Equal(x.Value, y.Value) || !slices.Equal(x.Aliases, y.Aliases) {
			return false
		}
	}
	return true
}

func TestCodecMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		if rng.IntN(10) == 0 {
			return string(b) + "é"
		}
		return string(b)
	}
	msgs := []*discovery.DeltaDiscoveryResponse{
		{},
		{Nonce: "1"},
		{TypeUrl: "t", Resources: []*discovery.Resource{{}}},
		{TypeUrl: "t", Resources: []*discovery.Resource{{Name: "a", Resource: &anypb.Any{}}}},
		{RemovedResources: []string{"a", "b"}, SystemVersionInfo: "v"},
		// A value longer than one varint byte of length, and than a frame.
		{Resources: []*discovery.Resource{{Name: "big", Resource: &anypb.Any{TypeUrl: "t", Value: make([]byte, 40000)}}}},
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
		for k := range 4 {
			got, err := decode(t, b, k)
			if err != nil {
				t.Fatalf("%d (split %d): %v", i, k, err)
			}
			if w := want(t, b); !sameResponse(got, w) {
				t.Fatalf("%d (split %d): decoded %+v, want %+v", i, k, got, w)
			}
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
			for k := range 4 {
				got, err := decode(t, b, k)
				if err != nil {
					t.Fatal(err)
				}
				if w := want(t, b); !sameResponse(got, w) {
					t.Fatalf("split %d: decoded %+v, want %+v", k, got, w)
				}
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
			for k := range 4 {
				if _, err := decode(t, b, k); err == nil {
					t.Fatalf("split %d: no error", k)
				}
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
	for k := range 4 {
		got, err := decode(t, b, k)
		if err != nil {
			t.Fatal(err)
		}
		_ = append(got.Resources[0].Value, "XXXXXXXXXXXXXXXXXXXXXX"...)
		if v := string(got.Resources[1].Value); v != "two" || got.Resources[1].Name != "b" {
			t.Fatalf("split %d: second resource changed: %q %q", k, got.Resources[1].Name, v)
		}
	}
}

// countingPool is a gRPC buffer pool that counts the buffers given back.
type countingPool struct{ puts int }

func (p *countingPool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p *countingPool) Put(*[]byte)       { p.puts++ }

// The fast path decodes in place: values point into gRPC's buffers (no
// copy of the message), except a resource cut by a frame boundary, and
// those buffers never go back to the pool, so nothing overwrites them.
// A message proto.Unmarshal decodes gives its buffers back.
func TestCodecDecodesInPlace(t *testing.T) {
	m := &discovery.DeltaDiscoveryResponse{TypeUrl: "t", Nonce: "n"}
	for i := range 400 {
		m.Resources = append(m.Resources, &discovery.Resource{Name: fmt.Sprint("r", i), Version: "v",
			Resource: &anypb.Any{TypeUrl: "t", Value: bytes.Repeat([]byte{byte(i)}, 100)}})
	}
	enc, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	frames := func(b []byte) (mem.BufferSlice, [][]byte, *countingPool) {
		pool := &countingPool{}
		var data mem.BufferSlice
		var raw [][]byte
		for _, p := range split(b, 3) {
			buf := pool.Get(len(p))
			copy(*buf, p)
			raw = append(raw, *buf)
			data = append(data, mem.NewBuffer(buf, pool))
		}
		return data, raw, pool
	}
	data, raw, pool := frames(enc)
	if len(raw) < 2 {
		t.Fatalf("%d bytes make %d frames, want several", len(enc), len(raw))
	}
	got := &response{}
	if err := newCodec().Unmarshal(data, got); err != nil {
		t.Fatal(err)
	}
	data.Free() // as gRPC does after Unmarshal
	if pool.puts != 0 {
		t.Fatalf("%d of %d buffers went back to the pool while decoded values point into them", pool.puts, len(raw))
	}
	inside := func(v []byte) bool {
		for _, f := range raw {
			if len(v) > 0 && uintptr(unsafe.Pointer(&v[0])) >= uintptr(unsafe.Pointer(&f[0])) &&
				uintptr(unsafe.Pointer(&v[0])) < uintptr(unsafe.Pointer(&f[0]))+uintptr(len(f)) {
				return true
			}
		}
		return false
	}
	aliased := 0
	for i, r := range got.Resources {
		if !bytes.Equal(r.Value, m.Resources[i].Resource.Value) || r.Name != m.Resources[i].Name {
			t.Fatalf("resource %d decoded as %q %x", i, r.Name, r.Value)
		}
		if inside(r.Value) {
			aliased++
		}
	}
	// 16 KiB frames cut at most one resource each.
	if min := len(got.Resources) - len(raw); aliased < min {
		t.Fatalf("%d of %d values point into the frames, want at least %d", aliased, len(got.Resources), min)
	}

	// A field the fast path does not read: decoded by proto.Unmarshal from
	// a copy, and the buffers are released.
	m.ControlPlane = &core.ControlPlane{Identifier: "x"}
	enc, _ = proto.Marshal(m)
	data, raw, pool = frames(enc)
	got = &response{}
	if err := newCodec().Unmarshal(data, got); err != nil {
		t.Fatal(err)
	}
	data.Free()
	if pool.puts != len(raw) {
		t.Fatalf("fallback: %d of %d buffers went back to the pool", pool.puts, len(raw))
	}
	if len(got.Resources) != 400 || got.Resources[399].Name != "r399" {
		t.Fatalf("fallback decoded %d resources", len(got.Resources))
	}
}

func TestResourceUnmarshalTo(t *testing.T) {
	a, err := anypb.New(&discovery.Resource{Name: "inner"})
	if err != nil {
		t.Fatal(err)
	}
	r := Resource{Name: "x", TypeURL: a.TypeUrl, Value: a.Value}
	var got discovery.Resource
	if err := r.UnmarshalTo(&got); err != nil || got.Name != "inner" {
		t.Fatalf("UnmarshalTo = %v, %q", err, got.Name)
	}
	if err := r.UnmarshalTo(&core.Node{}); err == nil || !strings.Contains(err.Error(), "want envoy.config.core.v3.Node") {
		t.Fatalf("wrong type: error %v", err)
	}
	if err := (&Resource{Name: "x"}).UnmarshalTo(&got); err == nil || !strings.Contains(err.Error(), "no body") {
		t.Fatalf("no body: error %v", err)
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
		{"fast", func() error { return newCodec().Unmarshal(frames, &response{}) }},
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
			var upd []Resource
			var removed []string
			n := rng.IntN(8)
			if step == 0 || rng.IntN(10) == 0 {
				n = foldAt + rng.IntN(200)
			}
			for range n {
				upd = append(upd, Resource{Name: fmt.Sprint(rng.IntN(foldAt * 2)), Version: fmt.Sprint(rng.IntN(3))})
			}
			for range rng.IntN(5) {
				removed = append(removed, fmt.Sprint(rng.IntN(foldAt*2)))
			}
			if rng.IntN(3) == 0 {
				removed = nil
			}
			h.apply(upd, detach(&response{Resources: upd, Removed: removed}), removed)
			for _, r := range upd {
				want[r.Name] = r.Version
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

// detach leaves no string of a response pointing into the buffer it was
// decoded from (the frames), and keeps every value.
func TestDetach(t *testing.T) {
	m := &discovery.DeltaDiscoveryResponse{TypeUrl: "type", Nonce: "n", RemovedResources: []string{"gone-1", "gone-2"}}
	for i := range 50 {
		r := &discovery.Resource{Name: fmt.Sprint("name-", i), Version: fmt.Sprint("v", i), Resource: &anypb.Any{TypeUrl: "t", Value: []byte{byte(i)}}}
		if i%7 == 0 {
			r.Aliases = []string{fmt.Sprint("alias-", i), ""}
		}
		m.Resources = append(m.Resources, r)
	}
	enc, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode(t, enc, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := detach(got)
	clear(enc) // what keeping the frames would have kept
	w := want(t, func() []byte { b, _ := proto.Marshal(m); return b }())
	// Values and the resources' type URLs (and the nonce) still point into
	// the (cleared) frames; the strings handlers keep must not.
	got.Nonce, w.Nonce = "", ""
	for i := range w.Resources {
		got.Resources[i].Value, w.Resources[i].Value = nil, nil
		got.Resources[i].TypeURL, w.Resources[i].TypeURL = "", ""
	}
	if !sameResponse(got, w) {
		t.Fatalf("after detach: %+v, want %+v", got, w)
	}
	if names.len() != 50 {
		t.Fatalf("list of %d, want 50", names.len())
	}
	for i := range 50 {
		if n, v := names.at(i); n != fmt.Sprint("name-", i) || v != fmt.Sprint("v", i) {
			t.Fatalf("list[%d] = %q %q", i, n, v)
		}
	}
}
