package controller

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/mesh/pkg/model"
)

func incPod(name, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, UID: types.UID("uid-" + name), ResourceVersion: "3",
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{model.AnnotationRedirection: model.RedirectionEnabled}},
		Spec: corev1.PodSpec{NodeName: "n1", ServiceAccountName: "web"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func incSnapshot() model.Snapshot {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", UID: "ns-uid", ResourceVersion: "1",
		Labels: map[string]string{model.LabelDataplaneMode: model.DataplaneModeAmbient, model.LabelUseWaypoint: "wp"}}}
	wp := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "wp", UID: "gw-uid", ResourceVersion: "4"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: model.WaypointGatewayClassName,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: model.HBONEPort, Protocol: "HBONE"}}},
		Status: gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{{Value: "10.96.0.99"}}}}
	route := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web", UID: "route-uid", ResourceVersion: "5"},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: "web"}}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: "web", Port: ptr.To(gatewayv1.PortNumber(80))}, Weight: ptr.To[int32](7)}}}}},
		}}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web", UID: "svc-uid", ResourceVersion: "2"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.10",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	return model.Snapshot{
		Namespaces: []*corev1.Namespace{ns},
		Services:   []*corev1.Service{svc},
		Pods:       []*corev1.Pod{incPod("a", "10.0.0.1"), incPod("b", "10.0.0.2")},
		Gateways:   []*gatewayv1.Gateway{wp},
		HTTPRoutes: []*gatewayv1.HTTPRoute{route},
	}
}

func TestIncrementalTranslate(t *testing.T) {
	uidA, uidB := model.PodUID("Kubernetes", "demo", "a"), model.PodUID("Kubernetes", "demo", "b")
	const svc = "demo/web.demo.svc.cluster.local"
	tests := []struct {
		name   string
		change func(*model.Snapshot)
		// incremental is whether the second translation may reuse the first.
		incremental bool
		// same lists the resources that must keep the first translation's pointer.
		same []string
	}{
		{"nothing changed", func(*model.Snapshot) {}, true, []string{uidA, uidB, svc}},
		{"one pod changed", func(s *model.Snapshot) {
			p := s.Pods[0].DeepCopy()
			p.ResourceVersion, p.Labels["service.istio.io/canonical-revision"] = "9", "v2"
			s.Pods[0] = p
		}, true, []string{uidB, svc}},
		{"pod became unready", func(s *model.Snapshot) {
			p := s.Pods[0].DeepCopy()
			p.ResourceVersion, p.Status.Conditions = "9", nil
			s.Pods[0] = p
		}, true, []string{uidB, svc}},
		{"pod recreated with the same name", func(s *model.Snapshot) {
			p := s.Pods[1].DeepCopy()
			p.UID, p.Status.PodIP = "other", "10.0.0.3"
			s.Pods[1] = p
		}, true, []string{uidA, svc}},
		{"pod removed", func(s *model.Snapshot) { s.Pods = s.Pods[:1] }, true, []string{uidA, svc}},
		{"pod added", func(s *model.Snapshot) { s.Pods = append(s.Pods, incPod("c", "10.0.0.4")) }, true, []string{uidA, uidB, svc}},
		{"pod with a bad address added", func(s *model.Snapshot) { s.Pods = append(s.Pods, incPod("bad", "not-an-ip")) }, true, []string{uidA, uidB, svc}},
		{"list order changed", func(s *model.Snapshot) { s.Pods[0], s.Pods[1] = s.Pods[1], s.Pods[0] }, true, []string{uidA, uidB, svc}},
		{"service changed", func(s *model.Snapshot) {
			v := s.Services[0].DeepCopy()
			v.ResourceVersion, v.Spec.Ports[0].Port = "9", 8080
			s.Services[0] = v
		}, false, nil},
		{"route status written", func(s *model.Snapshot) {
			r := s.HTTPRoutes[0].DeepCopy()
			r.ResourceVersion = "9"
			s.HTTPRoutes[0] = r
		}, true, []string{uidA, uidB, svc}},
		{"route changed", func(s *model.Snapshot) {
			r := s.HTTPRoutes[0].DeepCopy()
			r.ResourceVersion, r.Generation, r.Spec.Rules[0].BackendRefs[0].Weight = "9", 2, ptr.To[int32](3)
			s.HTTPRoutes[0] = r
		}, false, nil},
		{"namespace left the mesh", func(s *model.Snapshot) {
			n := s.Namespaces[0].DeepCopy()
			n.ResourceVersion, n.Labels = "9", nil
			s.Namespaces[0] = n
		}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r incremental
			s1 := incSnapshot()
			first, inc := r.translate(s1)
			if inc {
				t.Fatal("first translation was incremental")
			}
			if len(first.Addresses) != 3 {
				t.Fatalf("translation has %d addresses, want 3 (2 workloads, 1 service): %v", len(first.Addresses), first.Addresses)
			}
			firstCopy := first.Addresses[uidA]
			s2 := incSnapshot()
			s2.Pods = []*corev1.Pod{s1.Pods[0], s1.Pods[1]}
			tt.change(&s2)
			got, inc := r.translate(s2)
			if inc != tt.incremental {
				t.Errorf("incremental = %v, want %v", inc, tt.incremental)
			}
			want := model.Translate(s2)
			// The same result as a full translation...
			if len(got.Addresses) != len(want.Addresses) {
				t.Errorf("%d addresses, want %d", len(got.Addresses), len(want.Addresses))
			}
			for name, w := range want.Addresses {
				if !proto.Equal(got.Addresses[name], w) {
					t.Errorf("address %s = %v, want %v", name, got.Addresses[name], w)
				}
			}
			if len(got.Authorizations) != len(want.Authorizations) {
				t.Errorf("%d authorizations, want %d", len(got.Authorizations), len(want.Authorizations))
			}
			for name, w := range want.Authorizations {
				if !proto.Equal(got.Authorizations[name], w) {
					t.Errorf("authorization %s = %v, want %v", name, got.Authorizations[name], w)
				}
			}
			if len(first.WaypointConfigs) != 1 || len(got.WaypointConfigs) != len(want.WaypointConfigs) {
				t.Errorf("%d waypoint configs, want %d (first: %d, want 1)", len(got.WaypointConfigs), len(want.WaypointConfigs), len(first.WaypointConfigs))
			}
			for name, w := range want.WaypointConfigs {
				if !proto.Equal(got.WaypointConfigs[name], w) {
					t.Errorf("waypoint config %s = %v, want %v", name, got.WaypointConfigs[name], w)
				}
			}
			if len(got.RouteStatuses) != len(want.RouteStatuses) {
				t.Errorf("%d route statuses, want %d", len(got.RouteStatuses), len(want.RouteStatuses))
			}
			if g, w := diagStrings(got.Diagnostics), diagStrings(want.Diagnostics); !slices.Equal(g, w) {
				t.Errorf("diagnostics = %v, want %v", g, w)
			}
			// ...sharing the unchanged messages with the first one.
			for name, a := range got.Addresses {
				if same := a == first.Addresses[name]; same != slices.Contains(tt.same, name) {
					t.Errorf("%s: same pointer as before = %v, want %v", name, same, !same)
				}
			}
			// The first result was not modified.
			if first.Addresses[uidA] != firstCopy || len(first.Addresses) != 3 {
				t.Error("the first translation's map was modified")
			}
		})
	}
}

