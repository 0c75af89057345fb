package model

import (
	"encoding/json"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	telemetryapi "istio.io/api/telemetry/v1alpha1"
	typev1beta1 "istio.io/api/type/v1beta1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/meshconfig"
)

// testMesh is a mesh config with an OTLP/gRPC provider, an OTLP/HTTP one
// with headers and a zipkin one.
const testMesh = `
extensionProviders:
- name: otel-tracing
  opentelemetry:
    service: opentelemetry-collector.otel-collector.svc.cluster.local
    port: 4317
- name: otel-http
  opentelemetry:
    service: otel-collector/collector.example.com
    port: 4318
    http:
      path: /v1/traces
      timeout: 3s
      headers:
      - name: x-tenant
        value: mesh
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
`

func parseMesh(t *testing.T, extra string) *meshv1alpha1.MeshConfig {
	t.Helper()
	mc, warnings, err := meshconfig.Parse(testMesh+extra, func(string) (string, bool) { return "", false })
	if err != nil || len(warnings) > 0 {
		t.Fatalf("parse mesh config: %v %v", err, warnings)
	}
	return mc
}

func telemetry(ns, name string, age int, spec *telemetryapi.Telemetry) *telemetryv1.Telemetry {
	t := &telemetryv1.Telemetry{ObjectMeta: objMeta(ns, name, age)}
	proto.Merge(&t.Spec, spec)
	return t
}

// trace is a tracing entry: providers (by name), sampling (nil: unset).
func trace(sampling *float64, providers ...string) *telemetryapi.Tracing {
	tr := &telemetryapi.Tracing{}
	for _, p := range providers {
		tr.Providers = append(tr.Providers, &telemetryapi.ProviderRef{Name: p})
	}
	if sampling != nil {
		tr.RandomSamplingPercentage = wrapperspb.Double(*sampling)
	}
	return tr
}

func pct(v float64) *float64 { return &v }

func tracing(tr ...*telemetryapi.Tracing) *telemetryapi.Telemetry {
	return &telemetryapi.Telemetry{Tracing: tr}
}

func targeting(refs []*typev1beta1.PolicyTargetReference, tr ...*telemetryapi.Tracing) *telemetryapi.Telemetry {
	return &telemetryapi.Telemetry{TargetRefs: refs, Tracing: tr}
}

func gwRef(name string) []*typev1beta1.PolicyTargetReference {
	return []*typev1beta1.PolicyTargetReference{targetRef("gateway.networking.k8s.io", "Gateway", name)}
}

var classRef = []*typev1beta1.PolicyTargetReference{targetRef("gateway.networking.k8s.io", "GatewayClass", WaypointGatewayClassName)}

var grpcOTel = &waypointv1alpha1.OpenTelemetryProvider{Name: "otel-tracing", Service: "opentelemetry-collector.otel-collector.svc.cluster.local", Port: 4317}

func telemetrySnapshot(mc *meshv1alpha1.MeshConfig, tels ...*telemetryv1.Telemetry) Snapshot {
	return Snapshot{
		Mesh:        MeshConfig{Istio: mc},
		Namespaces:  []*corev1.Namespace{meshNS("demo"), meshNS("other")},
		Gateways:    []*gatewayv1.Gateway{waypointGateway("demo", "wp"), waypointGateway("demo", "wp2", notProgrammed), waypointGateway("other", "wp")},
		Telemetries: tels,
	}
}

