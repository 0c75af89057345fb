package model

import (
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
	telemetryapi "istio.io/api/telemetry/v1alpha1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
)

// accessLog is an accessLogging entry: providers (by name), disabled (nil:
// unset).
func accessLog(disabled *bool, providers ...string) *telemetryapi.AccessLogging {
	al := &telemetryapi.AccessLogging{}
	for _, p := range providers {
		al.Providers = append(al.Providers, &telemetryapi.ProviderRef{Name: p})
	}
	if disabled != nil {
		al.Disabled = wrapperspb.Bool(*disabled)
	}
	return al
}

func logging(als ...*telemetryapi.AccessLogging) *telemetryapi.Telemetry {
	return &telemetryapi.Telemetry{AccessLogging: als}
}

func loggingFor(gw string, als ...*telemetryapi.AccessLogging) *telemetryapi.Telemetry {
	return &telemetryapi.Telemetry{TargetRefs: gwRef(gw), AccessLogging: als}
}

// TestAccessLogging checks whether the waypoint demo/wp writes its access
// log for each way Istio's mesh config and Telemetry API turn it on or off.
func TestAccessLogging(t *testing.T) {
	yes, no := true, false
	const fileLog = "- name: file-log\n  envoyFileAccessLog: {path: /dev/stdout}\n"
	const alsLog = "- name: als\n  envoyOtelAls: {service: otel.example.com, port: 4317}\n"
	tests := []struct {
		name  string
		mesh  string // extensionProviders entries, then other mesh config
		tels  []*telemetryv1.Telemetry
		want  bool
		diags []string // "<kind> <ns>/<name> <field> <reason>"
	}{
		{name: "nothing configured: off, as in Istio"},
		{name: "accessLogFile turns it on mesh-wide", mesh: "accessLogFile: /dev/stdout\n", want: true},
		{name: "a default file provider turns it on", mesh: "extensionProviders:\n" + fileLog + "defaultProviders: {accessLogging: [file-log]}\n", want: true},
		{name: "the built-in envoy provider as default", mesh: "defaultProviders: {accessLogging: [envoy]}\n", want: true},
		{
			name: "Telemetry naming envoy turns it on",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "logs", 0, loggingFor("wp", accessLog(nil, "envoy")))},
			want: true,
		},
		{
			name: "mesh-wide Telemetry disables what accessLogFile enabled",
			mesh: "accessLogFile: /dev/stdout\n",
			tels: []*telemetryv1.Telemetry{telemetry("istio-system", "mesh-default", 0, logging(accessLog(&yes)))},
		},
		{
			name: "the waypoint's Telemetry re-enables what the namespace disabled",
			mesh: "accessLogFile: /dev/stdout\n",
			tels: []*telemetryv1.Telemetry{
				telemetry("demo", "ns", 0, logging(accessLog(&yes))),
				telemetry("demo", "wp", 1, loggingFor("wp", accessLog(&no))),
			},
			want: true,
		},
		{
			name: "an entry without providers uses the defaults: none, so off",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "logs", 0, loggingFor("wp", accessLog(&no)))},
		},
		{
			name: "CLIENT-mode entries do not apply to a waypoint",
			mesh: "accessLogFile: /dev/stdout\n",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "ns", 0, logging(&telemetryapi.AccessLogging{
				Match: &telemetryapi.AccessLogging_LogSelector{Mode: telemetryapi.WorkloadMode_CLIENT}, Disabled: wrapperspb.Bool(true)}))},
			want: true,
		},
		{
			name: "another waypoint's Telemetry does not apply",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "wp2", 0, loggingFor("wp2", accessLog(nil, "envoy")))},
		},
		{
			name: "unsupported and unknown providers are diagnosed and do not log",
			mesh: "extensionProviders:\n" + alsLog,
			tels: []*telemetryv1.Telemetry{telemetry("demo", "logs", 0, loggingFor("wp", accessLog(nil, "als", "nope")))},
			diags: []string{
				"Telemetry demo/logs spec.accessLogging[0].providers[0].name UnsupportedValue",
				"Telemetry demo/logs spec.accessLogging[0].providers[1].name ProviderNotFound",
			},
		},
		{
			name:  "one supported provider among others logs",
			mesh:  "extensionProviders:\n" + alsLog,
			tels:  []*telemetryv1.Telemetry{telemetry("demo", "logs", 0, loggingFor("wp", accessLog(nil, "als", "envoy")))},
			want:  true,
			diags: []string{"Telemetry demo/logs spec.accessLogging[0].providers[0].name UnsupportedValue"},
		},
		{
			name: "filters, other paths and formats are diagnosed; logging stays on",
			mesh: "extensionProviders:\n- name: file-log\n  envoyFileAccessLog: {path: /var/log/access.log, logFormat: {text: \"%START_TIME%\"}}\n" +
				"defaultProviders: {accessLogging: [file-log, zipkin]}\naccessLogFile: /tmp/access.log\n",
			tels: []*telemetryv1.Telemetry{telemetry("demo", "logs", 0, loggingFor("wp", &telemetryapi.AccessLogging{
				Filter: &telemetryapi.AccessLogging_Filter{Expression: "response.code >= 400"}}))},
			want: true,
			diags: []string{
				"ConfigMap istio-system/istio data.mesh.accessLogFile UnsupportedValue",
				"ConfigMap istio-system/istio data.mesh.extensionProviders[3].envoyFileAccessLog.path UnsupportedValue",
				"ConfigMap istio-system/istio data.mesh.extensionProviders[3].envoyFileAccessLog.logFormat UnsupportedValue",
				"ConfigMap istio-system/istio data.mesh.defaultProviders.accessLogging[1] UnsupportedValue",
				"Telemetry demo/logs spec.accessLogging[0].filter.expression UnsupportedValue",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mesh := tc.mesh
			if len(mesh) > len("extensionProviders:\n") && mesh[:len("extensionProviders:\n")] == "extensionProviders:\n" {
				mesh = mesh[len("extensionProviders:\n"):] // appended to testMesh's list
			}
			r := Translate(telemetrySnapshot(parseMesh(t, mesh), tc.tels...))
			got := r.Telemetry["demo/wp"].GetAccessLogging()
			if got == nil {
				t.Fatal("demo/wp has no access_logging; istiod-lite always says whether it logs")
			}
			if got.GetEnabled() != tc.want {
				t.Errorf("access log enabled = %v, want %v", got.GetEnabled(), tc.want)
			}
			checkDiagnostics(t, r.Diagnostics, tc.diags)
		})
	}
}
