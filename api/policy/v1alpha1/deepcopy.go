package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

type gatewayTargetRef = gatewayv1.LocalPolicyTargetReferenceWithSectionName

// DeepCopyInto copies in into out.
func (in *LocalRateLimitPolicy) DeepCopyInto(out *LocalRateLimitPolicy) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a deep copy.
func (in *LocalRateLimitPolicy) DeepCopy() *LocalRateLimitPolicy {
	if in == nil {
		return nil
	}
	out := new(LocalRateLimitPolicy)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *LocalRateLimitPolicy) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies in into out.
func (in *LocalRateLimitPolicySpec) DeepCopyInto(out *LocalRateLimitPolicySpec) {
	*out = *in
	if in.TargetRefs != nil {
		out.TargetRefs = make([]gatewayTargetRef, len(in.TargetRefs))
		for i := range in.TargetRefs {
			in.TargetRefs[i].DeepCopyInto(&out.TargetRefs[i])
		}
	}
	if in.Limit != nil {
		l := *in.Limit
		out.Limit = &l
	}
	if in.Bucket != nil {
		b := *in.Bucket
		out.Bucket = &b
	}
}

// DeepCopy returns a deep copy.
func (in *LocalRateLimitPolicySpec) DeepCopy() *LocalRateLimitPolicySpec {
	if in == nil {
		return nil
	}
	out := new(LocalRateLimitPolicySpec)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies in into out.
func (in *LocalRateLimitPolicyList) DeepCopyInto(out *LocalRateLimitPolicyList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]LocalRateLimitPolicy, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a deep copy.
func (in *LocalRateLimitPolicyList) DeepCopy() *LocalRateLimitPolicyList {
	if in == nil {
		return nil
	}
	out := new(LocalRateLimitPolicyList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *LocalRateLimitPolicyList) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}
