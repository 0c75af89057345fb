package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// seqKey is a sentinel entry this cache adds to the returned-versions maps it
// builds: the cache sequence number the client's state reflects. Clients
// never see these maps; go-control-plane hands them back on the next watch.
const seqKey = "\x00xds/seq"

// deltaCache is a delta-only resource cache for one type URL, in the role of
// go-control-plane's LinearCache (same watch contract, resource versions are
// content hashes so they survive server restarts) but cheaper at scale:
//
//   - Resources are marshaled and hashed once per change, and the same
//     discovery.Resource is shared read-only by every client's response.
//   - A wildcard client that ACKs a response is compared only against the
//     changes logged since that response, not against every resource; and a
//     change notifies a wildcard watch with only the changed names. The
//     returned-versions map is updated in place rather than cloned.
//   - On-demand clients (as istiod serves them): a subscription may name an
//     Address by alias ("<network>/<ip>"), resolved when the watch is created
//     (each request; a resource that takes the address later reaches the
//     client on its next request); names that exist nowhere are answered as
//     removed; answers carry the resources' aliases; a subscribed Service
//     brings its Workloads, and a client naming its node (NODE_NAME in the
//     node metadata) that node's Workloads, kept current as they come and go.
//
// Concurrency: mu guards everything. A registered watch's returned-versions
// map is written only under mu; go-control-plane writes it on the stream
// goroutine only after cancelling the watch (which takes mu) or from the
// response this cache produced.
type deltaCache struct {
	typeURL string

	mu      sync.Mutex
	seq     uint64            // incremented by every update batch
	entries map[string]*entry // by resource name
	log     []change          // changes ordered by seq; complete after logFloor
	// logFloor: every change with seq > logFloor is in log.
	logFloor uint64
	aliases  map[string][]string // alias -> resource names
	aliasOf  map[string][]string // resource name -> its aliases
	// members maps a Service's resource name to the Workloads that serve it,
	// and nodeKey(node) to the Workloads on that node: an on-demand client
	// watching a Service also gets (and keeps getting) its Workloads, and a
	// ztunnel gets those of its own node, as istiod's
	// AdditionalPodSubscriptions does.
	members  map[string]map[string]struct{}
	nextID   uint64
	wildcard map[uint64]*deltaWatch
	named    map[string]map[uint64]*deltaWatch // by resolved resource name

	// encoded maps each entry's shared *discovery.Resource to its
	// encoding, for the codec (read on stream goroutines without mu);
	// written with entries.
	encoded sync.Map

	// full is every resource at one seq, as the response to a wildcard
	// client that holds nothing (every client of a full push), with the
	// encoding of the whole list; built on first use after a change (under
	// mu), read by the codec without mu.
	full atomic.Pointer[fullState]
}

// fullState is the whole cache at seq: resources sorted by name (shared,
// read-only, sent as is), and their encoding as repeated
// DeltaDiscoveryResponse.resources fields, which the codec writes in one
// piece instead of looking up and copying 11,000 encodings per client.
type fullState struct {
	seq       uint64
	resources []*discovery.Resource
	// versions maps each name to its version (and seqKey to seq): the
	// returned-versions map of a client that received the list, cloned
	// for each (a copy of the table, not 11,000 inserts).
	versions map[string]string
	enc      []byte
	bytes    int // sum of the resources' Any values, for the sent-bytes metric
}

type entry struct {
	msg types.Resource
	res *discovery.Resource // shared, read-only
	enc []byte              // proto encoding of res, for the codec
}

type change struct {
	seq  uint64
	name string
}

type deltaWatch struct {
	req   *cache.DeltaRequest
	sub   cache.Subscription
	names map[string]struct{} // resolved names for a non-wildcard watch
	ch    chan cache.DeltaResponse
	// answer is set while handling a request that must be answered even with
	// nothing (a new stream, or a change of subscriptions); unknown lists the
	// names it asked for that resolve to nothing, reported as removed.
	answer  bool
	unknown []string
}

