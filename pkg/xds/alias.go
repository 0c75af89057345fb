package xds

import (
	"maps"
	"sync/atomic"

	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/model"
)

// aliasCache lets on-demand clients subscribe to Addresses by alias, the
// "<network>/<ip>" key ztunnel asks for when it meets an unknown address, as
// well as by resource name.
//
// An alias is resolved when the watch is created (each request): the
// subscription handed to the LinearCache also names the resources holding
// that address, so they are sent, updated and removed like named ones. A
// resource that takes the address later reaches the client on its next
// request for the type.
//
// Concurrency: aliases is replaced whole by the push loop before it updates
// the cache, and read by stream goroutines.
type aliasCache struct {
	*cache.LinearCache
	aliases atomic.Pointer[map[string][]string] // alias -> resource names
}

func newAliasCache(c *cache.LinearCache) *aliasCache {
	a := &aliasCache{LinearCache: c}
	a.aliases.Store(&map[string][]string{})
	return a
}

// setAddresses rebuilds the alias index from a full Address set.
func (a *aliasCache) setAddresses(addrs map[string]*workloadapi.Address) {
	m := make(map[string][]string, len(addrs))
	for name, addr := range addrs {
		for _, al := range model.Aliases(addr) {
			m[al] = append(m[al], name)
		}
	}
	a.aliases.Store(&m)
}

func (a *aliasCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	if sub.IsWildcard() {
		return a.LinearCache.CreateDeltaWatch(req, sub, ch)
	}
	aliases := *a.aliases.Load()
	var merged map[string]struct{}
	for name := range sub.SubscribedResources() {
		for _, target := range aliases[name] {
			if merged == nil {
				merged = maps.Clone(sub.SubscribedResources())
			}
			merged[target] = struct{}{}
		}
	}
	if merged == nil {
		return a.LinearCache.CreateDeltaWatch(req, sub, ch)
	}
	return a.LinearCache.CreateDeltaWatch(req, aliasSubscription{Subscription: sub, subscribed: merged}, ch)
}

// aliasSubscription is a subscription whose names include resolved aliases.
type aliasSubscription struct {
	cache.Subscription
	subscribed map[string]struct{}
}

func (s aliasSubscription) SubscribedResources() map[string]struct{} { return s.subscribed }