func diagStrings(ds []model.Diagnostic) []string {
	var out []string
	for _, d := range ds {
		out = append(out, strings.Join([]string{d.Kind, d.Namespace, d.Name, d.Field, d.Reason, d.Message}, "|"))
	}
	slices.Sort(out)
	return out
}

// TestIncrementalSubsets: a ServiceConfig lists the workloads of its
// DestinationRule subsets, so a change to a pod that is, or may become, a
// member is translated in full; other pod changes stay incremental.
func TestIncrementalSubsets(t *testing.T) {
	withDR := func() model.Snapshot {
		s := incSnapshot()
		dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web", UID: "dr-uid", ResourceVersion: "6"}}
		dr.Spec.Host = "web"
		dr.Spec.Subsets = []*networking.Subset{{Name: "v2", Labels: map[string]string{"version": "v2"}}}
		s.DestinationRules = []*networkingv1.DestinationRule{dr}
		other := incPod("other", "10.0.0.9")
		other.Labels = map[string]string{"app": "db"}
		s.Pods = append(s.Pods, other)
		return s
	}
	const svc = "demo/web.demo.svc.cluster.local"
	tests := []struct {
		name        string
		change      func(*model.Snapshot)
		incremental bool
		members     []string
	}{
		{"pod joins the subset", func(s *model.Snapshot) {
			p := s.Pods[0].DeepCopy()
			p.ResourceVersion, p.Labels["version"] = "9", "v2"
			s.Pods[0] = p
		}, false, []string{model.PodUID("Kubernetes", "demo", "a")}},
		{"pod of another service changed", func(s *model.Snapshot) {
			p := s.Pods[2].DeepCopy()
			p.ResourceVersion, p.Labels["version"] = "9", "v2"
			s.Pods[2] = p
		}, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r incremental
			if _, inc := r.translate(withDR()); inc {
				t.Fatal("first translation was incremental")
			}
			s2 := withDR()
			tt.change(&s2)
			got, inc := r.translate(s2)
			if inc != tt.incremental {
				t.Errorf("incremental = %v, want %v", inc, tt.incremental)
			}
			want := model.Translate(s2)
			if !proto.Equal(got.WaypointConfigs[svc], want.WaypointConfigs[svc]) {
				t.Errorf("waypoint config = %v, want %v", got.WaypointConfigs[svc], want.WaypointConfigs[svc])
			}
			subs := got.WaypointConfigs[svc].GetBackendPolicies()
			if len(subs) != 1 || len(subs[0].GetSubsets()) != 1 || !slices.Equal(subs[0].GetSubsets()[0].GetWorkloadUids(), tt.members) {
				t.Errorf("backend policies = %v, want subset v2 with %v", subs, tt.members)
			}
			// A pod that left the subset is noticed too.
			if !tt.incremental {
				s3 := withDR()
				got, inc := r.translate(s3)
				if inc {
					t.Error("the pod leaving the subset was translated incrementally")
				}
				if n := len(got.WaypointConfigs[svc].GetBackendPolicies()[0].GetSubsets()[0].GetWorkloadUids()); n != 0 {
					t.Errorf("subset still lists %d workloads after the pod left", n)
				}
			}
		})
	}
}
