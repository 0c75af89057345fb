package controller

import (
	"cmp"
	"hash/fnv"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

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
// EndpointSlice workloads, Authorizations) on non-Pod objects only. So when
// the fingerprint of the non-Pod inputs is unchanged, the Pods whose uid and
// resourceVersion changed (or that came or went) are translated alone and
// merged into the previous result; any other change translates everything.
//
// Concurrency: used by Reconcile only (the controller runs one worker).
type incremental struct {
	env  uint64            // fingerprint of every input but Pods; 0 = no previous translation
	pods map[string]string // "<ns>/<name>" -> "<uid>/<resourceVersion>" of the Pods of prev
	prev model.Resources
}

// translate returns the translation of snap and whether it was incremental.
// The maps of a returned Resources are never modified afterwards (they are
// handed to the xDS server); the next call builds new ones.
func (r *incremental) translate(snap model.Snapshot) (model.Resources, bool) {
	env := envFingerprint(snap)
	pods := make(map[string]string, len(snap.Pods))
	for _, p := range snap.Pods {
		pods[p.Namespace+"/"+p.Name] = string(p.UID) + "/" + p.ResourceVersion
	}
	if r.env == 0 || r.env != env {
		res := model.Translate(snap)
		r.env, r.pods, r.prev = env, pods, res
		return res, false
	}
	var changed []*corev1.Pod
	dirty := map[string]bool{} // "<ns>/<name>" of pods changed, added or removed
	for _, p := range snap.Pods {
		k := p.Namespace + "/" + p.Name
		if r.pods[k] != pods[k] {
			changed = append(changed, p)
			dirty[k] = true
		}
	}
	for k := range r.pods {
		if _, ok := pods[k]; !ok {
			dirty[k] = true
		}
	}
	if len(dirty) == 0 {
		r.pods = pods
		return r.prev, true
	}
	part := snap
	part.Pods = changed
	partRes := model.Translate(part)

	cluster := cmp.Or(snap.Mesh.ClusterID, "Kubernetes") // model.MeshConfig's default
	out := model.Resources{
		Addresses:      maps.Clone(r.prev.Addresses),
		Authorizations: r.prev.Authorizations, // non-Pod inputs only; unchanged
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
	r.pods, r.prev = pods, out
	return out, true
}

// envFingerprint hashes the identity and resourceVersion of every non-Pod
// input and the mesh config. Lists from the cache come in no fixed order, so
// per-object hashes are summed. It is never 0.
func envFingerprint(s model.Snapshot) uint64 {
	sum := hashString("mesh\x00" + s.Mesh.ClusterID + "\x00" + s.Mesh.TrustDomain + "\x00" + s.Mesh.DomainSuffix + "\x00" + s.Mesh.RootNamespace + "\x00" + s.Mesh.Network)
	add := func(kind string, o runtime.Object) {
		m, err := meta.Accessor(o)
		if err != nil {
			sum += hashString(kind + "\x00?") // cannot happen for the kinds listed
			return
		}
		sum += hashString(strings.Join([]string{kind, m.GetNamespace(), m.GetName(), string(m.GetUID()), m.GetResourceVersion()}, "\x00"))
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
		add("AuthorizationPolicy", o)
	}
	for _, o := range s.PeerAuthentications {
		add("PeerAuthentication", o)
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
