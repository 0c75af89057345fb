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
// Resources and their Anys come from one array: a handful of allocations
// per response.
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

// field reads the length-delimited field at b[off:end]: its number and
// the range of its value, [start, next). Only one-byte tags (field numbers
// below 16) are read, which all the decoded fields have; ok is false for
// anything else, malformed or not.
func field(b []byte, off, end int) (num protowire.Number, start, next int, ok bool) {
	if off >= end {
		return 0, 0, 0, false
	}
	t := b[off]
	if t >= 0x80 || protowire.Type(t&7) != protowire.BytesType || t>>3 == 0 {
		return 0, 0, 0, false
	}
	off++
	var l uint64
	if off < end && b[off] < 0x80 {
		l = uint64(b[off])
		off++
	} else {
		v, n := protowire.ConsumeVarint(b[off:end])
		if n < 0 {
			return 0, 0, 0, false
		}
		l, off = v, off+n
	}
	if l > uint64(end-off) {
		return 0, 0, 0, false
	}
	return protowire.Number(t >> 3), off, off + int(l), true
}

// decodeDeltaResponse decodes b into resp (which must be empty) or returns
// errFallback. The strings and the values of the Anys share b's memory.
func decodeDeltaResponse(b []byte, resp *discovery.DeltaDiscoveryResponse) error {
	// First pass: count the resources, so they come from one array.
	n := 0
	for off := 0; off < len(b); {
		num, _, next, ok := field(b, off, len(b))
		if !ok {
			return errFallback
		}
		if num == respResources {
			n++
		}
		off = next
	}
	// A Resource and its Any side by side: written together, freed together.
	type pair struct {
		r discovery.Resource
		a anypb.Any
	}
	var (
		out   = make([]*discovery.Resource, 0, n)
		pairs = make([]pair, n)
		err   error
	)
	for off := 0; off < len(b); {
		num, start, next, _ := field(b, off, len(b)) // checked by the first pass
		off = next
		switch num {
		case respSystemVersion:
			resp.SystemVersionInfo, err = str(b, start, next)
		case respTypeURL:
			resp.TypeUrl, err = str(b, start, next)
		case respNonce:
			resp.Nonce, err = str(b, start, next)
		case respRemovedResources:
			var name string
			if name, err = str(b, start, next); err == nil {
				resp.RemovedResources = append(resp.RemovedResources, name)
			}
		case respResources:
			i := len(out)
			r, a := &pairs[i].r, &pairs[i].a
			if err = decodeResource(b, start, next, r, a); err == nil {
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

// str returns b[start:end] as a string sharing b's memory, if valid UTF-8.
//
// Sound because b is the codec's own copy of the message and no byte of a
// string field is ever reachable as a []byte: the Any values handed out are
// other ranges of b, capped (see decodeAny), and b itself is dropped.
func str(b []byte, start, end int) (string, error) {
	if start == end {
		return "", nil
	}
	v := unsafe.String(&b[start], end-start)
	if !utf8.ValidString(v) {
		return "", errFallback
	}
	return v, nil
}

// decodeResource decodes b[off:end] into r, with a as its Any.
func decodeResource(b []byte, off, end int, r *discovery.Resource, a *anypb.Any) error {
	var err error
	for off < end {
		num, start, next, ok := field(b, off, end)
		if !ok {
			return errFallback
		}
		off = next
		switch num {
		case resVersion:
			r.Version, err = str(b, start, next)
		case resName:
			r.Name, err = str(b, start, next)
		case resAliases:
			var al string
			if al, err = str(b, start, next); err == nil {
				r.Aliases = append(r.Aliases, al)
			}
		case resResource:
			if r.Resource != nil {
				return errFallback // merged messages: proto.Unmarshal's job
			}
			err = decodeAny(b, start, next, a)
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
		num, start, next, ok := field(b, off, end)
		if !ok {
			return errFallback
		}
		off = next
		switch num {
		case anyTypeURL:
			t, err := str(b, start, next)
			if err != nil {
				return err
			}
			a.TypeUrl = t
		case anyValue:
			// Full slice expression: appending to one value never
			// writes over the next field.
			a.Value = b[start:next:next]
		default:
			return errFallback
		}
	}
	return nil
}
