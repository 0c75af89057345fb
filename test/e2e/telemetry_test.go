package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/otelcoltest"
	"github.com/ambient-mesh/mesh/pkg/enroll"
)

// telemetryResource is a telemetry.istio.io Telemetry for the namespace's
// waypoint Gateway: the mesh config's otel-tracing provider (the sample
// collector) at percent, with a literal custom tag.
func telemetryResource(percent int) string {
	return fmt.Sprintf(`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: waypoint-tracing}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  tracing:
  - providers: [{name: otel-tracing}]
    randomSamplingPercentage: %d
    customTags:
      team: {literal: {value: e2e}}
`, percent)
}

var backendTraceparentRE = regexp.MustCompile(`(?i)RequestHeader=traceparent:(\S+)`)

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// collectorOutput copies one of the sample collector's files
// (/data/traces.json, /data/metrics.json) to a local file and returns a
// Collector reading it.
func collectorOutput(t *testing.T, k *kubectl, traces bool) (*otelcoltest.Collector, error) {
	name := "metrics.json"
	if traces {
		name = "traces.json"
	}
	out, err := k.run(t.Context(), "", "-n", "otel-collector", "exec", "deploy/opentelemetry-collector", "--", "cat", "/data/"+name)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(out), 0o644); err != nil {
		return nil, err
	}
	return &otelcoltest.Collector{TracesFile: p, MetricsFile: p}, nil
}

// spansOf returns the collector's spans from the namespace's waypoint.
func spansOf(t *testing.T, k *kubectl, ns string) ([]otelcoltest.Span, error) {
	c, err := collectorOutput(t, k, true)
	if err != nil {
		return nil, err
	}
	var out []otelcoltest.Span
	for _, s := range c.Spans(t) {
		if s.Resource["k8s.namespace.name"] == ns {
			out = append(out, s)
		}
	}
	return out, nil
}

