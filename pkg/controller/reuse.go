package controller

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/ambient-mesh/mesh/pkg/model"
)

// incremental translates a snapshot by reusing the previous translation for
// everything whose inputs did not change. At 10,000 pods a full translation
// costs ~60 ms of CPU and makes pkg/xds encode and compare every message
// again (~50 ms); a pod change costs neither here: only the changed pods are
// translated, and every other message keeps its pointer, which pkg/xds
// recognizes without encoding it.
//
// What a message depends on (model.Translate reads Pods only to build their
// own Workloads): a Pod's Workload on that Pod and on every object that is
// not a Pod (namespace labels, Services and their selectors,
// EndpointSlices, waypoints, nodes, policies); every other message (Services,
// EndpointSlice workloads, Authorizations, waypoint ServiceConfigs, route
// statuses, waypoint Telemetry) on non-Pod objects only, except that a ServiceConfig lists the
// workloads of its DestinationRule subsets: a change to a Pod that is or may
// become a subset member translates everything. So when
// the fingerprint of the non-Pod inputs is unchanged, the Pods whose uid and
// resourceVersion changed (or that came or went) are translated alone and
// merged into the previous result; any other change translates everything.
// Pod events name the Pods to look at (Collector.podEvent), so a pod change
// neither lists nor compares the other Pods.
//
// Concurrency: used by Reconcile only (the controller runs one worker).
type incremental struct {
	env  uint64            // fingerprint of every input but Pods; 0 = no previous translation
	pods map[string]string // "<ns>/<name>" -> "<uid>/<resourceVersion>" of the Pods of prev
	prev model.Resources
	// subsetUIDs are the workloads prev's DestinationRule subsets list;
	// subsets says which pods may join one (built with prev).
	subsetUIDs map[string]bool
	subsets    *model.SubsetSelector
}

// translate returns the translation of snap and whether it was incremental.
// The maps of a returned Resources are never modified afterwards (they are
// handed to the xDS server); the next call builds new ones.
func (r *incremental) translate(snap model.Snapshot) (model.Resources, bool) {
	env := envFingerprint(snap)
	if r.env == 0 || r.env != env {
		return r.full(snap, env), false
	}
	pods := make(map[string]*corev1.Pod, len(snap.Pods))
	for _, p := range snap.Pods {
		pods[p.Namespace+"/"+p.Name] = p
	}
	for k := range r.pods {
		if _, ok := pods[k]; !ok {
			pods[k] = nil
		}
	}
	rest := snap
	rest.Pods = nil
	if res, ok := r.update(rest, pods); ok {
		return res, true
	}
	return r.full(snap, env), false
}

// full translates snap from scratch; env is its fingerprint.
func (r *incremental) full(snap model.Snapshot, env uint64) model.Resources {
	res := model.Translate(snap)
	r.env, r.prev = env, res
	r.subsetUIDs, r.subsets = model.SubsetWorkloads(res.WaypointConfigs), model.NewSubsetSelector(snap)
	r.pods = make(map[string]string, len(snap.Pods))
	for _, p := range snap.Pods {
		r.pods[p.Namespace+"/"+p.Name] = podVersion(p)
	}
	return res
}

func podVersion(p *corev1.Pod) string { return string(p.UID) + "/" + p.ResourceVersion }

// update merges into the previous translation the Pods that may have
// changed: pods maps "<ns>/<name>" to the Pod now, or nil if it is gone.
// rest is the snapshot without Pods; its fingerprint must be r.env. ok is
// false, and nothing is changed, when a changed Pod is or may become a
// member of a DestinationRule subset: then only a full translation is right.
func (r *incremental) update(rest model.Snapshot, pods map[string]*corev1.Pod) (res model.Resources, ok bool) {
	var changed []*corev1.Pod
	dirty := map[string]bool{} // "<ns>/<name>" of pods changed, added or removed
	for k, p := range pods {
		old, had := r.pods[k]
		switch {
		case p == nil && had:
			delete(r.pods, k)
			dirty[k] = true
		case p != nil && (!had || old != podVersion(p)):
			r.pods[k] = podVersion(p)
			changed = append(changed, p)
			dirty[k] = true
		}
	}
	if len(dirty) == 0 {
		return r.prev, true
	}
	cluster := cmp.Or(rest.Mesh.ClusterID, "Kubernetes") // model.MeshConfig's default
	for k := range dirty {
		ns, name, _ := strings.Cut(k, "/")
		if r.subsetUIDs[model.PodUID(cluster, ns, name)] || (pods[k] != nil && r.subsets.Selects(pods[k])) {
			r.pods = nil // forget the partial bookkeeping: the caller translates in full
			return model.Resources{}, false
		}
	}
	part := rest
	part.Pods = changed
	partRes := model.Translate(part)

	out := model.Resources{
		Addresses:      maps.Clone(r.prev.Addresses),
		Authorizations: r.prev.Authorizations, // non-Pod inputs only; unchanged
		// Waypoint configs and route statuses depend on non-Pod inputs only.
		WaypointConfigs: r.prev.WaypointConfigs,
		Telemetry:       r.prev.Telemetry,
		RouteStatuses:   r.prev.RouteStatuses,
		PolicyStatuses:  r.prev.PolicyStatuses,
	}
	for k := range dirty {
		ns, name, _ := strings.Cut(k, "/")
		uid := model.PodUID(cluster, ns, name)
		delete(out.Addresses, uid)
		if a, ok := partRes.Addresses[uid]; ok && a.GetWorkload() != nil {
			out.Addresses[uid] = a
		}
	}
	isDirtyPod := func(d model.Diagnostic) bool { return d.Kind == "Pod" && dirty[d.Namespace+"/"+d.Name] }
	for _, d := range r.prev.Diagnostics {
		if !isDirtyPod(d) {
			out.Diagnostics = append(out.Diagnostics, d)
		}
	}
	for _, d := range partRes.Diagnostics {
		if isDirtyPod(d) {
			out.Diagnostics = append(out.Diagnostics, d)
		}
	}
	slices.SortFunc(out.Diagnostics, func(a, b model.Diagnostic) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Field, b.Field), cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Message, b.Message))
	})
	r.prev = out
	return out, true
}

