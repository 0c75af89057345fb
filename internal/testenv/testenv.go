// Package testenv decides whether a test that needs privilege (root, network
// namespaces) or the local cluster may run here. Tests across the repository
// import it; it imports nothing of the project.
//
// The rule (DESIGN.md §8): such a test skips only outside CI. When CI=true a
// missing prerequisite is a test failure, so a CI run can never pass by
// skipping the tests that matter.
package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true, as .ci/run sets it).
func InCI() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// Unavailable skips t outside CI and fails it in CI, giving the reason.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and a prerequisite is missing (a skip would hide this test): "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot stops t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (network namespaces, nftables); run as root")
	}
}

// ClusterDir is where hack/cluster keeps the local cluster's state.
func ClusterDir() string {
	if d := os.Getenv("CLUSTER_DIR"); d != "" {
		return d
	}
	return "/var/lib/ambient-mesh/cluster"
}

// Kubeconfig returns the admin kubeconfig of the local cluster, stopping t when
// the cluster is not up (run `make cluster-up`).
func Kubeconfig(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	p := os.Getenv("KUBECONFIG")
	if p == "" {
		p = filepath.Join(ClusterDir(), "admin.kubeconfig")
	}
	if _, err := os.Stat(p); err != nil {
		Unavailable(t, "local cluster not up (no kubeconfig at %s): run `make cluster-up`", p)
	}
	return p
}