// TestTelemetry is issue #10's end-to-end case: the sample collector in
// namespace otel-collector, a waypoint whose Telemetry selects the mesh
// config's otel-tracing provider at 100 %, requests carrying a traceparent
// through the waypoint: one span per request in the collector's output with
// the conventional name and attributes, the client's span as parent and
// the waypoint's span as the parent the backend sees; the waypoint's
// istio_requests_total over OTLP equal to its Prometheus count; then the
// Telemetry at 0 % stops new spans within seconds, on the same waypoint pod.
//
// The collector-down case (requests keep flowing, the export queue bounded,
// no heap growth) is pkg/waypoint's TestTelemetryCollectorDown, in process:
// stopping the shared sample collector would disturb other users of the
// cluster.
func TestTelemetry(t *testing.T) {
	k := newKubectl(t)
	installMesh(t, k)
	installCNI(t, k)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	k.must("", "apply", "-f", filepath.Join(root, "manifests/samples/otel-collector.yaml"))
	k.must("", "-n", "otel-collector", "rollout", "status", "deployment/opentelemetry-collector", "--timeout=180s")
	if svc := k.must("", "-n", "otel-collector", "get", "service", "opentelemetry-collector", "-o", "jsonpath={.spec.ports[*].port}"); !strings.Contains(svc, "4317") {
		t.Fatalf("collector Service ports %q, want 4317 (the otel-tracing provider in manifests/istiod)", svc)
	}

	ns := testNamespace(t, k, "tel", enroll.LabelDataplaneMode+"="+enroll.DataplaneModeAmbient)
	app := *k
	app.namespace = ns
	app.must(waypointApp+"---\n"+echoDeployment("v1", 1)+"---\n"+clientPod, "apply", "-f", "-")
	app.must("", "rollout", "status", "deployment/echo-v1", "--timeout=180s")
	app.must("", "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")
	waitCaptured(t, &app, 90*time.Second, "app=echo", "client")
	applySample(t, &app, "gateway.yaml")
	app.must("", "wait", "--for=condition=Programmed", "gateway/waypoint", "--timeout=180s")
	app.must("", "rollout", "status", "deployment/waypoint", "--timeout=180s")
	app.must("", "label", "service", "echo", "istio.io/use-waypoint=waypoint")
	app.must(telemetryResource(100), "apply", "-f", "-")
	wpPods := listPods(t, &app, "gateway.networking.k8s.io/gateway-name=waypoint")
	if len(wpPods) != 1 {
		t.Fatalf("%d waypoint pods, want 1", len(wpPods))
	}
	wpUID := wpPods[0].Metadata.UID

	url := fmt.Sprintf("http://echo.%s.svc.cluster.local/", ns)
	// The waypoint traces once a request with a fresh sampled trace shows
	// up in the collector (Telemetry push, provider built, 5 s batches).
	eventually(t, 120*time.Second, "a span from the waypoint in the collector", func() error {
		probe := randomHex(t, 16)
		r := echoClient(t.Context(), &app, url, "--count=1", "-H", "traceparent:00-"+probe+"-"+randomHex(t, 8)+"-01", "--timeout=5s")
		if r.ok() != 1 {
			return fmt.Errorf("probe request: %v", r)
		}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			spans, err := spansOf(t, k, ns)
			if err != nil {
				return err
			}
			for _, s := range spans {
				if s.TraceID == probe {
					return nil
				}
			}
			time.Sleep(time.Second) // the waypoint batches for 5 s, the collector for 1 s
		}
		return fmt.Errorf("no span of trace %s", probe)
	})

	t.Run("SpansWithParents", func(t *testing.T) {
		const n = 20
		traceID, clientSpan := randomHex(t, 16), randomHex(t, 8)
		r := echoClient(t.Context(), &app, url, fmt.Sprintf("--count=%d", n), "-H", "traceparent:00-"+traceID+"-"+clientSpan+"-01", "--timeout=30s")
		if r.ok() != n {
			t.Fatalf("%d of %d requests answered 200: %v", r.ok(), n, r)
		}
		backendParents := map[string]bool{}
		for _, m := range backendTraceparentRE.FindAllStringSubmatch(r.out, -1) {
			if tp := m[1]; len(tp) == 55 && tp[3:35] == traceID {
				backendParents[tp[36:52]] = true
			}
		}
		var spans []otelcoltest.Span
		eventually(t, 30*time.Second, fmt.Sprintf("%d spans of trace %s", n, traceID), func() error {
			all, err := spansOf(t, k, ns)
			if err != nil {
				return err
			}
			spans = spans[:0]
			for _, s := range all {
				if s.TraceID == traceID {
					spans = append(spans, s)
				}
			}
			if len(spans) != n {
				return fmt.Errorf("%d spans", len(spans))
			}
			return nil
		})
		if len(backendParents) != n {
			t.Errorf("the backend saw %d distinct parents of trace %s, want %d (one waypoint span each): %.500s", len(backendParents), traceID, n, r.out)
		}
		echoHost := fmt.Sprintf("echo.%s.svc.cluster.local", ns)
		for _, s := range spans {
			if s.Name != "GET "+s.Attributes["http.route"] || s.Attributes["http.route"] == "" || s.Kind != 2 || s.ParentSpanID != clientSpan {
				t.Errorf("span %q kind %d parent %s route %q: want a server span \"GET {route}\" with the client's span %s as parent", s.Name, s.Kind, s.ParentSpanID, s.Attributes["http.route"], clientSpan)
			}
			if !backendParents[s.SpanID] {
				t.Errorf("span %s is not a parent the backend saw", s.SpanID)
			}
			want := map[string]string{
				"http.request.method":         "GET",
				"http.response.status_code":   "200",
				"url.scheme":                  "http",
				"istio.source_workload":       "client",
				"istio.source_namespace":      ns,
				"istio.source_principal":      "spiffe://cluster.local/ns/" + ns + "/sa/default",
				"istio.destination_namespace": ns,
				"istio.destination_principal": "spiffe://cluster.local/ns/" + ns + "/sa/default",
				"istio.destination_service":   echoHost,
				"team":                        "e2e",
			}
			for k, v := range want {
				if s.Attributes[k] != v {
					t.Errorf("span attribute %s = %q, want %q (all: %v)", k, s.Attributes[k], v, s.Attributes)
				}
			}
			if !strings.HasPrefix(s.Attributes["istio.destination_workload"], "echo-v1") {
				t.Errorf("destination workload %q, want echo-v1", s.Attributes["istio.destination_workload"])
			}
			if s.Resource["service.name"] != "waypoint."+ns {
				t.Errorf("resource %v, want service.name waypoint.%s", s.Resource, ns)
			}
		}
		t.Logf("%d requests with traceparent: %d spans, parent %s, names %q", n, len(spans), clientSpan, spans[0].Name)
	})

	t.Run("MetricsMatchRequests", func(t *testing.T) {
		// The OTLP export of istio_requests_total (every 60 s, the SDK
		// default) must reach the count the waypoint's Prometheus endpoint
		// shows after n more requests.
		const n = 30
		count := func(s metricSeries) float64 {
			return s.sum("istio_requests_total", map[string]string{"reporter": "waypoint", "destination_service_namespace": ns})
		}
		s, err := scrapeWaypoint(t, &app)
		if err != nil {
			t.Fatal(err)
		}
		before := count(s)
		if r := echoClient(t.Context(), &app, url, fmt.Sprintf("--count=%d", n), "--timeout=30s"); r.ok() != n {
			t.Fatalf("%d of %d requests answered 200: %v", r.ok(), n, r)
		}
		if s, err = scrapeWaypoint(t, &app); err != nil {
			t.Fatal(err)
		}
		want := count(s)
		if want != before+n {
			t.Fatalf("Prometheus istio_requests_total went %v -> %v, want +%d", before, want, n)
		}
		eventually(t, 150*time.Second, fmt.Sprintf("istio_requests_total = %v over OTLP", want), func() error {
			c, err := collectorOutput(t, k, false)
			if err != nil {
				return err
			}
			// Each export holds the cumulative value of every series.
			got := sumLatest(c.Metrics(t), ns)
			if got != want {
				return fmt.Errorf("istio_requests_total over OTLP = %v, want %v", got, want)
			}
			return nil
		})
	})

	t.Run("SamplingZeroStopsSpans", func(t *testing.T) {
		app.must(telemetryResource(0), "apply", "-f", "-")
		applied := time.Now()
		// A request that is sampled whatever the percentage (its parent's
		// flag says sampled; the sampler is parent-based, as Envoy's) marks
		// the end of each batch: once its span is in the collector, so are
		// the spans of the batch sent before it.
		var stopped time.Duration
		eventually(t, 60*time.Second, "no spans for new traces at 0 %", func() error {
			batch := randomHex(t, 16)
			// New traces (no traceparent) and unsampled parents.
			r := echoClient(t.Context(), &app, url, "--count=10", "-H", "x-batch:"+batch, "--timeout=30s")
			r2 := echoClient(t.Context(), &app, url, "--count=10", "-H", "traceparent:00-"+batch+"-"+randomHex(t, 8)+"-00", "--timeout=30s")
			marker := randomHex(t, 16)
			r3 := echoClient(t.Context(), &app, url, "--count=1", "-H", "traceparent:00-"+marker+"-"+randomHex(t, 8)+"-01", "--timeout=30s")
			if r.ok() != 10 || r2.ok() != 10 || r3.ok() != 1 {
				return fmt.Errorf("requests failed: %v / %v / %v", r, r2, r3)
			}
			sent := time.Now()
			before, err := spansOf(t, k, ns)
			if err != nil {
				return err
			}
			known := map[string]bool{}
			for _, s := range before {
				known[s.SpanID] = true
			}
			for time.Since(sent) < 20*time.Second {
				time.Sleep(time.Second) // the waypoint batches for 5 s, the collector for 1 s
				spans, err := spansOf(t, k, ns)
				if err != nil {
					return err
				}
				markerSeen, unexpected := false, 0
				for _, s := range spans {
					switch {
					case s.TraceID == marker:
						markerSeen = true
					case s.TraceID == batch:
						unexpected++
					}
				}
				if !markerSeen {
					continue
				}
				// Spans of the batch's new root traces carry other trace
				// ids: count every span not seen before that is not the
				// marker.
				fresh := 0
				for _, s := range spans {
					if !known[s.SpanID] && s.TraceID != marker {
						fresh++
					}
				}
				if unexpected > 0 || fresh > 0 {
					return fmt.Errorf("%d spans of unsampled parents and %d new spans at 0 %%", unexpected, fresh)
				}
				stopped = time.Since(applied)
				return nil
			}
			return fmt.Errorf("marker span of trace %s not in the collector after 20 s", marker)
		})
		t.Logf("sampling 100 -> 0 %%: a clean batch %s after the Telemetry change", stopped.Round(time.Second))
		pods := listPods(t, &app, "gateway.networking.k8s.io/gateway-name=waypoint")
		if len(pods) != 1 || pods[0].Metadata.UID != wpUID || pods[0].restarts() != 0 {
			t.Errorf("waypoint pods after the change: %d, want the same pod %s without restarts", len(pods), wpUID)
		}
	})

	t.Run("AccessLogFollowsTelemetry", func(t *testing.T) {
		// The shipped mesh config's accessLogFile has the waypoint log each
		// request; a Telemetry with accessLogging disabled for the waypoint
		// Gateway stops it and deleting that Telemetry brings it back, on
		// the same pod. A request's line names its path; the log is
		// flushed every second.
		logged := func(path string) (bool, error) {
			out, err := app.run(t.Context(), "", "logs", "pod/"+wpPods[0].Metadata.Name, "--tail=2000")
			return strings.Contains(out, `"path":"`+path+`"`), err
		}
		request := func() (string, error) {
			path := "/access-log-" + randomHex(t, 6)
			if r := echoClient(t.Context(), &app, url[:len(url)-1]+path, "--count=1", "--timeout=10s"); r.ok() != 1 {
				return "", fmt.Errorf("request %s: %v", path, r)
			}
			return path, nil
		}
		// seen waits for path's line; absent makes sure none comes.
		seen := func(want bool) func() error {
			return func() error {
				path, err := request()
				if err != nil {
					return err
				}
				for end := time.Now().Add(4 * time.Second); ; time.Sleep(500 * time.Millisecond) {
					got, err := logged(path)
					if err != nil {
						return err
					}
					if got && !want {
						return fmt.Errorf("request %s logged", path)
					}
					if got == want && (want || time.Now().After(end)) {
						return nil
					}
					if time.Now().After(end) {
						return fmt.Errorf("request %s not logged after 4 s", path)
					}
				}
			}
		}
		eventually(t, 60*time.Second, "a request in the waypoint's access log (accessLogFile in the shipped mesh config)", seen(true))
		app.must(`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: waypoint-access-log}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  accessLogging:
  - disabled: true
`, "apply", "-f", "-")
		eventually(t, 60*time.Second, "requests no longer logged after accessLogging disabled", seen(false))
		app.must("", "delete", "telemetry", "waypoint-access-log")
		eventually(t, 60*time.Second, "requests logged again after the Telemetry is deleted", seen(true))
		pods := listPods(t, &app, "gateway.networking.k8s.io/gateway-name=waypoint")
		if len(pods) != 1 || pods[0].Metadata.UID != wpUID || pods[0].restarts() != 0 {
			t.Errorf("waypoint pods after the changes: %d, want the same pod %s without restarts", len(pods), wpUID)
		}
	})

	t.Run("MetricOverrides", func(t *testing.T) {
		// A Telemetry for the waypoint Gateway that removes
		// source_principal from istio_requests_total and disables
		// istio_request_duration_milliseconds: new requests count without
		// the label and observe no duration; deleting it restores both.
		app.must(`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: waypoint-metrics}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides: {source_principal: {operation: REMOVE}}
    - match: {metric: REQUEST_DURATION}
      disabled: true
`, "apply", "-f", "-")
		base := map[string]string{"reporter": "waypoint", "destination_service_namespace": ns}
		principal := "spiffe://cluster.local/ns/" + ns + "/sa/default"
		// delta sends n requests and returns how much the counts moved:
		// requests without source_principal, with the client's, and
		// durations observed.
		delta := func(n int) (blank, named, observed float64, err error) {
			counts := func() (float64, float64, float64, error) {
				s, err := scrapeWaypoint(t, &app)
				if err != nil {
					return 0, 0, 0, err
				}
				return s.sum("istio_requests_total", map[string]string{"reporter": "waypoint", "destination_service_namespace": ns, "source_principal": ""}),
					s.sum("istio_requests_total", map[string]string{"reporter": "waypoint", "destination_service_namespace": ns, "source_principal": principal}),
					s.sum("istio_request_duration_milliseconds_count", base), nil
			}
			b0, n0, o0, err := counts()
			if err != nil {
				return 0, 0, 0, err
			}
			if r := echoClient(t.Context(), &app, url, fmt.Sprintf("--count=%d", n), "--timeout=30s"); r.ok() != n {
				return 0, 0, 0, fmt.Errorf("%d of %d requests answered 200: %v", r.ok(), n, r)
			}
			time.Sleep(200 * time.Millisecond) // recorded just after each answer
			b1, n1, o1, err := counts()
			return b1 - b0, n1 - n0, o1 - o0, err
		}
		const n = 5
		eventually(t, 60*time.Second, "requests counted without source_principal and no durations", func() error {
			blank, named, observed, err := delta(n)
			if err != nil {
				return err
			}
			if blank != n || named != 0 || observed != 0 {
				return fmt.Errorf("%d requests: +%v without source_principal, +%v with it, +%v durations; want +%d, 0, 0", n, blank, named, observed, n)
			}
			return nil
		})
		app.must("", "delete", "telemetry", "waypoint-metrics")
		eventually(t, 60*time.Second, "full labels and durations again", func() error {
			blank, named, observed, err := delta(n)
			if err != nil {
				return err
			}
			if blank != 0 || named != n || observed != n {
				return fmt.Errorf("%d requests: +%v without source_principal, +%v with it, +%v durations; want 0, +%d, +%d", n, blank, named, observed, n, n)
			}
			return nil
		})
	})
}

// sumLatest sums istio_requests_total of the newest export from the
// namespace's waypoint (the last point of each series in file order).
func sumLatest(points []otelcoltest.MetricPoint, ns string) float64 {
	latest := map[string]float64{}
	for _, p := range points {
		if p.Name != "istio_requests_total" || p.Resource["k8s.namespace.name"] != ns ||
			p.Attributes["reporter"] != "waypoint" || p.Attributes["destination_service_namespace"] != ns {
			continue
		}
		key := fmt.Sprint(p.Attributes)
		latest[key] = p.Value
	}
	var total float64
	for _, v := range latest {
		total += v
	}
	return total
}
