package model

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	telemetryapi "istio.io/api/telemetry/v1alpha1"
	typev1beta1 "istio.io/api/type/v1beta1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// TelemetryTypeURL is the type of a waypoint's telemetry configuration
// (tracing, access log, metric overrides), one resource per
// istio-waypoint Gateway, named "<namespace>/<name>".
const TelemetryTypeURL = "type.googleapis.com/ambientmesh.waypoint.v1alpha1.Telemetry"

// KindTelemetry is the kind of Istio's telemetry.istio.io Telemetry.
const KindTelemetry = "Telemetry"

// DefaultTraceSamplingPercent is the sampling percentage when neither a
// Telemetry's randomSamplingPercentage nor the mesh config's
// defaultConfig.tracing.sampling sets one: istiod's PILOT_TRACE_SAMPLING
// default (pilot/pkg/features/telemetry.go).
const DefaultTraceSamplingPercent = 1.0

// Where diagnostics about the mesh config point: Istio's ConfigMap, in the
// root namespace (istiod-lite's own).
const (
	meshConfigMapKind = "ConfigMap"
	meshConfigMapName = "istio"
)

// tracingSpec is Istio's TracingSpec (pilot/pkg/model/telemetry.go) for the
// server side, the one a waypoint's inbound listener uses.
type tracingSpec struct {
	provider *meshv1alpha1.MeshConfig_ExtensionProvider // nil: none or not found
	// chosenBy names where the provider was chosen, for diagnostics.
	chosenBy Diagnostic
	disabled bool
	sampling *float64
	tags     map[string]*telemetryapi.Tracing_CustomTag
}

// telemetryCompiler holds the per-translation state of compileTelemetry.
type telemetryCompiler struct {
	s         Snapshot
	idx       *index
	providers map[string]*meshv1alpha1.MeshConfig_ExtensionProvider // lower-cased name -> first provider of that name
	diags     []Diagnostic
}

