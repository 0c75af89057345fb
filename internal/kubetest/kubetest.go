// Package kubetest starts controller-runtime's envtest on a real
// kube-apiserver (the one hack/build-k8s.sh builds) and Debian's etcd, for the
// control-plane tests (tier 4 in DESIGN.md §8). Only istiod-lite packages and
// their tests import it.
package kubetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/ambient-mesh/mesh/internal/testenv"
)

// Options tune an environment; the zero value is a bare apiserver.
type Options struct {
	// CRDDirectoryPaths are loaded before the test starts (files or folders of
	// CustomResourceDefinitions).
	CRDDirectoryPaths []string
}

// Env is a running envtest control plane.
type Env struct {
	Config *rest.Config
	env    *envtest.Environment
}

// Start starts kube-apiserver and etcd for t and stops them at cleanup. When
// the binaries are missing it stops t (skip outside CI, failure in CI) with a
// message that says how to build them.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	apiserver, etcd, err := Binaries()
	if err != nil {
		testenv.Unavailable(t, "envtest: %v", err)
	}
	t.Setenv("TEST_ASSET_KUBE_APISERVER", apiserver)
	t.Setenv("TEST_ASSET_ETCD", etcd)
	env := &envtest.Environment{
		CRDDirectoryPaths:     opts.CRDDirectoryPaths,
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("envtest: start kube-apiserver %s and etcd %s: %v", apiserver, etcd, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("envtest: stop: %v", err)
		}
	})
	return &Env{Config: cfg, env: env}
}

// Binaries locates kube-apiserver (built by hack/build-k8s.sh into the cache,
// or KUBEBUILDER_ASSETS) and etcd (Debian's etcd-server, or KUBEBUILDER_ASSETS).
func Binaries() (apiserver, etcd string, err error) {
	var dirs []string
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		dirs = append(dirs, d)
	}
	if d, derr := BinDir(); derr == nil {
		dirs = append(dirs, d)
	}
	apiserver = find("kube-apiserver", dirs)
	etcd = find("etcd", append(dirs, "/usr/bin"))
	if apiserver == "" {
		return "", "", fmt.Errorf("kube-apiserver not found in %v: run `hack/build-k8s.sh` (or `make build-k8s`)", dirs)
	}
	if etcd == "" {
		return "", "", fmt.Errorf("etcd not found: install Debian's etcd-server (`hack/install-deps.sh`)")
	}
	return apiserver, etcd, nil
}

// BinDir is where hack/build-k8s.sh puts the pinned Kubernetes binaries
// (kube-apiserver, kubelet, kubectl, ...).
func BinDir() (string, error) {
	cache := os.Getenv("MESH_CACHE")
	if cache == "" {
		cache = "/var/cache/ambient-mesh"
	}
	ver, err := k8sVersion()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "k8s", ver, "bin"), nil
}

func find(name string, dirs []string) string {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil && name == "etcd" {
		return p
	}
	return ""
}

// k8sVersion reads the Kubernetes pin from hack/tools/k8s/go.mod.
func k8sVersion() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, "hack/tools/k8s/go.mod"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("no k8s.io/kubernetes pin in hack/tools/k8s/go.mod")
}

// RepoRoot walks up from the working directory to the directory with go.mod
// of the main module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/ambient-mesh/mesh\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("repository root (go.mod of github.com/ambient-mesh/mesh) not found above the working directory")
		}
		dir = parent
	}
}
