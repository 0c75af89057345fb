package xdsclient

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
	"unsafe"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	// Registers the "proto" codec this one falls back to.
	_ "google.golang.org/grpc/encoding/proto"
)

// Resource is one resource of a Delta: a DeltaDiscoveryResponse's Resource
// with its Any unpacked into TypeURL and Value.
//
// Name, Version and Aliases (and a Delta's TypeURL and Removed) are copies,
// all of one response in one string, which a handler may keep. TypeURL
// and Value point into the memory gRPC received the response in (its
// HTTP/2 DATA frames, up to 16 KiB each): that memory is never reused, so
// they stay valid, but keeping them keeps their frames alive.
type Resource struct {
	Name    string
	Version string
	Aliases []string
	// TypeURL is the Any's type URL; empty when the resource has no body.
	TypeURL string
	// Value is the encoded message. Its capacity ends with it: appending
	// to it never writes over other resources.
	Value []byte
}

// UnmarshalTo decodes Value into m, which must be of the type TypeURL
// names (as anypb.Any.UnmarshalTo requires).
func (r *Resource) UnmarshalTo(m proto.Message) error {
	want := m.ProtoReflect().Descriptor().FullName()
	if got := r.TypeURL[strings.LastIndexByte(r.TypeURL, '/')+1:]; got != string(want) {
		if r.TypeURL == "" {
			return fmt.Errorf("resource %q has no body (want %s)", r.Name, want)
		}
		return fmt.Errorf("resource %q holds %s, want %s", r.Name, r.TypeURL, want)
	}
	return proto.Unmarshal(r.Value, m)
}

// response is a DeltaDiscoveryResponse as the client uses it.
type response struct {
	SystemVersion string
	TypeURL       string
	Nonce         string
	Resources     []Resource
	Removed       []string
}

// codec is the client's gRPC codec: requests are marshalled by the
// standard proto codec, and responses are decoded into a response.
//
// A full push is one message of ~11,000 Resources, which proto.Unmarshal
// turns into five objects per Resource (the message, its Any, three
// strings and the value) after gRPC copies the whole message out of its
// frames. Here a response made only of the fields a delta server sends for
// plain resources (system_version_info, resources with name, version,
// aliases and an Any, type_url, nonce, removed_resources) is decoded in
// place: the strings and values point into the frames gRPC read, and the
// Resources are one array of plain structs. Only a field split across two
// frames is copied. For 10,000 pods that is 1 MB per full push instead of
// 4 MB (the copy and the proto structs), all of it transient in each
// client at once when istiod-lite pushes to a whole mesh.
//
// The result is what proto.Unmarshal gives (strings checked as UTF-8, last
// value wins for repeated scalar fields); anything else in the message
// (other fields, unknown fields, a Resource's Any given twice, malformed
// input) goes through proto.Unmarshal.
type codec struct{ base encoding.CodecV2 }

func newCodec() codec { return codec{base: encoding.GetCodecV2("proto")} }

func (c codec) Name() string { return c.base.Name() }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	resp, ok := v.(*response)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	*resp = response{}
	bufs := make([][]byte, len(data))
	for i, b := range data {
		bufs[i] = b.ReadOnlyData()
	}
	if err := decodeResponse(bufs, resp); err == nil {
		// The decoded strings and values point into the buffers: keep
		// them out of gRPC's pool. gRPC frees the message after this
		// returns; with one more reference the memory is never handed
		// out again and the garbage collector frees it.
		for _, b := range data {
			b.Ref()
		}
		return nil
	}
	*resp = response{}
	m := &discovery.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(data.Materialize(), m); err != nil {
		return err
	}
	fromProto(m, resp)
	return nil
}

