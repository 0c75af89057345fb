package model

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	telemetryapi "istio.io/api/telemetry/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// override is a metrics override of metric (ALL_METRICS: no match) that
// disables it (disabled non-nil) and removes tags.
func override(metric telemetryapi.MetricSelector_IstioMetric, disabled *bool, removed ...string) *telemetryapi.MetricsOverrides {
	o := &telemetryapi.MetricsOverrides{}
	if metric != telemetryapi.MetricSelector_ALL_METRICS {
		o.Match = &telemetryapi.MetricSelector{MetricMatch: &telemetryapi.MetricSelector_Metric{Metric: metric}}
	}
	if disabled != nil {
		o.Disabled = wrapperspb.Bool(*disabled)
	}
	for _, tag := range removed {
		if o.TagOverrides == nil {
			o.TagOverrides = map[string]*telemetryapi.MetricsOverrides_TagOverride{}
		}
		o.TagOverrides[tag] = &telemetryapi.MetricsOverrides_TagOverride{Operation: telemetryapi.MetricsOverrides_TagOverride_REMOVE}
	}
	return o
}

func metricsSpec(gw string, providers []string, os ...*telemetryapi.MetricsOverrides) *telemetryapi.Telemetry {
	m := &telemetryapi.Metrics{Overrides: os}
	for _, p := range providers {
		m.Providers = append(m.Providers, &telemetryapi.ProviderRef{Name: p})
	}
	spec := &telemetryapi.Telemetry{Metrics: []*telemetryapi.Metrics{m}}
	if gw != "" {
		spec.TargetRefs = gwRef(gw)
	}
	return spec
}

// TestMetricOverrides checks the metric overrides of the waypoint demo/wp
// for each way Telemetry metrics layer and select.
func TestMetricOverrides(t *testing.T) {
	yes, no := true, false
	const (
		count    = telemetryapi.MetricSelector_REQUEST_COUNT
		duration = telemetryapi.MetricSelector_REQUEST_DURATION
		all      = telemetryapi.MetricSelector_ALL_METRICS
	)
	mo := func(metric string, disabled bool, removed ...string) *waypointv1alpha1.MetricOverride {
		return &waypointv1alpha1.MetricOverride{Metric: metric, Disabled: disabled, RemovedLabels: removed}
	}
	tcp := func(removed ...string) []*waypointv1alpha1.MetricOverride {
		var out []*waypointv1alpha1.MetricOverride
		for _, m := range []string{"TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES"} {
			out = append(out, mo(m, false, removed...))
		}
		return out
	}
	tests := []struct {
		name  string
		mesh  string
		tels  []*telemetryv1.Telemetry
		want  []*waypointv1alpha1.MetricOverride
		diags []string
	}{
		{name: "nothing: every metric, every label"},
		{
			name: "disable one metric for the waypoint",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "m", 0, metricsSpec("wp", nil, override(duration, &yes)))},
			want: []*waypointv1alpha1.MetricOverride{mo("REQUEST_DURATION", true)},
		},
		{
			name: "mesh-wide REMOVE of two tags on all metrics",
			tels: []*telemetryv1.Telemetry{telemetry("istio-system", "mesh", 0, metricsSpec("", []string{"prometheus"}, override(all, nil, "source_principal", "destination_principal")))},
			want: append([]*waypointv1alpha1.MetricOverride{
				mo("REQUEST_COUNT", false, "destination_principal", "source_principal"),
				mo("REQUEST_DURATION", false, "destination_principal", "source_principal"),
			}, tcp("destination_principal", "source_principal")...),
		},
		{
			name: "the namespace's override re-enables what the mesh disabled; later entries win per tag",
			tels: []*telemetryv1.Telemetry{
				telemetry("istio-system", "mesh", 0, metricsSpec("", nil, override(count, &yes, "request_protocol"))),
				telemetry("demo", "ns", 1, metricsSpec("", nil, override(count, &no), &telemetryapi.MetricsOverrides{
					Match: &telemetryapi.MetricSelector{MetricMatch: &telemetryapi.MetricSelector_Metric{Metric: count}},
					TagOverrides: map[string]*telemetryapi.MetricsOverrides_TagOverride{
						"request_protocol": {Operation: telemetryapi.MetricsOverrides_TagOverride_UPSERT, Value: "'http'"}}})),
			},
			diags: []string{"Telemetry demo/ns spec.metrics[0].overrides[1].tagOverrides.request_protocol UnsupportedValue"},
		},
		{
			name: "CLIENT-mode overrides, other providers and metrics the waypoint does not record change nothing",
			mesh: "- name: sd\n  stackdriver: {}\n",
			tels: []*telemetryv1.Telemetry{
				telemetry("demo", "client", 0, metricsSpec("wp", nil, &telemetryapi.MetricsOverrides{
					Match: &telemetryapi.MetricSelector{Mode: telemetryapi.WorkloadMode_CLIENT}, Disabled: wrapperspb.Bool(true)})),
				telemetry("demo", "sd", 0, metricsSpec("wp", []string{"sd"}, override(all, &yes))),
				telemetry("demo", "size", 0, metricsSpec("wp", nil, override(telemetryapi.MetricSelector_REQUEST_SIZE, &yes))),
			},
			diags: []string{"Telemetry demo/sd spec.metrics[0].providers[0].name UnsupportedValue"},
		},
		{
			name: "custom metrics, reporting intervals and unknown providers are diagnosed",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "odd", 0, &telemetryapi.Telemetry{TargetRefs: gwRef("wp"), Metrics: []*telemetryapi.Metrics{{
				Providers:         []*telemetryapi.ProviderRef{{Name: "prometheus"}, {Name: "nope"}},
				ReportingInterval: durationpb.New(15e9),
				Overrides: []*telemetryapi.MetricsOverrides{{Match: &telemetryapi.MetricSelector{
					MetricMatch: &telemetryapi.MetricSelector_CustomMetric{CustomMetric: "my_metric"}}, Disabled: wrapperspb.Bool(true)}},
			}}})},
			diags: []string{
				"Telemetry demo/odd spec.metrics[0].providers[1].name ProviderNotFound",
				"Telemetry demo/odd spec.metrics[0].reportingInterval UnsupportedValue",
				"Telemetry demo/odd spec.metrics[0].overrides[0].match.customMetric UnsupportedValue",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Translate(telemetrySnapshot(parseMesh(t, tc.mesh), tc.tels...))
			got := r.Telemetry["demo/wp"].GetMetricOverrides()
			if !slices.EqualFunc(got, tc.want, func(a, b *waypointv1alpha1.MetricOverride) bool { return proto.Equal(a, b) }) {
				t.Errorf("metric overrides of demo/wp\n got %v\nwant %v", fmtOverrides(got), fmtOverrides(tc.want))
			}
			checkDiagnostics(t, r.Diagnostics, tc.diags)
		})
	}
}

func fmtOverrides(os []*waypointv1alpha1.MetricOverride) []string {
	var out []string
	for _, o := range os {
		out = append(out, protojson.Format(o))
	}
	return out
}
