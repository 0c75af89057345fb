// Package meshconfig reads Istio's mesh config: the MeshConfig YAML that
// istiod reads from key "mesh" of the ConfigMap "istio" in its namespace (or
// from a file), into the upstream istio.io/api mesh/v1alpha1 type. It checks
// the parts istiod-lite uses (extensionProviders, defaultConfig.tracing) and
// names the offending field when they are wrong, so a bad edit can be
// reported and the last good config kept.
//
// Imported by istiod-lite only (pkg/controller, pkg/istiod); the data plane
// gets what it needs from the compiled xDS resources.
package meshconfig

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

// Where Istio keeps the mesh config (istio's pkg/config/constants and the
// istiod Helm chart): ConfigMap "istio", key "mesh", in istiod's namespace.
const (
	ConfigMapName = "istio"
	ConfigMapKey  = "mesh"
)

// FieldError is a mesh config that does not parse or holds a value
// istiod-lite cannot use. Field is a JSON path inside the MeshConfig, e.g.
// "extensionProviders[0].opentelemetry.port" ("" when the document itself
// does not parse).
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// unknownField finds the name in protojson's unknown-field error.
var unknownField = regexp.MustCompile(`unknown field "([^"]+)"`)

// Parse reads a MeshConfig from YAML (or JSON). As in istiod
// (protomarshal.ApplyYAML), unknown fields are ignored, each returned as a
// warning. lookupEnv resolves the envName of provider headers, which Istio
// reads from istiod's own environment (nil: os.LookupEnv); a header whose
// variable is unset is dropped with a warning. The error is a *FieldError.
func Parse(data string, lookupEnv func(string) (string, bool)) (*meshv1alpha1.MeshConfig, []string, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	js, err := yaml.YAMLToJSON([]byte(data))
	if err != nil {
		return nil, nil, &FieldError{Message: "not YAML: " + err.Error()}
	}
	if s := strings.TrimSpace(string(js)); s == "null" || s == "" {
		return &meshv1alpha1.MeshConfig{}, nil, nil // an empty document is the default config
	}
	var warnings []string
	mc := &meshv1alpha1.MeshConfig{}
	if err := protojson.Unmarshal(js, mc); err != nil {
		m := unknownField.FindStringSubmatch(err.Error())
		if m == nil {
			return nil, nil, &FieldError{Message: cleanProtoError(err)}
		}
		mc = &meshv1alpha1.MeshConfig{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, mc); err != nil {
			return nil, nil, &FieldError{Message: cleanProtoError(err)}
		}
		warnings = append(warnings, fmt.Sprintf("unknown field %q ignored (and any further unknown fields)", m[1]))
	}
	w, err := check(mc, lookupEnv)
	if err != nil {
		return nil, nil, err
	}
	return mc, append(warnings, w...), nil
}

// cleanProtoError drops protojson's "proto:" prefix and its unstable
// non-breaking space.
func cleanProtoError(err error) string {
	s := strings.ReplaceAll(err.Error(), "\u00a0", " ")
	return strings.TrimSpace(strings.TrimPrefix(s, "proto:"))
}

// check validates what istiod-lite reads (the rules of istio's
// ValidateMeshConfig for these fields) and resolves header envNames in
// place. Providers of kinds istiod-lite does not use are not checked.
func check(mc *meshv1alpha1.MeshConfig, lookupEnv func(string) (string, bool)) ([]string, error) {
	var warnings []string
	names := map[string]int{}
	for i, p := range mc.GetExtensionProviders() {
		f := fmt.Sprintf("extensionProviders[%d]", i)
		if p.GetName() == "" {
			return nil, &FieldError{f + ".name", "required"}
		}
		if j, dup := names[p.GetName()]; dup {
			return nil, &FieldError{f + ".name", fmt.Sprintf("%q is also the name of extensionProviders[%d]", p.GetName(), j)}
		}
		names[p.GetName()] = i
		otel := p.GetOpentelemetry()
		if otel == nil {
			continue
		}
		f += ".opentelemetry"
		if otel.GetService() == "" {
			return nil, &FieldError{f + ".service", "required: the collector's host, e.g. opentelemetry-collector.otel-collector.svc.cluster.local"}
		}
		if otel.GetPort() == 0 || otel.GetPort() > 65535 {
			return nil, &FieldError{f + ".port", fmt.Sprintf("port %d must be in 1..65535", otel.GetPort())}
		}
		if h := otel.GetHttp(); h != nil {
			if t := h.GetTimeout(); t != nil && (t.CheckValid() != nil || t.AsDuration() <= 0) {
				return nil, &FieldError{f + ".http.timeout", "must be a positive duration"}
			}
			hs, w, err := resolveHeaders(h.GetHeaders(), f+".http.headers", lookupEnv)
			if err != nil {
				return nil, err
			}
			h.Headers, warnings = hs, append(warnings, w...)
		}
		if g := otel.GetGrpc(); g != nil {
			if t := g.GetTimeout(); t != nil && (t.CheckValid() != nil || t.AsDuration() <= 0) {
				return nil, &FieldError{f + ".grpc.timeout", "must be a positive duration"}
			}
			hs, w, err := resolveHeaders(g.GetInitialMetadata(), f+".grpc.initialMetadata", lookupEnv)
			if err != nil {
				return nil, err
			}
			g.InitialMetadata, warnings = hs, append(warnings, w...)
		}
	}
	if s := mc.GetDefaultConfig().GetTracing().GetSampling(); s < 0 || s > 100 {
		return nil, &FieldError{"defaultConfig.tracing.sampling", fmt.Sprintf("%v is not a percentage (0.0 to 100.0)", s)}
	}
	return warnings, nil
}

// resolveHeaders replaces envName values by the variable's value.
func resolveHeaders(hs []*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader, field string, lookupEnv func(string) (string, bool)) ([]*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader, []string, error) {
	var out []*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader
	var warnings []string
	for i, h := range hs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if h.GetName() == "" {
			return nil, nil, &FieldError{f + ".name", "required"}
		}
		if env := h.GetEnvName(); env != "" {
			v, ok := lookupEnv(env)
			if !ok {
				warnings = append(warnings, fmt.Sprintf("%s.envName: %s is not set in istiod-lite's environment; header %q not sent", f, env, h.GetName()))
				continue
			}
			h = &meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader{Name: h.GetName(),
				HeaderValue: &meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader_Value{Value: v}}
		}
		out = append(out, h)
	}
	return out, warnings, nil
}

// ReadFile parses the mesh config in a file (the --mesh-config flag).
func ReadFile(path string) (*meshv1alpha1.MeshConfig, []string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read mesh config: %w", err)
	}
	mc, w, err := Parse(string(b), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("mesh config %s: %w", path, err)
	}
	return mc, w, nil
}

// AsFieldError returns err's *FieldError, if any.
func AsFieldError(err error) (*FieldError, bool) {
	var fe *FieldError
	ok := errors.As(err, &fe)
	return fe, ok
}
