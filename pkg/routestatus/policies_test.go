package routestatus

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/mesh/pkg/model"
)

func TestMergeAncestors(t *testing.T) {
	then, now := metav1.NewTime(time.Unix(100, 0)), metav1.NewTime(time.Unix(200, 0))
	ref := gatewayv1.ParentReference{Kind: ptr.To(gatewayv1.Kind("Service")), Name: "reviews"}
	other := gatewayv1.PolicyAncestorStatus{AncestorRef: ref, ControllerName: "example.com/other"}
	ours := func(status metav1.ConditionStatus, at metav1.Time) gatewayv1.PolicyAncestorStatus {
		return gatewayv1.PolicyAncestorStatus{AncestorRef: ref, ControllerName: model.PolicyControllerName,
			Conditions: []metav1.Condition{{Type: "Accepted", Status: status, Reason: "Accepted", LastTransitionTime: at}}}
	}
	current := []gatewayv1.PolicyAncestorStatus{other, ours(metav1.ConditionTrue, then)}
	got := MergeAncestors(current, []gatewayv1.PolicyAncestorStatus{ours(metav1.ConditionTrue, metav1.Time{})}, now)
	if len(got) != 2 || got[0].ControllerName != "example.com/other" || !got[1].Conditions[0].LastTransitionTime.Equal(&then) {
		t.Errorf("unchanged status: got %+v, want the other controller's entry kept and our time kept", got)
	}
	got = MergeAncestors(current, []gatewayv1.PolicyAncestorStatus{ours(metav1.ConditionFalse, metav1.Time{})}, now)
	if !got[1].Conditions[0].LastTransitionTime.Equal(&now) {
		t.Errorf("changed status kept lastTransitionTime %v, want %v", got[1].Conditions[0].LastTransitionTime, now)
	}
	if got := MergeAncestors([]gatewayv1.PolicyAncestorStatus{ours(metav1.ConditionTrue, then)}, nil, now); got == nil || len(got) != 0 {
		t.Errorf("no desired status: got %+v, want an empty list", got)
	}
}

func TestMergeIstioConditions(t *testing.T) {
	then, now := metav1.NewTime(time.Unix(100, 0)), metav1.NewTime(time.Unix(200, 0))
	current := []*metav1alpha1.IstioCondition{
		{Type: "Reconciled", Status: "True"},
		{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 1, LastTransitionTime: timestamppb.New(then.Time)},
	}
	want := []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", ObservedGeneration: 1}}
	if _, changed := MergeIstioConditions(current, want, now); changed {
		t.Error("identical condition reported as changed")
	}
	want[0].Status, want[0].Reason = metav1.ConditionFalse, "Conflicted"
	got, changed := MergeIstioConditions(current, want, now)
	if !changed || len(got) != 2 || got[0].Type != "Reconciled" || got[1].Reason != "Conflicted" || !got[1].LastTransitionTime.AsTime().Equal(now.Time) {
		t.Errorf("MergeIstioConditions() = %v, %v; want Reconciled kept and Accepted False at %v", got, changed, now)
	}
	if current[1].Reason != "Accepted" {
		t.Error("the current conditions were modified")
	}
}