func newDeltaCache(typeURL string) *deltaCache {
	return &deltaCache{
		typeURL:  typeURL,
		entries:  map[string]*entry{},
		aliases:  map[string][]string{},
		aliasOf:  map[string][]string{},
		members:  map[string]map[string]struct{}{},
		wildcard: map[uint64]*deltaWatch{},
		named:    map[string]map[uint64]*deltaWatch{},
	}
}

// version is a content hash: 64 bits of SHA-256 of the deterministic encoding.
func version(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// update applies a batch and notifies the watches it concerns. Resources
// whose encoding did not change are ignored. also names further resources
// whose watchers must re-evaluate (the Services a changed Workload joined or
// left).
func (c *deltaCache) update(upd map[string]types.Resource, del []string, also ...string) error {
	type prepared struct {
		name string
		msg  types.Resource
		res  *discovery.Resource
		enc  []byte
	}
	ready := make([]prepared, 0, len(upd))
	var errs []error
	for name, m := range upd {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			errs = append(errs, fmt.Errorf("marshal %s: %w", name, err))
			continue
		}
		res := &discovery.Resource{Name: name, Version: version(b), Resource: &anypb.Any{TypeUrl: c.typeURL, Value: b}}
		enc, err := proto.Marshal(res)
		if err != nil {
			enc = nil // the codec encodes it per response
		}
		ready = append(ready, prepared{name: name, msg: m, res: res, enc: enc})
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	modified := make([]string, 0, len(ready)+len(del))
	for _, p := range ready {
		if old := c.entries[p.name]; old != nil && old.res.Version == p.res.Version {
			continue
		}
		if old := c.entries[p.name]; old != nil {
			c.encoded.Delete(old.res)
		}
		c.entries[p.name] = &entry{msg: p.msg, res: p.res, enc: p.enc}
		if p.enc != nil {
			c.encoded.Store(p.res, p.enc)
		}
		modified = append(modified, p.name)
	}
	listed := make(map[string]bool, len(modified))
	for _, name := range modified {
		listed[name] = true
	}
	for _, name := range del {
		if e, ok := c.entries[name]; ok {
			c.encoded.Delete(e.res)
			delete(c.entries, name)
			if !listed[name] { // updated and deleted in one batch: list it once
				listed[name] = true
				modified = append(modified, name)
			}
		}
	}
	for _, name := range modified {
		c.log = append(c.log, change{seq: c.seq, name: name})
	}
	c.pruneLog()
	if len(modified) > 0 {
		c.notify(modified, also)
	}
	return errors.Join(errs...)
}

// fullList returns the full state at the current seq; called under mu.
func (c *deltaCache) fullList() *fullState {
	if f := c.full.Load(); f != nil && f.seq == c.seq {
		return f
	}
	f := &fullState{seq: c.seq, resources: make([]*discovery.Resource, 0, len(c.entries)), versions: make(map[string]string, len(c.entries)+1)}
	f.versions[seqKey] = strconv.FormatUint(c.seq, 10)
	size := 0
	for name, e := range c.entries {
		f.resources = append(f.resources, e.res)
		f.versions[name] = e.res.GetVersion()
		size += protowire.SizeTag(deltaResourcesField) + protowire.SizeBytes(len(e.enc))
		f.bytes += len(e.res.GetResource().GetValue())
	}
	slices.SortFunc(f.resources, func(a, b *discovery.Resource) int { return strings.Compare(a.GetName(), b.GetName()) })
	f.enc = make([]byte, 0, size)
	for _, r := range f.resources {
		enc := c.entries[r.GetName()].enc
		if enc == nil { // did not marshal at update: the codec's per-resource path reports it
			f.enc = nil
			break
		}
		f.enc = protowire.AppendTag(f.enc, deltaResourcesField, protowire.BytesType)
		f.enc = protowire.AppendBytes(f.enc, enc)
	}
	c.full.Store(f)
	return f
}

// fullEncoding returns the encoding of rs as repeated resources fields if
// rs is the cache's current full list, else nil.
func (c *deltaCache) fullEncoding(rs []*discovery.Resource) *fullState {
	if c == nil {
		return nil
	}
	f := c.full.Load()
	if f == nil || f.enc == nil || len(rs) == 0 || len(rs) != len(f.resources) || &rs[0] != &f.resources[0] {
		return nil
	}
	return f
}

// encoding returns the cached encoding of r if r is one of this cache's
// shared resources (and was not replaced since), else nil.
func (c *deltaCache) encoding(r *discovery.Resource) []byte {
	if v, ok := c.encoded.Load(r); ok {
		return v.([]byte)
	}
	return nil
}

// pruneLog keeps the change log to about twice the resource count.
func (c *deltaCache) pruneLog() {
	limit := 2*len(c.entries) + 4096
	if len(c.log) <= limit {
		return
	}
	drop := len(c.log) - limit/2
	c.logFloor = c.log[drop-1].seq
	c.log = append([]change(nil), c.log[drop:]...)
}

// expand adds to a named subscription the current Workloads of the
// Services in it; called under mu.
func (c *deltaCache) expand(names map[string]struct{}) map[string]struct{} {
	var out map[string]struct{}
	for name := range names {
		for m := range c.members[name] {
			if _, ok := names[m]; ok {
				continue
			}
			if out == nil {
				out = maps.Clone(names)
			}
			out[m] = struct{}{}
		}
	}
	if out == nil {
		return names
	}
	return out
}

// updateMembers moves Workloads between Services: changes maps a Workload
// name to its {old, new} Service names.
func (c *deltaCache) updateMembers(changes map[string][2][]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, ch := range changes {
		for _, svc := range ch[0] {
			delete(c.members[svc], name)
			if len(c.members[svc]) == 0 {
				delete(c.members, svc)
			}
		}
		for _, svc := range ch[1] {
			if c.members[svc] == nil {
				c.members[svc] = map[string]struct{}{}
			}
			c.members[svc][name] = struct{}{}
		}
	}
}

// updateAliases moves resources between aliases: changes maps a resource
// name to its {old, new} aliases.
func (c *deltaCache) updateAliases(changes map[string][2][]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, ch := range changes {
		for _, al := range ch[0] {
			names := slices.DeleteFunc(c.aliases[al], func(n string) bool { return n == name })
			if len(names) == 0 {
				delete(c.aliases, al)
			} else {
				c.aliases[al] = names
			}
		}
		for _, al := range ch[1] {
			if !slices.Contains(c.aliases[al], name) {
				c.aliases[al] = append(c.aliases[al], name)
			}
		}
		if len(ch[1]) == 0 {
			delete(c.aliasOf, name)
		} else {
			c.aliasOf[name] = ch[1]
		}
	}
}

func (c *deltaCache) resources() map[string]types.Resource {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]types.Resource, len(c.entries))
	for k, e := range c.entries {
		out[k] = e.msg
	}
	return out
}

