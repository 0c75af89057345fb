package app

import (
	"bytes"
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
)

// TestManifestEnv: the ztunnel DaemonSet of manifests/ztunnel runs with the
// settings the proxy's performance figures were measured with: two worker
// threads and the runtime setting of proxyadmin.GODEBUG.
func TestManifestEnv(t *testing.T) {
	b, err := os.ReadFile("../../../manifests/ztunnel/ztunnel.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var d appsv1.DaemonSet
		if err := yaml.Unmarshal(doc, &d); err != nil {
			t.Fatalf("decode a document of ztunnel.yaml: %v", err)
		}
		if d.Kind == "DaemonSet" && d.Name == "ztunnel" {
			ds = &d
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet ztunnel in manifests/ztunnel/ztunnel.yaml")
	}
	env := map[string]string{}
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	for name, want := range map[string]string{"GODEBUG": proxyadmin.GODEBUG, "ZTUNNEL_WORKER_THREADS": "2"} {
		if env[name] != want {
			t.Errorf("env %s = %q, want %q", name, env[name], want)
		}
	}
}