// fromProto fills resp from a DeltaDiscoveryResponse decoded by
// proto.Unmarshal (the fields the client does not use are dropped).
func fromProto(m *discovery.DeltaDiscoveryResponse, resp *response) {
	resp.SystemVersion, resp.TypeURL, resp.Nonce = m.GetSystemVersionInfo(), m.GetTypeUrl(), m.GetNonce()
	resp.Removed = m.GetRemovedResources()
	if len(m.GetResources()) > 0 {
		resp.Resources = make([]Resource, len(m.GetResources()))
	}
	for i, r := range m.GetResources() {
		resp.Resources[i] = Resource{
			Name: r.GetName(), Version: r.GetVersion(), Aliases: r.GetAliases(),
			TypeURL: r.GetResource().GetTypeUrl(), Value: r.GetResource().GetValue(),
		}
	}
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

// frames reads a message held in several buffers (gRPC's frames).
type frames struct {
	b   [][]byte
	i   int // current buffer
	off int // offset in b[i]
}

// next skips exhausted buffers; it reports whether bytes remain.
func (f *frames) next() bool {
	for f.i < len(f.b) && f.off == len(f.b[f.i]) {
		f.i, f.off = f.i+1, 0
	}
	return f.i < len(f.b)
}

func (f *frames) byte() (byte, bool) {
	if !f.next() {
		return 0, false
	}
	c := f.b[f.i][f.off]
	f.off++
	return c, true
}

// header reads a length-delimited field's tag and length. Only one-byte
// tags (field numbers below 16) are read, which all the decoded fields
// have; ok is false for anything else, malformed or not.
func (f *frames) header() (num protowire.Number, n int, ok bool) {
	t, ok := f.byte()
	if !ok || !bytesTag(t) {
		return 0, 0, false
	}
	var l uint64
	for shift := 0; ; shift += 7 {
		c, ok := f.byte()
		if !ok || shift > 28 {
			return 0, 0, false
		}
		l |= uint64(c&0x7f) << shift
		if c < 0x80 {
			break
		}
	}
	if l > 1<<31 {
		return 0, 0, false
	}
	return protowire.Number(t >> 3), int(l), true
}

// bytesTag reports whether t is a one-byte tag of a length-delimited field
// (field numbers 1 to 15).
func bytesTag(t byte) bool {
	return t < 0x80 && protowire.Type(t&7) == protowire.BytesType && t>>3 != 0
}

// take returns the next n bytes: a slice of one buffer (capped) when they
// lie in one, else a copy.
func (f *frames) take(n int) ([]byte, bool) {
	if n == 0 {
		return nil, true
	}
	if !f.next() {
		return nil, false
	}
	if b := f.b[f.i]; len(b)-f.off >= n {
		p := b[f.off : f.off+n : f.off+n]
		f.off += n
		return p, true
	}
	out := make([]byte, n)
	for done := 0; done < n; {
		if !f.next() {
			return nil, false
		}
		c := copy(out[done:], f.b[f.i][f.off:])
		done += c
		f.off += c
	}
	return out, true
}

// skip passes over n bytes.
func (f *frames) skip(n int) bool {
	for n > 0 {
		if !f.next() {
			return false
		}
		c := min(n, len(f.b[f.i])-f.off)
		f.off += c
		n -= c
	}
	return true
}

// decodeResponse decodes the message held in bufs into resp (which must be
// empty) or returns errFallback.
func decodeResponse(bufs [][]byte, resp *response) error {
	// First pass: count the resources, so they come from one array.
	n := 0
	for f := (frames{b: bufs}); f.next(); {
		num, l, ok := f.header()
		if !ok || !f.skip(l) {
			return errFallback
		}
		if num == respResources {
			n++
		}
	}
	if n > 0 {
		resp.Resources = make([]Resource, 0, n)
	}
	for f := (frames{b: bufs}); f.next(); {
		num, l, _ := f.header() // checked by the first pass
		p, _ := f.take(l)
		var err error
		switch num {
		case respSystemVersion:
			resp.SystemVersion, err = str(p)
		case respTypeURL:
			resp.TypeURL, err = str(p)
		case respNonce:
			resp.Nonce, err = str(p)
		case respRemovedResources:
			var name string
			if name, err = str(p); err == nil {
				resp.Removed = append(resp.Removed, name)
			}
		case respResources:
			resp.Resources = resp.Resources[:len(resp.Resources)+1]
			err = decodeResource(p, &resp.Resources[len(resp.Resources)-1])
		default:
			return errFallback
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// str returns b as a string sharing its memory, if valid UTF-8.
//
// Sound because b is part of a received message that nothing writes to
// again (the codec keeps gRPC from reusing the buffers) and no byte of a
// string field is reachable as a []byte: the values handed out are other
// ranges, capped (see decodeAny).
func str(b []byte) (string, error) {
	if len(b) == 0 {
		return "", nil
	}
	v := unsafe.String(&b[0], len(b))
	if !utf8.ValidString(v) {
		return "", errFallback
	}
	return v, nil
}

// field reads the length-delimited field at b[off:]: its number and the
// value b[start:next]. One-byte tags only, as frames.header.
func field(b []byte, off int) (num protowire.Number, start, next int, ok bool) {
	t := b[off]
	if !bytesTag(t) {
		return 0, 0, 0, false
	}
	off++
	var l uint64
	if off < len(b) && b[off] < 0x80 {
		l = uint64(b[off])
		off++
	} else {
		v, n := protowire.ConsumeVarint(b[off:])
		if n < 0 {
			return 0, 0, 0, false
		}
		l, off = v, off+n
	}
	if l > uint64(len(b)-off) {
		return 0, 0, 0, false
	}
	return protowire.Number(t >> 3), off, off + int(l), true
}

// decodeResource decodes a Resource message into r.
func decodeResource(b []byte, r *Resource) error {
	var err error
	seenAny := false
	for off := 0; off < len(b); {
		num, start, next, ok := field(b, off)
		if !ok {
			return errFallback
		}
		off = next
		switch num {
		case resVersion:
			r.Version, err = str(b[start:next])
		case resName:
			r.Name, err = str(b[start:next])
		case resAliases:
			var al string
			if al, err = str(b[start:next]); err == nil {
				r.Aliases = append(r.Aliases, al)
			}
		case resResource:
			if seenAny {
				return errFallback // merged messages: proto.Unmarshal's job
			}
			seenAny = true
			err = decodeAny(b[start:next:next], r)
		default:
			return errFallback
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// decodeAny decodes an Any message into r's TypeURL and Value.
func decodeAny(b []byte, r *Resource) error {
	for off := 0; off < len(b); {
		num, start, next, ok := field(b, off)
		if !ok {
			return errFallback
		}
		off = next
		switch num {
		case anyTypeURL:
			t, err := str(b[start:next])
			if err != nil {
				return err
			}
			r.TypeURL = t
		case anyValue:
			// Full slice expression: appending to one value never
			// writes over the next field.
			r.Value = b[start:next:next]
		default:
			return errFallback
		}
	}
	return nil
}
