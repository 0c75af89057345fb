package meshconfig

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	env := func(k string) (string, bool) {
		if k == "OTEL_TOKEN" {
			return "s3cret", true
		}
		return "", false
	}
	tests := []struct {
		name      string
		yaml      string
		wantField string // "" with wantErr: a document error
		wantErr   bool
		warnings  int
		check     func(t *testing.T, yaml string)
	}{
		{name: "empty is the default config", yaml: ""},
		{name: "grpc provider and default sampling", yaml: `
extensionProviders:
- name: otel-tracing
  opentelemetry: {service: opentelemetry-collector.otel-collector.svc.cluster.local, port: 4317}
defaultConfig:
  tracing: {sampling: 10}
`},
		{name: "unknown fields are ignored with a warning, as istiod does", yaml: "enableTracing: true\nnotAField: 1\n", warnings: 1},
		{name: "not yaml", yaml: "extensionProviders: [", wantErr: true},
		{name: "wrong type", yaml: "extensionProviders: {name: x}", wantErr: true},
		{name: "port out of range", yaml: `
extensionProviders:
- name: ok
  opentelemetry: {service: a, port: 4317}
- name: bad
  opentelemetry: {service: a}
`, wantErr: true, wantField: "extensionProviders[1].opentelemetry.port"},
		{name: "service required", yaml: "extensionProviders: [{name: x, opentelemetry: {port: 4317}}]", wantErr: true, wantField: "extensionProviders[0].opentelemetry.service"},
		{name: "duplicate provider name", yaml: "extensionProviders: [{name: x, opentelemetry: {service: a, port: 1}}, {name: x, zipkin: {service: z, port: 9411}}]",
			wantErr: true, wantField: "extensionProviders[1].name"},
		{name: "bad http timeout", yaml: "extensionProviders: [{name: x, opentelemetry: {service: a, port: 4318, http: {path: /v1/traces, timeout: 0s}}}]",
			wantErr: true, wantField: "extensionProviders[0].opentelemetry.http.timeout"},
		{name: "sampling above 100", yaml: "defaultConfig: {tracing: {sampling: 150}}", wantErr: true, wantField: "defaultConfig.tracing.sampling"},
		{name: "header envName resolved from istiod's environment; unset ones dropped", yaml: `
extensionProviders:
- name: x
  opentelemetry:
    service: a
    port: 4317
    grpc:
      timeout: 5s
      initialMetadata:
      - {name: authorization, envName: OTEL_TOKEN}
      - {name: x-missing, envName: NOT_SET}
      - {name: x-plain, value: v}
`, warnings: 1, check: func(t *testing.T, y string) {
			mc, _, _ := Parse(y, env)
			md := mc.GetExtensionProviders()[0].GetOpentelemetry().GetGrpc().GetInitialMetadata()
			if len(md) != 2 || md[0].GetValue() != "s3cret" || md[1].GetName() != "x-plain" {
				t.Errorf("initialMetadata = %v, want authorization=s3cret and x-plain", md)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mc, warnings, err := Parse(tc.yaml, env)
			if tc.wantErr {
				fe, ok := AsFieldError(err)
				if !ok {
					t.Fatalf("Parse error = %v, want a *FieldError", err)
				}
				if fe.Field != tc.wantField {
					t.Errorf("error field = %q (%v), want %q", fe.Field, err, tc.wantField)
				}
				if mc != nil {
					t.Error("a config was returned with the error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if mc == nil {
				t.Fatal("nil config")
			}
			if len(warnings) != tc.warnings {
				t.Errorf("warnings %q, want %d", warnings, tc.warnings)
			}
			if tc.check != nil {
				tc.check(t, tc.yaml)
			}
		})
	}
}

func TestParseUnknownFieldWarningNamesIt(t *testing.T) {
	_, warnings, err := Parse("extensionProvider: []\n", nil)
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], `"extensionProvider"`) {
		t.Errorf("Parse = %q, %v; want one warning naming extensionProvider", warnings, err)
	}
}