// TestTelemetryMerge checks the waypoint demo/wp's tracing for each way
// Istio's Telemetry API and mesh config combine.
func TestTelemetryMerge(t *testing.T) {
	const demoWP = "demo/wp"
	tests := []struct {
		name  string
		mesh  string // appended to testMesh
		tels  []*telemetryv1.Telemetry
		want  *waypointv1alpha1.Tracing // of demo/wp
		diags []string                  // "<kind> <ns>/<name> <field> <reason>", any order
	}{
		{name: "nothing: no tracing"},
		{
			name: "default provider only: mesh default sampling 1%",
			mesh: "defaultProviders: {tracing: [otel-tracing]}\n",
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 1},
		},
		{
			name: "defaultConfig.tracing.sampling is the default percentage",
			mesh: "defaultProviders: {tracing: [otel-tracing]}\ndefaultConfig: {tracing: {sampling: 5}}\n",
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 5},
		},
		{
			name: "mesh-wide Telemetry in the root namespace",
			tels: []*telemetryv1.Telemetry{telemetry("istio-system", "mesh-default", 0, tracing(trace(pct(10), "otel-tracing")))},
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 10},
		},
		{
			name: "namespace-wide overrides sampling, keeps the mesh-wide provider",
			tels: []*telemetryv1.Telemetry{
				telemetry("istio-system", "mesh-default", 0, tracing(trace(pct(10), "otel-tracing"))),
				telemetry("demo", "ns", 0, tracing(trace(pct(50)))),
			},
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 50},
		},
		{
			name: "gateway targetRef beats namespace-wide and GatewayClass",
			tels: []*telemetryv1.Telemetry{
				telemetry("demo", "wp-100", 5, targeting(gwRef("wp"), trace(pct(100)))),
				telemetry("istio-system", "all-waypoints", 0, targeting(classRef, trace(pct(20), "otel-http"))),
				telemetry("demo", "ns", 0, tracing(trace(pct(50), "otel-tracing"))),
			},
			want: &waypointv1alpha1.Tracing{RandomSamplingPercentage: 100, Provider: &waypointv1alpha1.OpenTelemetryProvider{
				Name: "otel-http", Service: "otel-collector/collector.example.com", Port: 4318,
				Http: &waypointv1alpha1.OpenTelemetryHTTP{Path: "/v1/traces", Timeout: durationpb.New(3e9), Headers: []*waypointv1alpha1.Header{{Name: "x-tenant", Value: "mesh"}}}}},
		},
		{
			name: "two gateway Telemetries: the newer overrides the older per field",
			tels: []*telemetryv1.Telemetry{
				telemetry("demo", "newer", 2, targeting(gwRef("wp"), trace(pct(0)))),
				telemetry("demo", "older", 1, targeting(gwRef("wp"), trace(pct(100), "otel-tracing"))),
			},
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 0},
		},
		{
			name:  "unknown provider: no tracing and a diagnostic naming the field",
			mesh:  "defaultProviders: {tracing: [otel-tracing]}\n",
			tels:  []*telemetryv1.Telemetry{telemetry("demo", "typo", 0, targeting(gwRef("wp"), trace(pct(100), "otel-tracng")))},
			diags: []string{"Telemetry demo/typo spec.tracing[0].providers[0].name ProviderNotFound"},
		},
		{
			name: "provider names match case-insensitively, as in Istio",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "ns", 0, tracing(trace(nil, "OTEL-Tracing")))},
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 1},
		},
		{
			name:  "a zipkin provider: no tracing, diagnosed",
			tels:  []*telemetryv1.Telemetry{telemetry("demo", "zip", 0, tracing(trace(nil, "zipkin")))},
			diags: []string{"Telemetry demo/zip spec.tracing[0].providers[0].name UnsupportedValue"},
		},
		{
			name:  "unknown default provider: diagnosed on the ConfigMap",
			mesh:  "defaultProviders: {tracing: [jaeger]}\n",
			diags: []string{"ConfigMap istio-system/istio data.mesh.defaultProviders.tracing[0] ProviderNotFound"},
		},
		{
			name: "sampling without any provider: no tracing (istiod disables it)",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "ns", 0, tracing(trace(pct(100))))},
		},
		{
			name: "disableSpanReporting, then custom tags replaced as a whole and sorted",
			mesh: "defaultProviders: {tracing: [otel-tracing]}\n",
			tels: []*telemetryv1.Telemetry{
				telemetry("istio-system", "mesh", 0, tracing(&telemetryapi.Tracing{CustomTags: map[string]*telemetryapi.Tracing_CustomTag{
					"cluster": {Type: &telemetryapi.Tracing_CustomTag_Literal{Literal: &telemetryapi.Tracing_Literal{Value: "c1"}}}}})),
				telemetry("demo", "wp", 1, targeting(gwRef("wp"), &telemetryapi.Tracing{
					DisableSpanReporting: wrapperspb.Bool(true),
					CustomTags: map[string]*telemetryapi.Tracing_CustomTag{
						"tenant": {Type: &telemetryapi.Tracing_CustomTag_Header{Header: &telemetryapi.Tracing_RequestHeader{Name: "x-tenant", DefaultValue: "none"}}},
						"pod":    {Type: &telemetryapi.Tracing_CustomTag_Environment{Environment: &telemetryapi.Tracing_Environment{Name: "POD_NAME"}}},
						"fmt":    {Type: &telemetryapi.Tracing_CustomTag_Formatter{Formatter: &telemetryapi.Tracing_Formatter{Value: "%REQ(:path)%"}}},
					}})),
			},
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 1, Disabled: true, CustomTags: []*waypointv1alpha1.CustomTag{
				{Name: "pod", Type: &waypointv1alpha1.CustomTag_Environment{Environment: "POD_NAME"}},
				{Name: "tenant", Type: &waypointv1alpha1.CustomTag_Header{Header: "x-tenant"}, DefaultValue: "none"},
			}},
			diags: []string{"Telemetry demo/wp spec.tracing[0].customTags.fmt.formatter UnsupportedValue"},
		},
		{
			name: "CLIENT-mode entries do not apply to a waypoint",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "ns", 0, tracing(
				trace(pct(30), "otel-tracing"),
				&telemetryapi.Tracing{Match: &telemetryapi.Tracing_TracingSelector{Mode: telemetryapi.WorkloadMode_CLIENT}, RandomSamplingPercentage: wrapperspb.Double(90)},
			))},
			want: &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 30},
		},
		{
			name: "oldest namespace-wide Telemetry wins; the other is Conflicted",
			tels: []*telemetryv1.Telemetry{
				telemetry("demo", "b-newer", 2, tracing(trace(pct(90), "otel-tracing"))),
				telemetry("demo", "a-older", 1, tracing(trace(pct(40), "otel-tracing"))),
			},
			want:  &waypointv1alpha1.Tracing{Provider: grpcOTel, RandomSamplingPercentage: 40},
			diags: []string{"Telemetry demo/b-newer spec Conflicted"},
		},
		{
			name: "selector naming the waypoint's pods is ignored, as in Istio, and diagnosed",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "sel", 0, &telemetryapi.Telemetry{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{LabelGatewayName: "wp"}},
				Tracing:  []*telemetryapi.Tracing{trace(pct(100), "otel-tracing")}})},
			diags: []string{"Telemetry demo/sel spec.selector UnsupportedValue"},
		},
		{
			name: "targets elsewhere do not apply; unsupported targets are diagnosed",
			tels: []*telemetryv1.Telemetry{
				telemetry("demo", "wp2", 0, targeting(gwRef("wp2"), trace(pct(100), "otel-tracing"))),
				telemetry("other", "wp", 0, targeting(gwRef("wp"), trace(pct(100), "otel-tracing"))),
				telemetry("demo", "svc", 0, targeting([]*typev1beta1.PolicyTargetReference{targetRef("", "Service", "reviews")}, trace(pct(100), "otel-tracing"))),
				telemetry("demo", "missing", 0, targeting(gwRef("nope"), trace(pct(100), "otel-tracing"))),
				telemetry("demo", "class", 0, targeting(classRef, trace(pct(100), "otel-tracing"))),
			},
			diags: []string{
				"Telemetry demo/svc spec.targetRefs[0] UnsupportedValue",
				"Telemetry demo/missing spec.targetRefs[0] TargetNotFound",
				"Telemetry demo/class spec.targetRefs[0] UnsupportedValue", // GatewayClass only from the root namespace
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Translate(telemetrySnapshot(parseMesh(t, tc.mesh), tc.tels...))
			if len(r.Telemetry) != 3 {
				t.Errorf("%d Telemetry resources %v, want one per waypoint Gateway (3)", len(r.Telemetry), slices.Sorted(maps.Keys(r.Telemetry)))
			}
			got := r.Telemetry[demoWP]
			if got.GetNamespace() != "demo" || got.GetName() != "wp" {
				t.Fatalf("Telemetry %s = %v, want namespace demo, name wp", demoWP, got)
			}
			if !proto.Equal(got.GetTracing(), tc.want) {
				t.Errorf("tracing of %s\n got %v\nwant %v", demoWP, protojson.Format(got.GetTracing()), protojson.Format(tc.want))
			}
			checkDiagnostics(t, r.Diagnostics, tc.diags)
		})
	}
}

