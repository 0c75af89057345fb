package model

import (
	"fmt"
	"slices"
	"strings"

	telemetryapi "istio.io/api/telemetry/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// builtinAccessLogProvider is the provider name Istio defines without an
// extensionProviders entry: Envoy's file access log to /dev/stdout.
const builtinAccessLogProvider = "envoy"

// stdout is the only access-log destination of a waypoint.
const stdout = "/dev/stdout"

// checkMeshAccessLog reports what a waypoint does not honour in the mesh
// config's access-log settings: a destination other than stdout, a log
// format, a default provider that does not exist or is not a file log.
func (c *telemetryCompiler) checkMeshAccessLog() {
	mesh := c.meshDiag
	if f := c.s.Mesh.Istio.GetAccessLogFile(); f != "" && f != stdout {
		mesh("accessLogFile", "UnsupportedValue", fmt.Sprintf("waypoints write their access log to their stdout, not to %q (it is on)", f))
	}
	for i, p := range c.s.Mesh.Istio.GetExtensionProviders() {
		fl := p.GetEnvoyFileAccessLog()
		if fl == nil {
			continue
		}
		f := "extensionProviders[" + itoa(i) + "].envoyFileAccessLog"
		if path := fl.GetPath(); path != "" && path != stdout {
			mesh(f+".path", "UnsupportedValue", fmt.Sprintf("waypoints write their access log to their stdout, not to %q", path))
		}
		if fl.GetLogFormat() != nil {
			mesh(f+".logFormat", "UnsupportedValue", "waypoints write their access log as JSON lines with their own fields; the format is ignored")
		}
	}
	for i, name := range c.s.Mesh.Istio.GetDefaultProviders().GetAccessLogging() {
		f := "defaultProviders.accessLogging[" + itoa(i) + "]"
		if why := c.accessLogProviderProblem(name); why != "" {
			mesh(f, c.providerReason(name), why)
		}
	}
}

// checkAccessLogging reports the problems of a Telemetry's accessLogging
// entries that do not depend on which waypoint it applies to.
func (c *telemetryCompiler) checkAccessLogging(t *telemetryv1.Telemetry) {
	for i, al := range t.Spec.GetAccessLogging() {
		f := "spec.accessLogging[" + itoa(i) + "]"
		for j, p := range al.GetProviders() {
			if why := c.accessLogProviderProblem(p.GetName()); why != "" {
				c.diag(t, f+".providers["+itoa(j)+"].name", c.providerReason(p.GetName()), why)
			}
		}
		if al.GetFilter().GetExpression() != "" {
			c.diag(t, f+".filter.expression", "UnsupportedValue", "access-log filter expressions are not supported by the waypoint; it logs every request where this entry applies")
		}
	}
}

// providerReason is the reason of a diagnostic about provider name:
// ProviderNotFound when the mesh config has no such provider.
func (c *telemetryCompiler) providerReason(name string) string {
	if c.providers[strings.ToLower(name)] == nil {
		return "ProviderNotFound"
	}
	return "UnsupportedValue"
}

// isFileAccessLog tells whether the provider name is one a waypoint logs
// with: an envoyFileAccessLog extensionProvider, or Istio's built-in
// "envoy".
func (c *telemetryCompiler) isFileAccessLog(name string) bool {
	if p := c.providers[strings.ToLower(name)]; p != nil {
		return p.GetEnvoyFileAccessLog() != nil
	}
	return strings.EqualFold(name, builtinAccessLogProvider)
}

// accessLogProviderProblem is "" for a provider a waypoint logs with, else
// why it does not.
func (c *telemetryCompiler) accessLogProviderProblem(name string) string {
	switch {
	case c.isFileAccessLog(name):
		return ""
	case c.providers[strings.ToLower(name)] == nil:
		return fmt.Sprintf("no extensionProvider %q in the mesh config (ConfigMap %s/%s, key mesh); it does not log", name, c.s.Mesh.RootNamespace, meshConfigMapName)
	}
	return fmt.Sprintf("extensionProvider %q is not an envoyFileAccessLog provider; the waypoint writes its access log to stdout only, so this provider does not log", name)
}

// accessLogging merges the accessLogging entries of layers (least specific
// first) as istiod does for a waypoint's inbound (SERVER) side:
//
//   - the starting providers are the mesh config's
//     defaultProviders.accessLogging, or, without them, the built-in
//     "envoy" when accessLogFile is set (Istio's legacy mesh-wide switch);
//   - each entry that applies (match.mode not CLIENT) replaces the
//     providers when it names some and sets disabled when it says so;
//   - the waypoint logs when the result is not disabled and one of its
//     providers is a file access log (envoyFileAccessLog or "envoy").
//
// So, as in Istio, a mesh with neither accessLogFile nor default providers
// nor a Telemetry that enables them has no waypoint access log.
func (c *telemetryCompiler) accessLogging(layers []*telemetryv1.Telemetry) *waypointv1alpha1.AccessLogging {
	providers := c.s.Mesh.Istio.GetDefaultProviders().GetAccessLogging()
	if len(providers) == 0 && c.s.Mesh.Istio.GetAccessLogFile() != "" {
		providers = []string{builtinAccessLogProvider}
	}
	disabled := false
	for _, t := range layers {
		for _, al := range t.Spec.GetAccessLogging() {
			if al.GetMatch().GetMode() == telemetryapi.WorkloadMode_CLIENT {
				continue // a waypoint logs as a server
			}
			if ps := al.GetProviders(); len(ps) > 0 {
				providers = providers[:0:0]
				for _, p := range ps {
					providers = append(providers, p.GetName())
				}
			}
			if v := al.GetDisabled(); v != nil {
				disabled = v.GetValue()
			}
		}
	}
	return &waypointv1alpha1.AccessLogging{Enabled: !disabled && slices.ContainsFunc(providers, c.isFileAccessLog)}
}