// compileTelemetry compiles one Telemetry resource per istio-waypoint
// Gateway (usable or not) from the mesh config's extensionProviders and
// defaultProviders.tracing and the Telemetry resources that apply to it, as
// istiod's Telemetries.Tracing does for a waypoint (its inbound listener,
// so the SERVER spec; match.mode CLIENT entries do not apply):
//
//  1. the mesh-wide Telemetry: the oldest one in the root namespace with no
//     selector and no targetRefs;
//  2. the namespace-wide one: the oldest such Telemetry in the waypoint's
//     namespace;
//  3. Telemetries of the root namespace with a targetRef to the GatewayClass
//     istio-waypoint (every waypoint), oldest first;
//  4. Telemetries of the waypoint's namespace with a targetRef to its
//     Gateway, oldest first.
//
// Each tracing entry, in that order, overrides the fields it sets: the
// provider (the first of providers, looked up case-insensitively; an
// unknown name leaves none), disableSpanReporting, customTags (as a whole)
// and randomSamplingPercentage. Without any entry and without
// defaultProviders.tracing the waypoint gets no tracing; without a provider
// (or with one that is not opentelemetry) neither. Unset sampling is the
// mesh config's defaultConfig.tracing.sampling, else
// DefaultTraceSamplingPercent. Selector-based Telemetries never apply to
// waypoints (istiod's policy matcher), nor do targetRefs to Services (the
// resource is per waypoint, not per Service): both are diagnosed. The same
// layers give the access log (accessLogging) and the metric overrides
// (metricOverrides).
func compileTelemetry(s Snapshot, idx *index) (map[string]*waypointv1alpha1.Telemetry, []Diagnostic) {
	c := &telemetryCompiler{s: s, idx: idx, providers: map[string]*meshv1alpha1.MeshConfig_ExtensionProvider{}}
	for _, p := range s.Mesh.Istio.GetExtensionProviders() {
		k := strings.ToLower(p.GetName())
		if _, dup := c.providers[k]; !dup {
			c.providers[k] = p
		}
	}
	tels := slices.Clone(s.Telemetries)
	slices.SortFunc(tels, func(a, b *telemetryv1.Telemetry) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Namespace, b.Namespace))
	})

	root := s.Mesh.RootNamespace
	if d := s.Mesh.Istio.GetDefaultProviders().GetTracing(); len(d) > 0 && c.providers[strings.ToLower(d[0])] == nil {
		c.meshDiag("defaultProviders.tracing[0]", "ProviderNotFound",
			fmt.Sprintf("no extensionProvider %q in the mesh config; waypoints without a Telemetry choosing a provider do not trace", d[0]))
	}
	nsWide := map[string]*telemetryv1.Telemetry{}      // namespace -> its oldest namespace-wide Telemetry
	byGateway := map[string][]*telemetryv1.Telemetry{} // "ns/name" of a waypoint -> Telemetries targeting it, oldest first
	var byClass []*telemetryv1.Telemetry               // root Telemetries targeting GatewayClass istio-waypoint
	c.checkMeshAccessLog()
	for _, t := range tels {
		c.checkTracing(t)
		c.checkAccessLogging(t)
		c.checkMetrics(t)
		refs := targetRefsOf(&t.Spec)
		if len(refs) == 0 && len(t.Spec.GetSelector().GetMatchLabels()) == 0 {
			if first, ok := nsWide[t.Namespace]; ok {
				c.diag(t, "spec", "Conflicted", fmt.Sprintf("Telemetry %s is the namespace's oldest Telemetry without selector or targetRefs and is the one applied (as in Istio); this one is ignored", first.Name))
				continue
			}
			nsWide[t.Namespace] = t
			continue
		}
		if len(refs) == 0 {
			if gw := t.Spec.GetSelector().GetMatchLabels()[LabelGatewayName]; gw != "" && idx.waypointGateways[t.Namespace+"/"+gw] != nil {
				c.diag(t, "spec.selector", "UnsupportedValue", fmt.Sprintf("waypoints ignore selector-based Telemetry (as in Istio); use targetRefs to Gateway %s (group gateway.networking.k8s.io)", gw))
			}
			continue
		}
		for i, ref := range refs {
			f := "spec.targetRefs[" + itoa(i) + "]"
			if t.Spec.GetTargetRef() != nil && len(t.Spec.GetTargetRefs()) == 0 {
				f = "spec.targetRef"
			}
			switch {
			case ref.GetNamespace() != "" && ref.GetNamespace() != t.Namespace:
				c.diag(t, f+".namespace", "UnsupportedValue", "a targetRef must be in the Telemetry's namespace; ignored")
			case ref.GetGroup() == "gateway.networking.k8s.io" && ref.GetKind() == "Gateway":
				key := t.Namespace + "/" + ref.GetName()
				if idx.waypointGateways[key] == nil {
					c.diag(t, f, "TargetNotFound", fmt.Sprintf("waypoint Gateway %s not found (gatewayClassName %s)", key, WaypointGatewayClassName))
					continue
				}
				if !slices.Contains(byGateway[key], t) {
					byGateway[key] = append(byGateway[key], t)
				}
			case ref.GetGroup() == "gateway.networking.k8s.io" && ref.GetKind() == "GatewayClass" && ref.GetName() == WaypointGatewayClassName && t.Namespace == root:
				if !slices.Contains(byClass, t) {
					byClass = append(byClass, t)
				}
			case (ref.GetGroup() == "" || ref.GetGroup() == "core") && ref.GetKind() == "Service":
				c.diag(t, f, "UnsupportedValue", "Telemetry for a Service through its waypoint is not supported (a waypoint's tracing, access log and metrics are configured per waypoint); target the waypoint Gateway instead")
			default:
				c.diag(t, f, "UnsupportedValue", fmt.Sprintf("target %s %q in group %q is not supported; use a waypoint Gateway (or GatewayClass %s from %s)",
					ref.GetKind(), ref.GetName(), ref.GetGroup(), WaypointGatewayClassName, root))
			}
		}
	}

	out := make(map[string]*waypointv1alpha1.Telemetry, len(idx.waypointGateways))
	for _, key := range slices.Sorted(maps.Keys(idx.waypointGateways)) {
		wp := idx.waypointGateways[key]
		var layers []*telemetryv1.Telemetry
		if t := nsWide[root]; t != nil {
			layers = append(layers, t)
		}
		if t := nsWide[wp.namespace]; t != nil && wp.namespace != root {
			layers = append(layers, t)
		}
		layers = append(layers, byClass...)
		layers = append(layers, byGateway[key]...)
		out[key] = &waypointv1alpha1.Telemetry{Namespace: wp.namespace, Name: wp.name, Tracing: c.tracing(layers), AccessLogging: c.accessLogging(layers),
			MetricOverrides: c.metricOverrides(layers)}
	}
	return out, c.diags
}