// notify answers the watches concerned by modified names, and named watches
// on the also names; called under mu.
func (c *deltaCache) notify(modified, also []string) {
	for id, w := range c.wildcard {
		if resp := c.respond(w, modified); resp != nil {
			delete(c.wildcard, id)
			w.ch <- resp
		}
	}
	seen := map[uint64]bool{}
	for _, name := range slices.Concat(modified, also) {
		for id, w := range c.named[name] {
			if seen[id] {
				continue
			}
			seen[id] = true
			if resp := c.respond(w, nil); resp != nil {
				c.removeNamed(id, w)
				w.ch <- resp
			}
		}
	}
}

func (c *deltaCache) removeNamed(id uint64, w *deltaWatch) {
	for name := range w.names {
		ws := c.named[name]
		delete(ws, id)
		if len(ws) == 0 {
			delete(c.named, name)
		}
	}
}

// respond computes what the watch's client lacks and, if anything, builds
// the response and records the new state in its returned-versions map.
// candidates limits a wildcard comparison to those names (the client is
// known to match the cache elsewhere); nil means work it out. Called under mu.
func (c *deltaCache) respond(w *deltaWatch, candidates []string) *deltaResponse {
	known := w.sub.ReturnedResources()
	filled := false // known already holds upd
	var upd []*discovery.Resource
	var removed []string
	consider := func(name string) {
		e := c.entries[name]
		v, has := known[name]
		switch {
		case e != nil && (!has || v != e.res.Version):
			upd = append(upd, e.res)
		case e == nil && has:
			removed = append(removed, name)
		}
	}
	switch {
	case w.names != nil:
		names := c.expand(w.names)
		for name := range names {
			consider(name)
		}
		for name := range known {
			if _, ok := names[name]; !ok && name != seqKey {
				removed = append(removed, name) // no longer subscribed
			}
		}
	case candidates != nil:
		for _, name := range candidates {
			consider(name)
		}
	default:
		if s, ok := c.knownSeq(w); ok {
			start := sort.Search(len(c.log), func(i int) bool { return c.log[i].seq > s })
			done := map[string]bool{}
			for _, ch := range c.log[start:] {
				if !done[ch.name] {
					done[ch.name] = true
					consider(ch.name)
				}
			}
		} else if len(known) == 0 && len(c.entries) > 0 {
			// Holds nothing (a new stream, the full push): the whole
			// list, shared by every such client, and a versions map
			// sized once.
			f := c.fullList()
			upd = f.resources
			known, filled = maps.Clone(f.versions), true
		} else {
			for name := range c.entries {
				consider(name)
			}
			for name := range known {
				if _, ok := c.entries[name]; !ok && name != seqKey {
					removed = append(removed, name)
				}
			}
		}
	}
	if w.names != nil {
		// Names that exist nowhere are reported removed, as the delta
		// protocol asks and istiod does, so an on-demand client waiting
		// for them learns they are unknown.
		for _, name := range w.unknown {
			if _, has := known[name]; !has && !slices.Contains(removed, name) {
				removed = append(removed, name)
			}
		}
		// On-demand answers carry each resource's aliases, so a client that
		// asked for "<network>/<ip>" can tell which resource answered.
		for i, r := range upd {
			if al := c.aliasOf[r.GetName()]; len(al) > 0 {
				upd[i] = &discovery.Resource{Name: r.GetName(), Version: r.GetVersion(), Resource: r.GetResource(), Aliases: al}
			}
		}
	}
	// A wildcard client expects an answer to its first request, even empty;
	// an on-demand client to every request that changes what it watches.
	firstWildcard := w.names == nil && w.req.GetResponseNonce() == ""
	if len(upd) == 0 && len(removed) == 0 && !firstWildcard && !w.answer {
		return nil
	}
	if !filled {
		for _, r := range upd {
			known[r.GetName()] = r.GetVersion()
		}
	}
	for _, name := range removed {
		delete(known, name)
	}
	known[seqKey] = strconv.FormatUint(c.seq, 10)
	return &deltaResponse{req: w.req, resources: upd, removed: removed, next: known, version: strconv.FormatUint(c.seq, 10)}
}