// telemetryGoldenCase layers every kind of Telemetry over two namespaces'
// waypoints.
// checkDiagnostics compares diags with want, each "<kind> <ns>/<name>
// <field> <reason>", in any order.
func checkDiagnostics(t *testing.T, diags []Diagnostic, want []string) {
	t.Helper()
	var got []string
	for _, d := range diags {
		got = append(got, d.Kind+" "+d.Namespace+"/"+d.Name+" "+d.Field+" "+d.Reason)
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("diagnostics %q lack %q", got, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("diagnostics %q, want exactly %q", got, want)
	}
}

func telemetryGoldenCase(t *testing.T) Snapshot {
	mc := parseMesh(t, "defaultProviders: {tracing: [otel-tracing]}\ndefaultConfig: {tracing: {sampling: 2.5}}\n")
	return telemetrySnapshot(mc,
		telemetry("istio-system", "mesh-default", 0, tracing(&telemetryapi.Tracing{CustomTags: map[string]*telemetryapi.Tracing_CustomTag{
			"mesh": {Type: &telemetryapi.Tracing_CustomTag_Literal{Literal: &telemetryapi.Tracing_Literal{Value: "ambient"}}}}})),
		telemetry("istio-system", "waypoints", 1, targeting(classRef, trace(pct(10)))),
		telemetry("demo", "ns", 2, tracing(trace(nil, "otel-http"))),
		telemetry("demo", "wp-full", 3, targeting(gwRef("wp"), trace(pct(100)))),
		telemetry("other", "typo", 3, targeting(gwRef("wp"), trace(pct(100), "otel"))),
	)
}

type telemetryGolden struct {
	Telemetry   map[string]json.RawMessage `json:"telemetry"`
	Diagnostics []Diagnostic               `json:"diagnostics"`
}

func toTelemetryGolden(t *testing.T, r Resources) []byte {
	t.Helper()
	g := telemetryGolden{Telemetry: map[string]json.RawMessage{}, Diagnostics: r.Diagnostics}
	for k, v := range r.Telemetry {
		g.Telemetry[k] = marshalProto(t, v)
	}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestTelemetryGolden(t *testing.T) {
	got := toTelemetryGolden(t, Translate(telemetryGoldenCase(t)))
	path := filepath.Join("testdata", "telemetry.golden.json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("telemetry compilation differs from %s (run with -update and review the diff):\n got %s", path, got)
	}
	// The golden resources decode with the generated type.
	var g telemetryGolden
	if err := json.Unmarshal(want, &g); err != nil {
		t.Fatal(err)
	}
	for k, raw := range g.Telemetry {
		var m waypointv1alpha1.Telemetry
		if err := protojson.Unmarshal(raw, &m); err != nil {
			t.Errorf("decode %s: %v", k, err)
		}
	}
	// Input order does not matter.
	rnd := rand.New(rand.NewPCG(5, 6))
	for range 5 {
		s := telemetryGoldenCase(t)
		s.Telemetries = shuffled(rnd, s.Telemetries)
		s.Gateways = shuffled(rnd, s.Gateways)
		if again := toTelemetryGolden(t, Translate(s)); string(again) != string(got) {
			t.Fatalf("shuffled input changed the output:\n got %s\nwant %s", again, got)
		}
	}
	if !strings.Contains(string(got), "ProviderNotFound") {
		t.Error("golden case lost its unknown-provider diagnostic")
	}
}
