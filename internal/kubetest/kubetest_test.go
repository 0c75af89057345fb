package kubetest

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestStart proves the helper runs a real apiserver: objects round-trip and
// the server reports the pinned version.
func TestStart(t *testing.T) {
	env := Start(t, Options{})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	want, err := k8sVersion()
	if err != nil {
		t.Fatal(err)
	}
	if ver.GitVersion != want {
		t.Errorf("apiserver version = %q, want the pin %q", ver.GitVersion, want)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubetest"}}
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	got, err := cs.CoreV1().Namespaces().Get(t.Context(), "kubetest", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get namespace: %v", err)
	}
	if got.UID == "" {
		t.Errorf("namespace has no uid: the apiserver did not persist it")
	}
}
