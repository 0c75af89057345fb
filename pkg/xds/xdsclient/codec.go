package xdsclient

import (
	"errors"
	"unicode/utf8"
	"unsafe"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// Registers the "proto" codec this one falls back to.
	_ "google.golang.org/grpc/encoding/proto"
)

// codec is the client's gRPC codec: the standard proto codec, except that a
// DeltaDiscoveryResponse made only of the fields a delta server sends for
// plain resources (system_version_info, resources with name, version,
// aliases and an Any, type_url, nonce, removed_resources) is decoded by
// hand. A full push is one message of ~11,000 Resources; proto.Unmarshal
// allocates five objects per Resource (the message, its Any, three
// strings and the value), which made decoding most of a client's CPU.
// Here the strings and values share one copy of the message, and the
// Resources and Anys come from two arrays: a handful of allocations per
// response.
//
// The result is the message proto.Unmarshal builds (strings checked as
// UTF-8, last value wins for repeated scalar fields); anything else in the
// message (other fields, unknown fields, a Resource's Any given twice,
// malformed input) is left to proto.Unmarshal.
type codec struct{ base encoding.CodecV2 }

func newCodec() codec { return codec{base: encoding.GetCodecV2("proto")} }

func (c codec) Name() string { return c.base.Name() }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	resp, ok := v.(*discovery.DeltaDiscoveryResponse)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	buf := data.Materialize()
	proto.Reset(resp)
	if err := decodeDeltaResponse(buf, resp); err != nil {
		proto.Reset(resp)
		return proto.Unmarshal(buf, resp)
	}
	return nil
}

// errFallback sends a message to proto.Unmarshal.
var errFallback = errors.New("xdsclient: not decoded by the fast path")

// DeltaDiscoveryResponse, Resource and Any field numbers.
const (
	respSystemVersion    = 1
	respResources        = 2
	respTypeURL          = 4
	respNonce            = 5
	respRemovedResources = 6

	resVersion  = 1
	resResource = 2
	resName     = 3
	resAliases  = 4

	anyTypeURL = 1
	anyValue   = 2
)

// decodeDeltaResponse decodes b into resp (which must be empty) or returns
// errFallback. The strings and the values of the Anys share b's memory.
func decodeDeltaResponse(b []byte, resp *discovery.DeltaDiscoveryResponse) error {
	// First pass: count the resources, so they come from one array.
	n := 0
	for rest := b; len(rest) > 0; {
		num, typ, l := protowire.ConsumeTag(rest)
		if l < 0 {
			return errFallback
		}
		rest = rest[l:]
		if num == respResources && typ == protowire.BytesType {
			n++
		}
		l = protowire.ConsumeFieldValue(num, typ, rest)
		if l < 0 {
			return errFallback
		}
		rest = rest[l:]
	}
	str := func(off, l int) (string, error) { return str(b, off, l) }
	var (
		out  = make([]*discovery.Resource, 0, n)
		ress = make([]discovery.Resource, n)
		anys = make([]anypb.Any, n)
	)
	for off := 0; off < len(b); {
		num, typ, l := protowire.ConsumeTag(b[off:])
		if l < 0 || typ != protowire.BytesType {
			return errFallback
		}
		off += l
		v, l := protowire.ConsumeBytes(b[off:])
		if l < 0 {
			return errFallback
		}
		start := off + l - len(v)
		off += l
		var err error
		switch num {
		case respSystemVersion:
			resp.SystemVersionInfo, err = str(start, len(v))
		case respTypeURL:
			resp.TypeUrl, err = str(start, len(v))
		case respNonce:
			resp.Nonce, err = str(start, len(v))
		case respRemovedResources:
			var name string
			if name, err = str(start, len(v)); err == nil {
				resp.RemovedResources = append(resp.RemovedResources, name)
			}
		case respResources:
			i := len(out)
			r, a := &ress[i], &anys[i]
			if err = decodeResource(b, start, start+len(v), r, a); err == nil {
				out = append(out, r)
			}
		default:
			return errFallback
		}
		if err != nil {
			return err
		}
	}
	if len(out) > 0 {
		resp.Resources = out
	}
	return nil
}

// str returns b[off:off+l] as a string sharing b's memory, if valid UTF-8.
//
// Sound because b is the codec's own copy of the message and no byte of a
// string field is ever reachable as a []byte: the Any values handed out are
// other ranges of b, capped (see decodeAny), and b itself is dropped.
func str(b []byte, off, l int) (string, error) {
	if l == 0 {
		return "", nil
	}
	v := unsafe.String(&b[off], l)
	if !utf8.ValidString(v) {
		return "", errFallback
	}
	return v, nil
}

// decodeResource decodes b[off:end] into r, with a as its Any.
func decodeResource(b []byte, off, end int, r *discovery.Resource, a *anypb.Any) error {
	str := func(off, l int) (string, error) { return str(b, off, l) }
	for off < end {
		num, typ, l := protowire.ConsumeTag(b[off:end])
		if l < 0 || typ != protowire.BytesType {
			return errFallback
		}
		off += l
		v, l := protowire.ConsumeBytes(b[off:end])
		if l < 0 {
			return errFallback
		}
		start := off + l - len(v)
		off += l
		var err error
		switch num {
		case resVersion:
			r.Version, err = str(start, len(v))
		case resName:
			r.Name, err = str(start, len(v))
		case resAliases:
			var al string
			if al, err = str(start, len(v)); err == nil {
				r.Aliases = append(r.Aliases, al)
			}
		case resResource:
			if r.Resource != nil {
				return errFallback // merged messages: proto.Unmarshal's job
			}
			err = decodeAny(b, start, start+len(v), a)
			r.Resource = a
		default:
			return errFallback
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// decodeAny decodes b[off:end] into a; the value aliases b.
func decodeAny(b []byte, off, end int, a *anypb.Any) error {
	for off < end {
		num, typ, l := protowire.ConsumeTag(b[off:end])
		if l < 0 || typ != protowire.BytesType {
			return errFallback
		}
		off += l
		v, l := protowire.ConsumeBytes(b[off:end])
		if l < 0 {
			return errFallback
		}
		start := off + l - len(v)
		off += l
		switch num {
		case anyTypeURL:
			t, err := str(b, start, len(v))
			if err != nil {
				return err
			}
			a.TypeUrl = t
		case anyValue:
			// Full slice expression: appending to one value never
			// writes over the next field.
			a.Value = b[start : start+len(v) : start+len(v)]
		default:
			return errFallback
		}
	}
	return nil
}
