package controller

import (
	"fmt"
	"sync"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-mesh/mesh/pkg/meshconfig"
	"github.com/ambient-mesh/mesh/pkg/model"
)

// meshState is the mesh config read from the ConfigMap: the last one that
// parsed and validated, and the problems of the current one.
//
// Concurrency: mu guards every field; load runs from Snapshot (Reconcile,
// and tests or debug callers).
type meshState struct {
	mu      sync.Mutex
	version string                   // "<uid>/<resourceVersion>" of the ConfigMap last loaded; "" none
	good    *meshv1alpha1.MeshConfig // last good config from the ConfigMap; nil: none yet
	diags   []model.Diagnostic       // problems of the ConfigMap version last loaded
}

// load returns the mesh config to translate with, given the ConfigMap now
// (nil: absent) and the fallback (from the --mesh-config file, or nil). A
// ConfigMap that does not parse keeps the last good config from an earlier
// version, else the fallback.
func (m *meshState) load(cm *corev1.ConfigMap, fallback *meshv1alpha1.MeshConfig, log *zap.Logger) *meshv1alpha1.MeshConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cm == nil {
		if m.version != "" {
			log.Info("mesh config ConfigMap deleted; using the default mesh config")
		}
		m.version, m.good, m.diags = "", nil, nil
		return fallback
	}
	version := string(cm.UID) + "/" + cm.ResourceVersion
	if version == m.version {
		return m.current(fallback)
	}
	m.version, m.diags = version, nil
	diag := func(field, reason, msg string) {
		m.diags = append(m.diags, model.Diagnostic{Kind: "ConfigMap", Namespace: cm.Namespace, Name: cm.Name,
			Field: field, Reason: reason, Message: msg})
	}
	data, ok := cm.Data[meshconfig.ConfigMapKey]
	if !ok {
		diag("data."+meshconfig.ConfigMapKey, "InvalidValue", "no key "+meshconfig.ConfigMapKey+"; keeping the last good mesh config")
		return m.current(fallback)
	}
	mc, warnings, err := meshconfig.Parse(data, nil)
	if err != nil {
		field := "data." + meshconfig.ConfigMapKey
		msg := err.Error()
		if fe, ok := meshconfig.AsFieldError(err); ok {
			msg = fe.Message
			if fe.Field != "" {
				field += "." + fe.Field
			}
		}
		diag(field, "InvalidValue", msg+"; keeping the last good mesh config")
		return m.current(fallback)
	}
	for _, w := range warnings {
		diag("data."+meshconfig.ConfigMapKey, "UnknownField", w)
	}
	m.good = mc
	log.Info("mesh config loaded", zap.String("configmap", cm.Namespace+"/"+cm.Name), zap.String("resource_version", cm.ResourceVersion),
		zap.Int("extension_providers", len(mc.GetExtensionProviders())), zap.Strings("default_tracing_providers", mc.GetDefaultProviders().GetTracing()))
	return mc
}

func (m *meshState) current(fallback *meshv1alpha1.MeshConfig) *meshv1alpha1.MeshConfig {
	if m.good != nil {
		return m.good
	}
	return fallback
}

// diagnostics are the problems of the ConfigMap's current version.
func (m *meshState) diagnostics() []model.Diagnostic {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.diags
}

// meshFingerprint identifies a mesh config's content for envFingerprint.
func meshFingerprint(mc *meshv1alpha1.MeshConfig) string {
	if mc == nil {
		return ""
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(mc)
	if err != nil {
		return fmt.Sprintf("unmarshalable %p", mc) // cannot happen for a parsed config
	}
	return string(b)
}
