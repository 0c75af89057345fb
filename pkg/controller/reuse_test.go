package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-mesh/mesh/pkg/model"
)

func reuseSnapshot() model.Snapshot {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", UID: "ns-uid", ResourceVersion: "1",
		Labels: map[string]string{model.LabelDataplaneMode: model.DataplaneModeAmbient}}}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web", UID: "svc-uid", ResourceVersion: "2"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.10",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	pod := func(name, ip string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, UID: types.UID("uid-" + name), ResourceVersion: "3", Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: "web"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
	}
	return model.Snapshot{
		Namespaces: []*corev1.Namespace{ns},
		Services:   []*corev1.Service{svc},
		Pods:       []*corev1.Pod{pod("a", "10.0.0.1"), pod("b", "10.0.0.2")},
	}
}

func TestReuse(t *testing.T) {
	uidA, uidB := model.PodUID("Kubernetes", "demo", "a"), model.PodUID("Kubernetes", "demo", "b")
	const svc = "demo/web.demo.svc.cluster.local"
	tests := []struct {
		name   string
		change func(*model.Snapshot)
		// same lists the resources that must keep the first translation's pointer.
		same []string
	}{
		{"nothing changed", func(*model.Snapshot) {}, []string{uidA, uidB, svc}},
		{"one pod changed", func(s *model.Snapshot) {
			p := s.Pods[0].DeepCopy()
			p.ResourceVersion, p.Labels["version"] = "9", "v2"
			s.Pods[0] = p
		}, []string{uidB, svc}},
		{"pod recreated with the same name", func(s *model.Snapshot) {
			p := s.Pods[1].DeepCopy()
			p.UID = "other"
			s.Pods[1] = p
		}, []string{uidA, svc}},
		{"service changed", func(s *model.Snapshot) {
			v := s.Services[0].DeepCopy()
			v.ResourceVersion = "9"
			s.Services[0] = v
		}, nil},
		{"namespace changed", func(s *model.Snapshot) {
			n := s.Namespaces[0].DeepCopy()
			n.ResourceVersion = "9"
			s.Namespaces[0] = n
		}, nil},
		{"list order changed", func(s *model.Snapshot) {
			s.Pods[0], s.Pods[1] = s.Pods[1], s.Pods[0]
		}, []string{uidA, uidB, svc}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r reuse
			s1 := reuseSnapshot()
			first := model.Translate(s1)
			if n := r.apply(s1, &first); n != 0 {
				t.Fatalf("first apply reused %d messages, want 0", n)
			}
			if len(first.Addresses) != 3 {
				t.Fatalf("translation has %d addresses, want 3 (2 workloads, 1 service): %v", len(first.Addresses), first.Addresses)
			}
			s2 := reuseSnapshot()
			s2.Pods[0], s2.Pods[1] = s1.Pods[0], s1.Pods[1]
			tt.change(&s2)
			second := model.Translate(s2)
			got := r.apply(s2, &second)
			if got != len(tt.same) {
				t.Errorf("reused %d messages, want %d", got, len(tt.same))
			}
			for name, a := range second.Addresses {
				want := false
				for _, s := range tt.same {
					want = want || s == name
				}
				if same := a == first.Addresses[name]; same != want {
					t.Errorf("%s: reused = %v, want %v", name, same, want)
				}
			}
		})
	}
}