func (c *telemetryCompiler) diag(t *telemetryv1.Telemetry, field, reason, msg string) {
	c.diags = append(c.diags, Diagnostic{Kind: KindTelemetry, Namespace: t.Namespace, Name: t.Name, Field: field, Reason: reason, Message: msg})
}

// meshDiag reports a problem of the mesh config at field (under its key
// "mesh") on Istio's ConfigMap.
func (c *telemetryCompiler) meshDiag(field, reason, msg string) {
	c.diags = append(c.diags, Diagnostic{Kind: meshConfigMapKind, Namespace: c.s.Mesh.RootNamespace, Name: meshConfigMapName,
		Field: "data.mesh." + field, Reason: reason, Message: msg})
}

// targetRefsOf returns targetRefs, or the deprecated targetRef.
func targetRefsOf(spec *telemetryapi.Telemetry) []*typev1beta1.PolicyTargetReference {
	if refs := spec.GetTargetRefs(); len(refs) > 0 {
		return refs
	}
	if r := spec.GetTargetRef(); r != nil {
		return []*typev1beta1.PolicyTargetReference{r}
	}
	return nil
}

// checkTracing reports the problems of a Telemetry's tracing entries that do
// not depend on which waypoint it applies to.
func (c *telemetryCompiler) checkTracing(t *telemetryv1.Telemetry) {
	for i, tr := range t.Spec.GetTracing() {
		f := "spec.tracing[" + itoa(i) + "]"
		for j, p := range tr.GetProviders() {
			pf := f + ".providers[" + itoa(j) + "].name"
			if j > 0 {
				c.diag(t, pf, "UnsupportedValue", "only the first provider is used (as in Istio); this one is ignored")
				continue
			}
			if c.providers[strings.ToLower(p.GetName())] == nil {
				c.diag(t, pf, "ProviderNotFound", fmt.Sprintf("no extensionProvider %q in the mesh config (ConfigMap %s/%s, key mesh); tracing is off where this entry applies",
					p.GetName(), c.s.Mesh.RootNamespace, meshConfigMapName))
			}
		}
		for _, name := range slices.Sorted(maps.Keys(tr.GetCustomTags())) {
			if tr.GetCustomTags()[name].GetFormatter() != nil {
				c.diag(t, f+".customTags."+name+".formatter", "UnsupportedValue", "formatter tags are not supported by the waypoint; the tag is not added")
			}
		}
		if tr.GetDisableContextPropagation().GetValue() {
			c.diag(t, f+".disableContextPropagation", "UnsupportedValue", "the waypoint always propagates trace context; ignored")
		}
	}
}

// tracing merges the tracing entries of layers (least specific first) into
// the waypoint's tracing; nil means no tracing.
func (c *telemetryCompiler) tracing(layers []*telemetryv1.Telemetry) *waypointv1alpha1.Tracing {
	spec := tracingSpec{}
	defaults := c.s.Mesh.Istio.GetDefaultProviders().GetTracing()
	if len(defaults) > 0 {
		spec.provider = c.providers[strings.ToLower(defaults[0])]
		spec.chosenBy = Diagnostic{Kind: meshConfigMapKind, Namespace: c.s.Mesh.RootNamespace, Name: meshConfigMapName, Field: "data.mesh.defaultProviders.tracing[0]"}
	}
	entries := 0
	for _, t := range layers {
		for i, tr := range t.Spec.GetTracing() {
			if tr.GetMatch().GetMode() == telemetryapi.WorkloadMode_CLIENT {
				continue // a waypoint traces as a server
			}
			entries++
			f := "spec.tracing[" + itoa(i) + "]"
			if ps := tr.GetProviders(); len(ps) > 0 {
				spec.provider = c.providers[strings.ToLower(ps[0].GetName())]
				spec.chosenBy = Diagnostic{Kind: KindTelemetry, Namespace: t.Namespace, Name: t.Name, Field: f + ".providers[0].name"}
			}
			if v := tr.GetDisableSpanReporting(); v != nil {
				spec.disabled = v.GetValue()
			}
			if tr.GetCustomTags() != nil {
				spec.tags = tr.GetCustomTags()
			}
			if v := tr.GetRandomSamplingPercentage(); v != nil {
				p := min(max(v.GetValue(), 0), 100)
				spec.sampling = &p
			}
		}
	}
	if entries == 0 && len(defaults) == 0 {
		return nil
	}
	if spec.provider == nil {
		return nil // unknown provider (diagnosed) or none chosen: istiod disables tracing
	}
	otel := spec.provider.GetOpentelemetry()
	if otel == nil {
		d := spec.chosenBy
		d.Reason = "UnsupportedValue"
		d.Message = fmt.Sprintf("extensionProvider %q is not an opentelemetry provider; the waypoint exports spans over OTLP only, so it does not trace", spec.provider.GetName())
		c.diags = append(c.diags, d)
		return nil
	}
	out := &waypointv1alpha1.Tracing{
		Provider:                 otelProvider(spec.provider.GetName(), otel),
		RandomSamplingPercentage: c.defaultSampling(),
		Disabled:                 spec.disabled,
	}
	if spec.sampling != nil {
		out.RandomSamplingPercentage = *spec.sampling
	}
	for _, name := range slices.Sorted(maps.Keys(spec.tags)) {
		if tag := customTag(name, spec.tags[name]); tag != nil {
			out.CustomTags = append(out.CustomTags, tag)
		}
	}
	return out
}

