package v1alpha1

import (
	"testing"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestDeepCopy: the hand-written copies share no memory with the original.
func TestDeepCopy(t *testing.T) {
	in := &LocalRateLimitPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", Labels: map[string]string{"a": "b"}},
		Spec: LocalRateLimitPolicySpec{
			TargetRefs: []gatewayv1.LocalPolicyTargetReferenceWithSectionName{{
				LocalPolicyTargetReference: gatewayv1.LocalPolicyTargetReference{Kind: "HTTPRoute", Name: "r"}, SectionName: ptr.To(gatewayv1.SectionName("s"))}},
			Limit:  &RateLimit{Requests: 10, Unit: RateLimitUnitSecond},
			Bucket: &TokenBucket{MaxTokens: 1, TokensPerFill: 1, FillInterval: "1s"},
		},
		Status: gatewayv1.PolicyStatus{Ancestors: []gatewayv1.PolicyAncestorStatus{{Conditions: []metav1.Condition{{Type: "Accepted"}}}}},
	}
	list := &LocalRateLimitPolicyList{Items: []LocalRateLimitPolicy{*in}}
	for _, o := range []runtime.Object{in, list} {
		out := o.DeepCopyObject()
		if !apiequality.Semantic.DeepEqual(o, out) {
			t.Fatalf("DeepCopyObject() = %+v, want %+v", out, o)
		}
	}
	out := in.DeepCopy()
	*out.Spec.TargetRefs[0].SectionName = "changed"
	out.Spec.Limit.Requests = 99
	out.Spec.Bucket.MaxTokens = 99
	out.Status.Ancestors[0].Conditions[0].Type = "changed"
	out.Labels["a"] = "changed"
	if *in.Spec.TargetRefs[0].SectionName != "s" || in.Spec.Limit.Requests != 10 || in.Spec.Bucket.MaxTokens != 1 ||
		in.Status.Ancestors[0].Conditions[0].Type != "Accepted" || in.Labels["a"] != "b" {
		t.Errorf("changing the copy changed the original: %+v", in)
	}
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if !s.Recognizes(SchemeGroupVersion.WithKind("LocalRateLimitPolicy")) {
		t.Error("scheme does not recognize LocalRateLimitPolicy")
	}
}
