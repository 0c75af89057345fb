package istiod

import (
	"bytes"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-mesh/mesh/pkg/meshconfig"
)

// TestManifestMeshConfig: the mesh config shipped in manifests/istiod parses,
// declares the sample collector as otel-tracing and leaves tracing off by
// default (a Telemetry turns it on).
func TestManifestMeshConfig(t *testing.T) {
	b, err := os.ReadFile("../../manifests/istiod/istiod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm *corev1.ConfigMap
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var c corev1.ConfigMap
		if err := yaml.Unmarshal(doc, &c); err != nil {
			t.Fatalf("decode a document of istiod.yaml: %v", err)
		}
		if c.Kind == "ConfigMap" && c.Name == meshconfig.ConfigMapName {
			cm = &c
		}
	}
	if cm == nil {
		t.Fatal("no ConfigMap istio in manifests/istiod/istiod.yaml")
	}
	mc, warnings, err := meshconfig.Parse(cm.Data[meshconfig.ConfigMapKey], nil)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("mesh config: %v %v", err, warnings)
	}
	if len(mc.GetDefaultProviders().GetTracing()) != 0 {
		t.Errorf("defaultProviders.tracing = %v, want none (tracing is enabled by a Telemetry)", mc.GetDefaultProviders().GetTracing())
	}
	ps := mc.GetExtensionProviders()
	if len(ps) != 1 || ps[0].GetName() != "otel-tracing" || ps[0].GetOpentelemetry().GetService() != "opentelemetry-collector.otel-collector.svc.cluster.local" ||
		ps[0].GetOpentelemetry().GetPort() != 4317 {
		t.Errorf("extensionProviders = %v, want otel-tracing -> opentelemetry-collector.otel-collector.svc.cluster.local:4317", ps)
	}
}
