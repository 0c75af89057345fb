package controller

import (
	"testing"

	"go.uber.org/zap"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestMeshState: the ConfigMap's mesh config is used while it is good; a bad
// version keeps the last good one and is diagnosed with the field; without
// a previous good one, or once the ConfigMap is gone, the fallback is used.
func TestMeshState(t *testing.T) {
	fallback := &meshv1alpha1.MeshConfig{ExtensionProviders: []*meshv1alpha1.MeshConfig_ExtensionProvider{{Name: "from-file"}}}
	cm := func(rv, mesh string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istio", UID: "u", ResourceVersion: rv},
			Data: map[string]string{"mesh": mesh}}
	}
	provider := func(mc *meshv1alpha1.MeshConfig) string {
		if len(mc.GetExtensionProviders()) == 0 {
			return ""
		}
		return mc.GetExtensionProviders()[0].GetName()
	}
	const good = "extensionProviders: [{name: otel, opentelemetry: {service: c, port: 4317}}]"
	const bad = "extensionProviders: [{name: otel, opentelemetry: {service: c, port: 0}}]"
	var m meshState
	log := zap.NewNop()
	steps := []struct {
		name      string
		cm        *corev1.ConfigMap
		want      string // provider name of the config in use
		wantField string // field of the one diagnostic; "" none
	}{
		{"bad from the start: fallback", cm("1", bad), "from-file", "data.mesh.extensionProviders[0].opentelemetry.port"},
		{"good", cm("2", good), "otel", ""},
		{"same version again", cm("2", good), "otel", ""},
		{"bad edit keeps the last good", cm("3", bad), "otel", "data.mesh.extensionProviders[0].opentelemetry.port"},
		{"not yaml keeps the last good", cm("4", "extensionProviders: ["), "otel", "data.mesh"},
		{"key missing keeps the last good", &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{UID: "u", ResourceVersion: "5"}}, "otel", "data.mesh"},
		{"deleted: fallback", nil, "from-file", ""},
	}
	for _, s := range steps {
		got := m.load(s.cm, fallback, log)
		if provider(got) != s.want {
			t.Errorf("%s: provider in use %q, want %q", s.name, provider(got), s.want)
		}
		d := m.diagnostics()
		switch {
		case s.wantField == "" && len(d) != 0:
			t.Errorf("%s: diagnostics %v, want none", s.name, d)
		case s.wantField != "" && (len(d) != 1 || d[0].Field != s.wantField || d[0].Kind != "ConfigMap"):
			t.Errorf("%s: diagnostics %v, want one on the ConfigMap at %s", s.name, d, s.wantField)
		}
	}
}

// TestFingerprintCoversMeshConfigAndTelemetry: a mesh config or Telemetry
// change forces a full translation (waypoint Telemetry depends on them).
func TestFingerprintCoversMeshConfigAndTelemetry(t *testing.T) {
	s := incSnapshot()
	base := envFingerprint(s)
	s.Mesh.Istio = &meshv1alpha1.MeshConfig{DefaultProviders: &meshv1alpha1.MeshConfig_DefaultProviders{Tracing: []string{"otel"}}}
	withMesh := envFingerprint(s)
	if withMesh == base {
		t.Error("mesh config does not change the fingerprint")
	}
	s.Mesh.Istio = &meshv1alpha1.MeshConfig{DefaultProviders: &meshv1alpha1.MeshConfig_DefaultProviders{Tracing: []string{"otel"}}}
	if envFingerprint(s) != withMesh {
		t.Error("an equal mesh config changes the fingerprint")
	}
	s.Telemetries = []*telemetryv1.Telemetry{{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "t", ResourceVersion: "1"}}}
	if envFingerprint(s) == withMesh {
		t.Error("a Telemetry does not change the fingerprint")
	}
}
