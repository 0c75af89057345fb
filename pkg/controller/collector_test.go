package controller

import (
	"testing"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/ambient-mesh/mesh/pkg/model"
)

// TestCollectorPodEvents checks the event-driven path: after the first full
// translation, a Reconcile reads only the Pods that events named, and its
// result equals a full translation of the cluster.
func TestCollectorPodEvents(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	s := incSnapshot()
	objs := []client.Object{s.Namespaces[0], s.Services[0], s.Pods[0], s.Pods[1]}
	for _, o := range objs {
		o.SetResourceVersion("")
	}
	cl := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
	var got []model.Resources
	c := &Collector{Client: cl, Sink: func(r model.Resources) { got = append(got, r) }, Logger: zap.NewNop(), optional: map[string]bool{}}
	ctx := t.Context()
	reconcile := func(step string) model.Resources {
		t.Helper()
		if _, err := c.Reconcile(ctx, key); err != nil {
			t.Fatalf("%s: Reconcile: %v", step, err)
		}
		last := got[len(got)-1]
		snap, err := c.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := model.Translate(snap)
		if len(last.Addresses) != len(want.Addresses) {
			t.Fatalf("%s: %d addresses, want %d", step, len(last.Addresses), len(want.Addresses))
		}
		for name := range want.Addresses {
			if _, ok := last.Addresses[name]; !ok {
				t.Errorf("%s: address %s missing", step, name)
			}
		}
		return last
	}
	first := reconcile("first")
	uidA, uidB := model.PodUID("Kubernetes", "demo", "a"), model.PodUID("Kubernetes", "demo", "b")

	// An event for pod a after a label change: only a is translated again.
	a := s.Pods[0].DeepCopy()
	if err := cl.Get(ctx, client.ObjectKeyFromObject(a), a); err != nil {
		t.Fatal(err)
	}
	a.Labels["service.istio.io/canonical-revision"] = "v2"
	if err := cl.Update(ctx, a); err != nil {
		t.Fatal(err)
	}
	c.podEvent(ctx, a)
	second := reconcile("pod a changed")
	if second.Addresses[uidA] == first.Addresses[uidA] {
		t.Error("pod a's workload was not rebuilt")
	}
	if got := second.Addresses[uidA].GetWorkload().GetCanonicalRevision(); got != "v2" {
		t.Errorf("pod a's canonical revision = %q, want v2", got)
	}
	if second.Addresses[uidB] != first.Addresses[uidB] {
		t.Error("pod b's workload was rebuilt; want the previous message")
	}

	// Pod b deleted: its workload goes.
	if err := cl.Delete(ctx, s.Pods[1].DeepCopy()); err != nil {
		t.Fatal(err)
	}
	c.podEvent(ctx, s.Pods[1])
	third := reconcile("pod b deleted")
	if _, ok := third.Addresses[uidB]; ok {
		t.Error("pod b's workload is still there")
	}
}
