package model

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	telemetryapi "istio.io/api/telemetry/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	proxytelemetry "github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// builtinMetricsProvider is Istio's built-in metrics provider, the
// default of defaultProviders.metrics.
const builtinMetricsProvider = "prometheus"

// waypointMetrics are the Istio metrics a waypoint records, by
// MetricSelector name: the names its overrides accept. ALL_METRICS stands
// for all of them; the others (sizes, gRPC messages) it does not record, so
// overrides of them change nothing.
var waypointMetrics = proxytelemetry.MetricNames

// metricState is one metric's merged overrides.
type metricState struct {
	disabled bool
	removed  map[string]bool
}

// isPrometheus tells whether the provider name is a Prometheus one (the
// built-in "prometheus" or an extensionProvider of that type).
func (c *telemetryCompiler) isPrometheus(name string) bool {
	if p := c.providers[strings.ToLower(name)]; p != nil {
		return p.GetPrometheus() != nil
	}
	return strings.EqualFold(name, builtinMetricsProvider)
}

// metricsApply tells whether a metrics entry configures the waypoint's
// Prometheus metrics: its providers, or the default ones, include one.
func (c *telemetryCompiler) metricsApply(m *telemetryapi.Metrics) bool {
	names := make([]string, 0, 1)
	for _, p := range m.GetProviders() {
		names = append(names, p.GetName())
	}
	if len(names) == 0 {
		names = c.s.Mesh.Istio.GetDefaultProviders().GetMetrics()
	}
	if len(names) == 0 {
		names = []string{builtinMetricsProvider}
	}
	return slices.ContainsFunc(names, c.isPrometheus)
}

// checkMetrics reports the parts of a Telemetry's metrics entries that a
// waypoint does not honour.
func (c *telemetryCompiler) checkMetrics(t *telemetryv1.Telemetry) {
	for i, m := range t.Spec.GetMetrics() {
		f := "spec.metrics[" + itoa(i) + "]"
		for j, p := range m.GetProviders() {
			if !c.isPrometheus(p.GetName()) {
				c.diag(t, f+".providers["+itoa(j)+"].name", c.providerReason(p.GetName()),
					fmt.Sprintf("provider %q is not a prometheus provider; waypoints expose their metrics to Prometheus only, so it is ignored", p.GetName()))
			}
		}
		if m.GetReportingInterval() != nil {
			c.diag(t, f+".reportingInterval", "UnsupportedValue", "waypoint metrics are scraped by Prometheus; reportingInterval is ignored")
		}
		for k, o := range m.GetOverrides() {
			of := f + ".overrides[" + itoa(k) + "]"
			if o.GetMatch().GetCustomMetric() != "" {
				c.diag(t, of+".match.customMetric", "UnsupportedValue", "waypoints record Istio's standard metrics only; this override is ignored")
			}
			for _, tag := range slices.Sorted(maps.Keys(o.GetTagOverrides())) {
				if o.GetTagOverrides()[tag].GetOperation() != telemetryapi.MetricsOverrides_TagOverride_REMOVE {
					c.diag(t, of+".tagOverrides."+tag, "UnsupportedValue", "waypoints support tagOverrides with operation REMOVE only (no CEL values); this tag is left as it is")
				}
			}
		}
	}
}

// metricOverrides merges the metrics entries of layers (least specific
// first) as istiod does for a waypoint's inbound side: entries whose
// providers (or the default ones) include a Prometheus provider apply,
// match.mode CLIENT ones do not; their overrides apply in order, each to
// its metric or to all (ALL_METRICS, an unset match), a later one's
// disabled and REMOVE/UPSERT of a tag replacing an earlier one's.
func (c *telemetryCompiler) metricOverrides(layers []*telemetryv1.Telemetry) []*waypointv1alpha1.MetricOverride {
	state := map[string]*metricState{}
	for _, t := range layers {
		for _, m := range t.Spec.GetMetrics() {
			if !c.metricsApply(m) {
				continue
			}
			for _, o := range m.GetOverrides() {
				sel := o.GetMatch()
				if sel.GetMode() == telemetryapi.WorkloadMode_CLIENT || sel.GetCustomMetric() != "" {
					continue
				}
				metrics := waypointMetrics
				if sel.GetMetric() != telemetryapi.MetricSelector_ALL_METRICS {
					name := sel.GetMetric().String()
					if !slices.Contains(waypointMetrics, name) {
						continue // one the waypoint does not record
					}
					metrics = []string{name}
				}
				for _, name := range metrics {
					st := state[name]
					if st == nil {
						st = &metricState{removed: map[string]bool{}}
						state[name] = st
					}
					if v := o.GetDisabled(); v != nil {
						st.disabled = v.GetValue()
					}
					for tag, to := range o.GetTagOverrides() {
						st.removed[tag] = to.GetOperation() == telemetryapi.MetricsOverrides_TagOverride_REMOVE
					}
				}
			}
		}
	}
	var out []*waypointv1alpha1.MetricOverride
	for _, name := range waypointMetrics {
		st := state[name]
		if st == nil {
			continue
		}
		o := &waypointv1alpha1.MetricOverride{Metric: name, Disabled: st.disabled}
		for _, tag := range slices.Sorted(maps.Keys(st.removed)) {
			if st.removed[tag] {
				o.RemovedLabels = append(o.RemovedLabels, tag)
			}
		}
		if o.Disabled || len(o.RemovedLabels) > 0 {
			out = append(out, o)
		}
	}
	return out
}