// knownSeq returns the cache sequence a wildcard client's state reflects, if
// its returned-versions map is one this cache built and nothing else changed it.
func (c *deltaCache) knownSeq(w *deltaWatch) (uint64, bool) {
	if len(w.req.GetResourceNamesSubscribe()) > 0 || len(w.req.GetResourceNamesUnsubscribe()) > 0 {
		return 0, false // go-control-plane may have edited the map for this request
	}
	v, ok := w.sub.ReturnedResources()[seqKey]
	if !ok {
		return 0, false
	}
	s, err := strconv.ParseUint(v, 10, 64)
	if err != nil || s < c.logFloor || s > c.seq {
		return 0, false
	}
	return s, true
}

// nodeKey is the members key of the Workloads on a node; it cannot be a
// resource name.
func nodeKey(node string) string { return "\x00node/" + node }

// CreateDeltaWatch implements cache.ConfigWatcher.
func (c *deltaCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	if req.GetTypeUrl() != c.typeURL {
		return nil, fmt.Errorf("request type %s does not match cache type %s", req.GetTypeUrl(), c.typeURL)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.GetResponseNonce() == "" {
		// A new stream: versions come from the client, never a sequence.
		delete(sub.ReturnedResources(), seqKey)
	}
	w := &deltaWatch{req: req, sub: sub, ch: ch}
	if !sub.IsWildcard() {
		w.names = map[string]struct{}{}
		for name := range sub.SubscribedResources() {
			if targets, ok := c.aliases[name]; ok {
				for _, t := range targets {
					w.names[t] = struct{}{}
				}
				continue
			}
			w.names[name] = struct{}{}
		}
		// ztunnel names its node in the metadata; its local Workloads are
		// always part of what it watches.
		if node := req.GetNode().GetMetadata().GetFields()["NODE_NAME"].GetStringValue(); node != "" {
			w.names[nodeKey(node)] = struct{}{}
		}
		w.answer = req.GetResponseNonce() == "" || len(req.GetResourceNamesSubscribe()) > 0 || len(req.GetResourceNamesUnsubscribe()) > 0
		for _, name := range req.GetResourceNamesSubscribe() {
			_, isAlias := c.aliases[name]
			_, exists := c.entries[name]
			if _, subscribed := sub.SubscribedResources()[name]; subscribed && !isAlias && !exists {
				w.unknown = append(w.unknown, name)
			}
		}
	}
	resp := c.respond(w, nil)
	w.answer, w.unknown = false, nil // later pushes answer only changes
	if resp != nil {
		ch <- resp
		return func() {}, nil
	}
	c.nextID++
	id := c.nextID
	if w.names == nil {
		c.wildcard[id] = w
		return func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			delete(c.wildcard, id)
		}, nil
	}
	for name := range w.names {
		if c.named[name] == nil {
			c.named[name] = map[uint64]*deltaWatch{}
		}
		c.named[name][id] = w
	}
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.removeNamed(id, w)
	}, nil
}

