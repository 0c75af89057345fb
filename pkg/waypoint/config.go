package waypoint

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

// Routes holds the compiled ServiceConfigs, by resource name
// ("<namespace>/<hostname>"), and applies xDS deltas to them.
//
// NACK semantics are the state store's (pkg/ztunnel/state): each valid
// resource of a response and every removal is applied; an invalid resource
// is skipped, keeping the last good version of it, and the response is
// NACKed with one line per rejected resource naming the resource and field.
//
// Concurrency: mu serialises writers; each write publishes a new immutable
// map through cur, which readers load without locking.
type Routes struct {
	mu  sync.Mutex
	cur atomic.Pointer[map[string]*service]
}

// NewRoutes returns an empty route table.
func NewRoutes() *Routes {
	r := &Routes{}
	r.cur.Store(&map[string]*service{})
	return r
}

func (r *Routes) load() map[string]*service { return *r.cur.Load() }

// lookup returns the compiled config of the Service "<namespace>/<hostname>".
func (r *Routes) lookup(key string) *service { return r.load()[key] }

// Handle applies a delta of ServiceConfig resources (an xdsclient.Handler).
func (r *Routes) Handle(d xdsclient.Delta) error {
	if d.TypeURL != ServiceConfigTypeURL {
		return fmt.Errorf("unexpected type %s", d.TypeURL)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := maps.Clone(r.load())
	for _, name := range d.Removed {
		delete(next, name)
	}
	var errs []error
	for i := range d.Updated {
		res := &d.Updated[i]
		name := res.Name
		sc := &waypointv1alpha1.ServiceConfig{}
		if err := res.UnmarshalTo(sc); err != nil {
			errs = append(errs, configError(name, "resource", "cannot decode as ambientmesh.waypoint.v1alpha1.ServiceConfig: %v", err))
			continue
		}
		s, err := compile(name, sc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		next[name] = s
	}
	r.cur.Store(&next)
	return errors.Join(errs...)
}

// Set replaces the whole table (in-process use and tests). It is all or
// nothing: an invalid config leaves the table as it was.
func (r *Routes) Set(cfgs ...*waypointv1alpha1.ServiceConfig) error {
	next := map[string]*service{}
	for _, sc := range cfgs {
		name := sc.GetNamespace() + "/" + sc.GetHostname()
		s, err := compile(name, sc)
		if err != nil {
			return err
		}
		next[name] = s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur.Store(&next)
	return nil
}

// Configs returns copies of the current ServiceConfigs, sorted by name (the
// admin config dump).
func (r *Routes) Configs() []*waypointv1alpha1.ServiceConfig {
	cur := r.load()
	out := make([]*waypointv1alpha1.ServiceConfig, 0, len(cur))
	for _, k := range slices.Sorted(maps.Keys(cur)) {
		out = append(out, proto.Clone(cur[k].src).(*waypointv1alpha1.ServiceConfig))
	}
	return out
}
