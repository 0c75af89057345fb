package xds

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeSub is the subscription state go-control-plane keeps per stream and type.
type fakeSub struct {
	wildcard bool
	names    map[string]struct{}
	returned map[string]string
}

func (f *fakeSub) ReturnedResources() map[string]string     { return f.returned }
func (f *fakeSub) SubscribedResources() map[string]struct{} { return f.names }
func (f *fakeSub) IsWildcard() bool                         { return f.wildcard }

const testType = "type.googleapis.com/google.protobuf.StringValue"

// client replays the stream side: one watch outstanding, state applied from
// each response, the returned map handed back on the next watch.
type fakeClient struct {
	t       *testing.T
	c       *deltaCache
	sub     *fakeSub
	nonce   string
	held    map[string]string // name -> version the client holds
	ch      chan cache.DeltaResponse
	cancel  func()
	watched bool
}

func newFakeClient(t *testing.T, c *deltaCache, held map[string]string) *fakeClient {
	known := maps.Clone(held)
	if known == nil {
		known = map[string]string{}
	}
	return &fakeClient{t: t, c: c, sub: &fakeSub{wildcard: true, returned: known}, held: maps.Clone(known),
		ch: make(chan cache.DeltaResponse, 4)}
}

// watch opens the next watch (the ACK of the previous response).
func (f *fakeClient) watch() {
	if f.watched {
		return
	}
	cancel, err := f.c.CreateDeltaWatch(&cache.DeltaRequest{TypeUrl: testType, ResponseNonce: f.nonce}, f.sub, f.ch)
	if err != nil {
		f.t.Fatal(err)
	}
	f.cancel, f.watched = cancel, true
}

// drain applies a pending response, if any; the watch is then spent.
func (f *fakeClient) drain() bool {
	select {
	case r := <-f.ch:
		resp, _ := r.GetDeltaDiscoveryResponse()
		for _, res := range resp.GetResources() {
			f.held[res.GetName()] = res.GetVersion()
		}
		for _, n := range resp.GetRemovedResources() {
			if _, ok := f.held[n]; !ok {
				f.t.Fatalf("removal of %s the client does not hold (held %v, known %v, resp %v)", n, f.held, f.sub.returned, resp)
			}
			delete(f.held, n)
		}
		f.sub.returned = r.GetNextVersionMap()
		for k, v := range f.sub.returned {
			if k != seqKey && f.held[k] != v {
				f.t.Fatalf("returned map has %s=%s, client holds %q (resp %v)", k, v, f.held[k], resp)
			}
		}
		if len(f.sub.returned) != len(f.held)+1 {
			f.t.Fatalf("returned map has %d entries, client holds %d", len(f.sub.returned)-1, len(f.held))
		}
		f.nonce = fmt.Sprint(len(f.nonce) + 1)
		f.watched = false
		return true
	default:
		return false
	}
}

func cacheVersions(c *deltaCache) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for k, e := range c.entries {
		out[k] = e.res.GetVersion()
	}
	return out
}

// TestDeltaCacheConverges drives random changes through the cache with
// clients that ACK promptly, ACK late (past the change log), and reconnect
// with their versions; each must end holding exactly the cache's state.
func TestDeltaCacheConverges(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	c := newDeltaCache(testType)
	clients := []*fakeClient{newFakeClient(t, c, nil), newFakeClient(t, c, nil), newFakeClient(t, c, nil)}
	lagging := 0 // steps the slow client still ignores
	for step := range 3000 {
		upd := map[string]types.Resource{}
		var del []string
		for range 1 + r.IntN(5) {
			name := fmt.Sprintf("r%d", r.IntN(60))
			if r.IntN(4) == 0 {
				del = append(del, name)
			} else {
				upd[name] = wrapperspb.String(fmt.Sprint(r.IntN(3)))
			}
		}
		if err := c.update(upd, del); err != nil {
			t.Fatal(err)
		}
		// Client 0 is prompt: after each change it holds exactly the cache.
		clients[0].drain()
		clients[0].watch()
		clients[0].drain()
		if want := cacheVersions(c); !maps.Equal(clients[0].held, want) {
			t.Fatalf("step %d: prompt client differs from the cache on %v", step, diffKeys(clients[0].held, want))
		}
		clients[0].watch()
		// Client 1 sometimes stops ACKing for long enough that the log is pruned.
		if lagging > 0 {
			lagging--
		} else {
			clients[1].drain()
			clients[1].watch()
			if r.IntN(200) == 0 {
				lagging = 1500
			}
		}
		// Client 2 sometimes reconnects with what it holds.
		if r.IntN(50) == 0 {
			if clients[2].cancel != nil {
				clients[2].cancel()
			}
			clients[2] = newFakeClient(t, c, clients[2].held)
		}
		clients[2].drain()
		clients[2].watch()
		if step%500 == 0 {
			t.Logf("step %d: log %d entries, floor %d, seq %d", step, len(c.log), c.logFloor, c.seq)
		}
	}
	if c.logFloor == 0 {
		t.Fatal("the change log was never pruned; the test does not cover the slow path")
	}
	want := cacheVersions(c)
	for i, cl := range clients {
		for cl.drain() {
			cl.watch()
		}
		cl.watch()
		cl.drain()
		if !maps.Equal(cl.held, want) {
			t.Errorf("client %d holds %d resources, cache has %d; differ: %v", i, len(cl.held), len(want), diffKeys(cl.held, want))
		}
	}
}

func diffKeys(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

func TestDeltaCacheUnchangedContentIsNotAChange(t *testing.T) {
	c := newDeltaCache(testType)
	if err := c.update(map[string]types.Resource{"a": wrapperspb.String("x")}, nil); err != nil {
		t.Fatal(err)
	}
	cl := newFakeClient(t, c, nil)
	cl.watch()
	if !cl.drain() {
		t.Fatal("no initial response")
	}
	cl.watch()
	seq := c.seq
	// A new message with equal content, and a delete of something absent.
	if err := c.update(map[string]types.Resource{"a": wrapperspb.String("x")}, []string{"nope"}); err != nil {
		t.Fatal(err)
	}
	if cl.drain() {
		t.Error("a response was sent for an unchanged resource")
	}
	if c.seq != seq+1 || len(c.log) != 1 {
		t.Errorf("seq %d log %d; want seq %d and no new log entry", c.seq, len(c.log), seq+1)
	}
}

func TestDeltaCacheIgnoresClientSuppliedSequence(t *testing.T) {
	c := newDeltaCache(testType)
	if err := c.update(map[string]types.Resource{"a": wrapperspb.String("x")}, nil); err != nil {
		t.Fatal(err)
	}
	// A client claiming to be up to date at the current sequence still gets
	// what it lacks.
	cl := newFakeClient(t, c, map[string]string{seqKey: strconv.FormatUint(c.seq, 10)})
	cl.held = map[string]string{}
	cl.watch()
	if !cl.drain() || cl.held["a"] == "" {
		t.Errorf("client holds %v, want resource a", cl.held)
	}
}