// CreateWatch implements cache.ConfigWatcher; only delta xDS is served.
func (c *deltaCache) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errors.New("state-of-the-world xDS is not supported")
}

// typeMux routes watches to the cache of their type.
type typeMux map[string]*deltaCache

func (m typeMux) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	c, ok := m[req.GetTypeUrl()]
	if !ok {
		return nil, fmt.Errorf("unsupported type %s", req.GetTypeUrl())
	}
	return c.CreateDeltaWatch(req, sub, ch)
}

func (m typeMux) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errors.New("state-of-the-world xDS is not supported")
}

// deltaResponse implements cache.DeltaResponse over shared resources.
type deltaResponse struct {
	req       *cache.DeltaRequest
	resources []*discovery.Resource
	removed   []string
	next      map[string]string
	version   string
}

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discovery.DeltaDiscoveryResponse, error) {
	return &discovery.DeltaDiscoveryResponse{
		Resources:         r.resources,
		RemovedResources:  r.removed,
		TypeUrl:           r.req.GetTypeUrl(),
		SystemVersionInfo: r.version,
	}, nil
}
func (r *deltaResponse) GetDeltaRequest() *discovery.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                 { return r.version, nil }
func (r *deltaResponse) GetResponseVersion() string                        { return r.version }
func (r *deltaResponse) GetNextVersionMap() map[string]string              { return r.next }
func (r *deltaResponse) GetReturnedResources() map[string]string           { return r.next }
func (r *deltaResponse) GetContext() context.Context                       { return context.Background() }
