package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	installOnce sync.Once
	installErr  error
)

// installMesh applies manifests/ (CRDs, istiod-lite, and the data plane as it
// lands) once per test binary and waits for the control plane to be ready.
func installMesh(t *testing.T, k *kubectl) {
	t.Helper()
	installOnce.Do(func() {
		root, err := filepath.Abs("../..")
		if err != nil {
			installErr = err
			return
		}
		if _, err := os.Stat(filepath.Join(root, "manifests/kustomization.yaml")); err != nil {
			installErr = err
			return
		}
		if _, err := k.run(t.Context(), "", "apply", "--server-side", "--force-conflicts", "-k", filepath.Join(root, "manifests")); err != nil {
			installErr = err
			return
		}
		if _, installErr = k.run(t.Context(), "", "-n", "istio-system", "rollout", "status", "deployment/istiod-lite", "--timeout=180s"); installErr != nil {
			return
		}
		// ztunnel turns ready once it has istiod-lite's xDS state.
		_, installErr = k.run(t.Context(), "", "-n", "istio-system", "rollout", "status", "daemonset/ztunnel", "--timeout=180s")
	})
	if installErr != nil {
		t.Fatalf("install the mesh from manifests/: %v", installErr)
	}
}

// TestControlPlane: istiod-lite installed by `kubectl apply -k manifests/`
// becomes ready, elects itself leader, creates the CA root once, and
// publishes it in every namespace, including one created afterwards.
func TestControlPlane(t *testing.T) {
	k := newKubectl(t)
	installMesh(t, k)
	ns := testNamespace(t, k, "cp", "istio.io/dataplane-mode=ambient")
	var root string
	eventually(t, 60*time.Second, "root published in a new namespace", func() error {
		out, err := k.run(t.Context(), "", "-n", ns, "get", "configmap", "istio-ca-root-cert", "-o", "jsonpath={.data.root-cert\\.pem}")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "BEGIN CERTIFICATE") {
			return errors.New("root-cert.pem has no certificate")
		}
		root = out
		return nil
	})
	// The same root is stored once in istio-system.
	secret := k.must("", "-n", "istio-system", "get", "secret", "istio-ca-secret", "-o", "jsonpath={.data.root-cert\\.pem}")
	if secret == "" {
		t.Fatalf("istio-ca-secret has no root-cert.pem")
	}
	kube := k.must("", "-n", "kube-system", "get", "configmap", "istio-ca-root-cert", "-o", "jsonpath={.data.root-cert\\.pem}")
	if kube != root {
		t.Errorf("root in kube-system differs from root in %s", ns)
	}
	lease := k.must("", "-n", "istio-system", "get", "lease", "istiod-lite-leader", "-o", "jsonpath={.spec.holderIdentity}")
	if !strings.HasPrefix(lease, "istiod-lite-") {
		t.Errorf("leader lease held by %q, want an istiod-lite pod", lease)
	}
}
