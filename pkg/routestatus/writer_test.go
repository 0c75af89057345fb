package routestatus

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/mesh/pkg/model"
)

func TestMerge(t *testing.T) {
	then := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := metav1.NewTime(then.Add(time.Hour))
	svc := gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: "reviews"}
	svcExplicitNS := svc
	svcExplicitNS.Namespace = ptr.To(gatewayv1.Namespace("demo"))
	other := gatewayv1.RouteParentStatus{ParentRef: gatewayv1.ParentReference{Name: "ingress"}, ControllerName: "example.com/gateway",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: then}}}
	cond := func(typ string, st metav1.ConditionStatus, at metav1.Time) metav1.Condition {
		return metav1.Condition{Type: typ, Status: st, Reason: typ, ObservedGeneration: 2, LastTransitionTime: at}
	}
	ours := func(ref gatewayv1.ParentReference, conds ...metav1.Condition) gatewayv1.RouteParentStatus {
		return gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: model.RouteStatusControllerName, Conditions: conds}
	}
	want := &model.RouteStatus{Generation: 2, Parents: []gatewayv1.RouteParentStatus{
		ours(svc, cond("Accepted", metav1.ConditionTrue, metav1.Time{}), cond("ResolvedRefs", metav1.ConditionFalse, metav1.Time{})),
	}}
	tests := []struct {
		name    string
		current []gatewayv1.RouteParentStatus
		want    *model.RouteStatus
		out     []gatewayv1.RouteParentStatus
	}{
		{"new", nil, want, []gatewayv1.RouteParentStatus{
			ours(svc, cond("Accepted", metav1.ConditionTrue, now), cond("ResolvedRefs", metav1.ConditionFalse, now))}},
		{"others kept, unchanged condition keeps its time", []gatewayv1.RouteParentStatus{
			ours(svcExplicitNS, cond("Accepted", metav1.ConditionTrue, then), cond("ResolvedRefs", metav1.ConditionTrue, then)), other},
			want, []gatewayv1.RouteParentStatus{other,
				ours(svc, cond("Accepted", metav1.ConditionTrue, then), cond("ResolvedRefs", metav1.ConditionFalse, now))}},
		{"no longer ours", []gatewayv1.RouteParentStatus{other, ours(svc, cond("Accepted", metav1.ConditionTrue, then))}, nil,
			[]gatewayv1.RouteParentStatus{other}},
		{"nothing", nil, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Merge(tc.current, tc.want, "demo", now)
			if len(got) != len(tc.out) {
				t.Fatalf("Merge() = %+v, want %+v", got, tc.out)
			}
			for i := range got {
				if got[i].ControllerName != tc.out[i].ControllerName || !sameRef(got[i].ParentRef, tc.out[i].ParentRef, "demo") ||
					len(got[i].Conditions) != len(tc.out[i].Conditions) {
					t.Fatalf("parent %d = %+v, want %+v", i, got[i], tc.out[i])
				}
				for j, c := range got[i].Conditions {
					w := tc.out[i].Conditions[j]
					if c.Type != w.Type || c.Status != w.Status || !c.LastTransitionTime.Equal(&w.LastTransitionTime) {
						t.Errorf("parent %d condition %d = %+v, want %+v", i, j, c, w)
					}
				}
			}
		})
	}
}
