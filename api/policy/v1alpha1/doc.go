// Package v1alpha1 holds the mesh's own policy-attachment API, group
// policy.ambient-mesh.io, version v1alpha1: LocalRateLimitPolicy, a local
// (per waypoint replica) token-bucket rate limit attached to a Service or an
// HTTPRoute with Gateway API policy attachment (GEP-713): spec.targetRefs,
// status.ancestors with the Accepted condition.
//
// The CustomResourceDefinition is written by hand beside the types
// (policy.ambient-mesh.io_localratelimitpolicies.yaml) and copied into
// manifests/crds by hack/generate.d/crds.sh; the deep-copy methods are
// hand-written too (deepcopy.go). Keep the three in step when a field
// changes. Imported by istiod-lite (pkg/model, pkg/controller,
// pkg/routestatus, pkg/istiod) and their tests.
package v1alpha1
