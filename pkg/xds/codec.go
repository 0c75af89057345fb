package xds

import (
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	// Registers the "proto" codec this one falls back to.
	_ "google.golang.org/grpc/encoding/proto"
)

// deltaResourcesField is DeltaDiscoveryResponse.resources.
const deltaResourcesField = 2

// codec is the gRPC codec of the server: the standard proto codec, except
// that a DeltaDiscoveryResponse's resources are written from the encodings
// the caches keep for their shared discovery.Resource messages. A full push
// sends the same 11,000 resources to every client; encoding them once per
// change instead of once per client saves most of the CPU of a full push.
//
// The output is the response without its resources, encoded by proto, then
// one length-delimited field 2 per resource: protobuf parsers merge fields
// in any order, so this decodes to the same message.
type codec struct {
	s    *Server
	base encoding.CodecV2
}

func newCodec(s *Server) codec { return codec{s: s, base: encoding.GetCodecV2("proto")} }

func (c codec) Name() string { return c.base.Name() }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.base.Unmarshal(data, v) }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	resp, ok := v.(*discovery.DeltaDiscoveryResponse)
	if !ok || len(resp.GetResources()) == 0 {
		return c.base.Marshal(v)
	}
	return c.encodeDelta(resp)
}

// encodeDelta encodes resp using the caches' resource encodings.
// The buffer comes from gRPC's pool and returns to it once written, as the
// proto codec's do: a full push to 100 clients would otherwise leave 170 MB
// of garbage at once.
func (c codec) encodeDelta(resp *discovery.DeltaDiscoveryResponse) (mem.BufferSlice, error) {
	m := resp.ProtoReflect()
	head := m.New()
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Number() != deltaResourcesField {
			head.Set(fd, v)
		}
		return true
	})
	cache := c.s.caches[resp.GetTypeUrl()]
	if cache != nil {
		if f := cache.fullEncoding(resp.GetResources()); f != nil {
			// The full list: the head, then the list's encoding as it is
			// (read-only and shared; gRPC copies it into its frames).
			hb, err := proto.Marshal(head.Interface())
			if err != nil {
				return nil, err
			}
			return mem.BufferSlice{mem.SliceBuffer(hb), mem.SliceBuffer(f.enc)}, nil
		}
	}
	encs := make([][]byte, len(resp.GetResources()))
	size := 0
	for i, r := range resp.GetResources() {
		var enc []byte
		if cache != nil {
			enc = cache.encoding(r)
		}
		if enc == nil {
			var err error
			if enc, err = proto.Marshal(r); err != nil {
				return nil, err
			}
		}
		encs[i] = enc
		size += protowire.SizeTag(deltaResourcesField) + protowire.SizeBytes(len(enc))
	}
	opts := proto.MarshalOptions{}
	total := opts.Size(head.Interface()) + size
	pool := mem.DefaultBufferPool()
	buf := pool.Get(total)
	out, err := opts.MarshalAppend((*buf)[:0], head.Interface())
	if err != nil {
		pool.Put(buf)
		return nil, err
	}
	for _, enc := range encs {
		out = protowire.AppendTag(out, deltaResourcesField, protowire.BytesType)
		out = protowire.AppendBytes(out, enc)
	}
	if len(out) != total { // cannot happen: sizes computed above
		pool.Put(buf)
		return mem.BufferSlice{mem.SliceBuffer(out)}, nil
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}