// defaultSampling is istiod's proxyConfigSamplingValue: the mesh config's
// defaultConfig.tracing.sampling when set (non-zero, at most 100), else
// PILOT_TRACE_SAMPLING's default.
func (c *telemetryCompiler) defaultSampling() float64 {
	if v := c.s.Mesh.Istio.GetDefaultConfig().GetTracing().GetSampling(); v > 0 && v <= 100 {
		return v
	}
	return DefaultTraceSamplingPercent
}

// customTag converts a Telemetry custom tag; nil for formatter tags (the
// waypoint has no formatter; diagnosed by checkTracing).
func customTag(name string, t *telemetryapi.Tracing_CustomTag) *waypointv1alpha1.CustomTag {
	switch {
	case t.GetLiteral() != nil:
		return &waypointv1alpha1.CustomTag{Name: name, Type: &waypointv1alpha1.CustomTag_Literal{Literal: t.GetLiteral().GetValue()}}
	case t.GetEnvironment() != nil:
		return &waypointv1alpha1.CustomTag{Name: name, Type: &waypointv1alpha1.CustomTag_Environment{Environment: t.GetEnvironment().GetName()},
			DefaultValue: t.GetEnvironment().GetDefaultValue()}
	case t.GetHeader() != nil:
		return &waypointv1alpha1.CustomTag{Name: name, Type: &waypointv1alpha1.CustomTag_Header{Header: t.GetHeader().GetName()},
			DefaultValue: t.GetHeader().GetDefaultValue()}
	}
	return nil
}

// otelProvider converts an extensionProviders[].opentelemetry entry. Header
// envNames were resolved by pkg/meshconfig; any left are dropped.
func otelProvider(name string, p *meshv1alpha1.MeshConfig_ExtensionProvider_OpenTelemetryTracingProvider) *waypointv1alpha1.OpenTelemetryProvider {
	out := &waypointv1alpha1.OpenTelemetryProvider{Name: name, Service: p.GetService(), Port: p.GetPort()}
	timeout := func(d *durationpb.Duration) *durationpb.Duration {
		if d == nil {
			return nil
		}
		return proto.Clone(d).(*durationpb.Duration)
	}
	headers := func(hs []*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader) []*waypointv1alpha1.Header {
		var out []*waypointv1alpha1.Header
		for _, h := range hs {
			if v, ok := h.GetHeaderValue().(*meshv1alpha1.MeshConfig_ExtensionProvider_HttpHeader_Value); ok {
				out = append(out, &waypointv1alpha1.Header{Name: h.GetName(), Value: v.Value})
			}
		}
		return out
	}
	if h := p.GetHttp(); h != nil {
		out.Http = &waypointv1alpha1.OpenTelemetryHTTP{Path: h.GetPath(), Timeout: timeout(h.GetTimeout()), Headers: headers(h.GetHeaders())}
	} else if g := p.GetGrpc(); g != nil {
		out.Grpc = &waypointv1alpha1.OpenTelemetryGRPC{Timeout: timeout(g.GetTimeout()), InitialMetadata: headers(g.GetInitialMetadata())}
	}
	return out
}
