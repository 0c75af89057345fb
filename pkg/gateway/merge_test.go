package gateway

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestStrategicMergeEnv: a parameters patch that adds an env var keeps the
// generated env entries intact (encoding/json reuses slice elements, which
// once left a valueFrom in the entry the patch put in its place).
func TestStrategicMergeEnv(t *testing.T) {
	dep := &appsv1.Deployment{}
	dep.Spec.Template.Spec.Containers = []corev1.Container{{
		Name: containerName,
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "GATEWAY_NAME", Value: "waypoint"},
		},
	}}
	patch := `spec:
  template:
    spec:
      containers:
      - name: ` + containerName + `
        env:
        - {name: GOMAXPROCS, value: "1"}
        - {name: GATEWAY_NAME, value: other}
`
	if err := strategicMerge(dep, patch, &appsv1.Deployment{}); err != nil {
		t.Fatal(err)
	}
	got := map[string]corev1.EnvVar{}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Value != "" && e.ValueFrom != nil {
			t.Errorf("env %s has both value %q and valueFrom", e.Name, e.Value)
		}
		got[e.Name] = e
	}
	if len(got) != 3 || got["GOMAXPROCS"].Value != "1" || got["GATEWAY_NAME"].Value != "other" ||
		got["POD_NAME"].ValueFrom == nil || got["POD_NAME"].ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("merged env = %+v", dep.Spec.Template.Spec.Containers[0].Env)
	}
}
