package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// GroupName is the API group of the mesh's policies.
const GroupName = "policy.ambient-mesh.io"

// SchemeGroupVersion is policy.ambient-mesh.io/v1alpha1.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// AddToScheme registers the kinds of this package.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &LocalRateLimitPolicy{}, &LocalRateLimitPolicyList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}

// LocalRateLimitPolicy limits the request rate of a Service (every request
// the waypoint carries for it) or of an HTTPRoute (the requests its rules
// match), with one token bucket per waypoint replica: the limit is not
// shared across replicas. A request over the limit is answered 429 with a
// retry-after header and never reaches a backend.
//
// Attachment follows Gateway API policy attachment (GEP-713): a policy
// targets objects in its own namespace; when several policies target the
// same object, the oldest (then the first by name) wins and the others get
// Accepted=False/Conflicted.
type LocalRateLimitPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LocalRateLimitPolicySpec `json:"spec"`
	Status gatewayv1.PolicyStatus   `json:"status,omitempty"`
}

// LocalRateLimitPolicySpec is the desired limit and what it applies to.
type LocalRateLimitPolicySpec struct {
	// TargetRefs are the objects limited, in the policy's namespace: a
	// Service (group "", kind Service; sectionName not supported) whose
	// waypoint applies the limit to all its requests, or an HTTPRoute
	// (group gateway.networking.k8s.io, kind HTTPRoute; sectionName: one
	// rule by name) whose matched requests share one bucket per rule. A
	// Service limit is checked before a route limit.
	TargetRefs []gatewayv1.LocalPolicyTargetReferenceWithSectionName `json:"targetRefs"`
	// Limit is the simple form: Requests per Unit, with a burst of
	// Requests (a bucket of Requests tokens refilled every Unit).
	// Exactly one of Limit and Bucket is set.
	Limit *RateLimit `json:"limit,omitempty"`
	// Bucket is the explicit token bucket.
	Bucket *TokenBucket `json:"bucket,omitempty"`
}

// RateLimitUnit is the period of a simple limit.
type RateLimitUnit string

// Units of RateLimit.
const (
	RateLimitUnitSecond RateLimitUnit = "Second"
	RateLimitUnitMinute RateLimitUnit = "Minute"
	RateLimitUnitHour   RateLimitUnit = "Hour"
)

// RateLimit is Requests per Unit.
type RateLimit struct {
	Requests int32         `json:"requests"`
	Unit     RateLimitUnit `json:"unit"`
}

// TokenBucket starts full with MaxTokens and gains TokensPerFill every
// FillInterval, up to MaxTokens; each request takes one token.
type TokenBucket struct {
	MaxTokens     int32              `json:"maxTokens"`
	TokensPerFill int32              `json:"tokensPerFill"`
	FillInterval  gatewayv1.Duration `json:"fillInterval"`
}

// LocalRateLimitPolicyList is a list of LocalRateLimitPolicy.
type LocalRateLimitPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LocalRateLimitPolicy `json:"items"`
}
