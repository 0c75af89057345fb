// Package e2e holds the end-to-end tests (tier 5 of DESIGN.md §8): they run
// against the local cluster (`make cluster-up`) with kubectl, the way a user
// would, and assert on what arrives. Outside CI they skip when the cluster is
// not up; under CI=true that is a failure.
package e2e