// translate builds the model for Reconcile. When the previous translation
// exists and no non-Pod object changed since, it reads from the cache only
// the Pods that events named (dirtyPods) instead of listing all of them.
func (c *Collector) translate(ctx context.Context) (res model.Resources, incremental bool, pods int, err error) {
	dirty := c.takeDirtyPods()
	defer func() {
		if err != nil {
			c.markDirtyPods(dirty) // retried with the next reconcile
		}
	}()
	if c.inc.env != 0 {
		rest, err := c.snapshot(ctx, false)
		if err != nil {
			return res, false, 0, err
		}
		if envFingerprint(rest) == c.inc.env {
			got := make(map[string]*corev1.Pod, len(dirty))
			for k := range dirty {
				ns, name, _ := strings.Cut(k, "/")
				var p corev1.Pod
				switch err := c.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &p); {
				case apierrors.IsNotFound(err):
					got[k] = nil
				case err != nil:
					return res, false, 0, fmt.Errorf("get pod %s from the cache: %w", k, err)
				default:
					got[k] = &p
				}
			}
			if res, ok := c.inc.update(rest, got); ok {
				return res, true, len(c.inc.pods), nil
			}
		}
	}
	snap, err := c.snapshot(ctx, true)
	if err != nil {
		return res, false, 0, err
	}
	return c.inc.full(snap, envFingerprint(snap)), false, len(snap.Pods), nil
}

// podEvent maps a Pod event to the single work item and remembers the Pod.
func (c *Collector) podEvent(_ context.Context, o client.Object) []reconcile.Request {
	c.markDirtyPods(map[string]bool{o.GetNamespace() + "/" + o.GetName(): true})
	return []reconcile.Request{key}
}

func (c *Collector) markDirtyPods(keys map[string]bool) {
	c.dirtyMu.Lock()
	defer c.dirtyMu.Unlock()
	if c.dirtyPods == nil {
		c.dirtyPods = map[string]bool{}
	}
	for k := range keys {
		c.dirtyPods[k] = true
	}
}

func (c *Collector) takeDirtyPods() map[string]bool {
	c.dirtyMu.Lock()
	defer c.dirtyMu.Unlock()
	d := c.dirtyPods
	c.dirtyPods = nil
	return d
}

// envFingerprint hashes the identity and resourceVersion of every non-Pod
// input and the mesh config. Lists from the cache come in no fixed order, so
// per-object hashes are summed. It is never 0.
func envFingerprint(s model.Snapshot) uint64 {
	sum := hashString("mesh\x00" + s.Mesh.ClusterID + "\x00" + s.Mesh.TrustDomain + "\x00" + s.Mesh.DomainSuffix + "\x00" + s.Mesh.RootNamespace + "\x00" + s.Mesh.Network +
		"\x00" + meshFingerprint(s.Mesh.Istio))
	add := func(kind string, o runtime.Object) {
		m, err := meta.Accessor(o)
		if err != nil {
			sum += hashString(kind + "\x00?") // cannot happen for the kinds listed
			return
		}
		sum += hashString(strings.Join([]string{kind, m.GetNamespace(), m.GetName(), string(m.GetUID()), m.GetResourceVersion()}, "\x00"))
	}
	// Objects whose status istiod-lite writes count by generation: their
	// status changes the resourceVersion but is not an input.
	addSpec := func(kind string, m metav1.Object) {
		sum += hashString(strings.Join([]string{kind, m.GetNamespace(), m.GetName(), string(m.GetUID()), strconv.FormatInt(m.GetGeneration(), 10)}, "\x00"))
	}
	for _, o := range s.Namespaces {
		add("Namespace", o)
	}
	for _, o := range s.Nodes {
		add("Node", o)
	}
	for _, o := range s.Services {
		add("Service", o)
	}
	for _, o := range s.EndpointSlices {
		add("EndpointSlice", o)
	}
	for _, o := range s.Gateways {
		add("Gateway", o)
	}
	for _, o := range s.AuthorizationPolicies {
		add("AuthorizationPolicy", o) // by resourceVersion: annotations (dry-run) are inputs
	}
	for _, o := range s.PeerAuthentications {
		add("PeerAuthentication", o)
	}
	for _, o := range s.HTTPRoutes {
		addSpec("HTTPRoute", o)
	}
	for _, o := range s.GRPCRoutes {
		addSpec("GRPCRoute", o)
	}
	for _, o := range s.TCPRoutes {
		addSpec("TCPRoute", o)
	}
	for _, o := range s.ReferenceGrants {
		add("ReferenceGrant", o)
	}
	for _, o := range s.DestinationRules {
		add(model.KindDestinationRule, o)
	}
	// Their status is istiod-lite's own writing too.
	for _, o := range s.VirtualServices {
		addSpec(model.KindVirtualService, o)
	}
	for _, o := range s.LocalRateLimitPolicies {
		addSpec(model.KindLocalRateLimitPolicy, o)
	}
	for _, o := range s.Telemetries {
		add(model.KindTelemetry, o)
	}
	if sum == 0 {
		sum = 1
	}
	return sum
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}
