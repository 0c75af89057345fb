package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/enroll"
)

// waypointApp is the canary setup of the waypoint samples: Service echo over
// echo-v1 (2 replicas) and echo-v2 (1 replica), the per-version Services the
// routes send to, and Service plain over the same pods that no waypoint
// serves. Each echo server answers HTTP on 8080 and gRPC on 7070.
const waypointApp = `apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 7070, targetPort: 7070}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1}
spec:
  selector: {app: echo, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2}
spec:
  selector: {app: echo, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
`

// echoDeployment is one version of the echo server, without a Service.
func echoDeployment(version string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-%[1]s}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: echo, version: %[1]s}}
  template:
    metadata: {labels: {app: echo, version: %[1]s}}
    spec:
      containers:
      - name: echo
        image: %[3]s
        imagePullPolicy: Never
        args: ["--port=8080", "--grpc=7070", "--version=%[1]s"]
        env:
        - name: INSTANCE_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
`, version, replicas, echoImage)
}

// brokenEchoV1 is a pod of Service echo-v1 that answers every request with
// 503: fortio's echo server with status=503 as its default parameters.
const brokenEchoV1 = `apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v1-broken}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: v1, broken: "true"}}
  template:
    metadata: {labels: {app: echo, version: v1, broken: "true"}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: fortio
        image: localhost/ambient-mesh/bulk:dev
        imagePullPolicy: Never
        command: ["/usr/local/bin/fortio", "server", "-http-port=8080", "-grpc-port=disabled", "-redirect-port=disabled", "-echo-server-default-params=status=503", "-logger-json=false"]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
`

var (
	versionRE = regexp.MustCompile(`ServiceVersion=(\S+)`)
	statusRE  = regexp.MustCompile(`StatusCode=(\d+)`)
)

// echoResult counts what the echo client printed for a batch of requests.
type echoResult struct {
	versions map[string]int
	codes    map[string]int
	out      string
	err      error
}

func (r echoResult) ok() int { return r.codes["200"] }

func (r echoResult) String() string {
	return fmt.Sprintf("versions %v, status codes %v, client error %v", r.versions, r.codes, r.err)
}

// echoClient runs Istio's echo client in the client pod; flags are passed
// as given. The client exits non-zero when any request fails, so the result
// carries what it printed either way.
func echoClient(ctx context.Context, k *kubectl, url string, flags ...string) echoResult {
	args := append([]string{"exec", "client", "--", "/usr/local/bin/client", url}, flags...)
	out, err := k.run(ctx, "", args...)
	r := echoResult{versions: map[string]int{}, codes: map[string]int{}, out: out, err: err}
	for _, m := range versionRE.FindAllStringSubmatch(out, -1) {
		r.versions[m[1]]++
	}
	for _, m := range statusRE.FindAllStringSubmatch(out, -1) {
		r.codes[m[1]]++
	}
	return r
}

// applySample applies manifests/samples/waypoint/<name> in the namespace.
func applySample(t *testing.T, k *kubectl, name string) {
	t.Helper()
	root, err := filepath.Abs("../../manifests/samples/waypoint")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	k.must(string(b), "apply", "-f", "-")
}

// TestWaypoint is issue #8's end-to-end case, with the samples in
// manifests/samples/waypoint: a waypoint Gateway deployed by istiod-lite,
// Service echo labelled to use it, then HTTPRoutes applied with kubectl:
// a 90/10 canary measured over 2,000 requests, shifted to 0/100 under load
// without a failed request, header-match routing, retries that hide a
// backend failing half its requests, a request timeout answered 504 on
// time, a mirror that receives copies while the client sees only the
// primary, gRPC through the waypoint, and a Service without a waypoint left
// untouched.
func TestWaypoint(t *testing.T) {
	k := newKubectl(t)
	installMesh(t, k)
	installCNI(t, k)

	ns := testNamespace(t, k, "wp", enroll.LabelDataplaneMode+"="+enroll.DataplaneModeAmbient)
	app := *k
	app.namespace = ns
	app.must(waypointApp+"---\n"+echoDeployment("v1", 2)+"---\n"+echoDeployment("v2", 1)+"---\n"+clientPod, "apply", "-f", "-")
	for _, d := range []string{"echo-v1", "echo-v2"} {
		app.must("", "rollout", "status", "deployment/"+d, "--timeout=180s")
	}
	app.must("", "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")
	waitCaptured(t, &app, 90*time.Second, "app=echo", "client")

	// The waypoint: istiod-lite deploys it and reports it Programmed.
	applySample(t, &app, "gateway.yaml")
	app.must("", "wait", "--for=condition=Programmed", "gateway/waypoint", "--timeout=180s")
	app.must("", "rollout", "status", "deployment/waypoint", "--timeout=180s")
	app.must("", "label", "service", "echo", "istio.io/use-waypoint=waypoint")

	url := fmt.Sprintf("http://echo.%s.svc.cluster.local/", ns)
	applySample(t, &app, "canary-90-10.yaml")
	app.must("", "wait", "--for=jsonpath={.status.parents[0].conditions[?(@.type==\"Accepted\")].status}=True", "httproute/echo-canary", "--timeout=60s")
	// The route is in place once a batch shows a v2 share plausible for
	// 90/10 (round robin over the 2 v1 and 1 v2 pods would give a third)
	// and the waypoint's metrics counted it.
	eventually(t, 90*time.Second, "the waypoint serves the canary route", func() error {
		r := echoClient(t.Context(), &app, url, "--count=50", "--timeout=5s")
		if r.ok() != 50 {
			return fmt.Errorf("batch of 50: %v", r)
		}
		if r.versions["v2"] > 15 {
			return fmt.Errorf("v2 answered %d of 50: the route is not applied yet", r.versions["v2"])
		}
		return waypointCounted(t, &app, ns, 50)
	})

	t.Run("Canary90to10", func(t *testing.T) {
		const n = 2000
		r := echoClient(t.Context(), &app, url, fmt.Sprintf("--count=%d", n), "--timeout=120s")
		if r.ok() != n {
			t.Fatalf("%d of %d requests answered 200: %v", r.ok(), n, r)
		}
		share := 100 * float64(r.versions["v2"]) / n
		t.Logf("90/10 canary over %d requests: v1 %d, v2 %d (v2 %.1f%%)", n, r.versions["v1"], r.versions["v2"], share)
		if share < 7 || share > 13 {
			t.Fatalf("v2 share %.1f%%, want 10 ± 3 points (%v)", share, r)
		}
	})

	t.Run("ShiftTo0_100WithoutFailures", func(t *testing.T) {
		// Traffic runs while the route changes; every request must succeed.
		done := make(chan echoResult, 1)
		go func() { done <- echoClient(t.Context(), &app, url, "--count=600", "--qps=60", "--timeout=120s") }()
		time.Sleep(2 * time.Second) // let the load start before the change; it lasts ~10 s
		applySample(t, &app, "canary-0-100.yaml")
		r := <-done
		if r.ok() != 600 || r.err != nil {
			t.Fatalf("during the shift %d of 600 requests answered 200: %v", r.ok(), r)
		}
		eventually(t, 30*time.Second, "all traffic on v2", func() error {
			r := echoClient(t.Context(), &app, url, "--count=100", "--timeout=5s")
			if r.versions["v2"] != 100 {
				return fmt.Errorf("after 0/100: %v", r)
			}
			return nil
		})
	})

	t.Run("HeaderMatch", func(t *testing.T) {
		applySample(t, &app, "header-match.yaml")
		eventually(t, 30*time.Second, "x-canary: true routed to v2, the rest to v1", func() error {
			canary := echoClient(t.Context(), &app, url, "--count=30", "-H", "x-canary:true", "--timeout=5s")
			rest := echoClient(t.Context(), &app, url, "--count=30", "--timeout=5s")
			if canary.versions["v2"] != 30 || rest.versions["v1"] != 30 {
				return fmt.Errorf("with header: %v; without: %v", canary, rest)
			}
			return nil
		})
	})

	t.Run("RetriesHideHalfFailingBackend", func(t *testing.T) {
		// echo-v1 becomes one good pod and one that answers every request
		// 503 (fortio's server with status=503 as its default), so half
		// the requests fail without retries; with attempts: 3 the client
		// must not see them.
		app.must("", "scale", "deployment/echo-v1", "--replicas=1")
		app.must(brokenEchoV1, "apply", "-f", "-")
		t.Cleanup(func() {
			_, _ = app.run(context.Background(), "", "delete", "deployment/echo-v1-broken", "--wait=false")
			_, _ = app.run(context.Background(), "", "scale", "deployment/echo-v1", "--replicas=2")
		})
		app.must("", "rollout", "status", "deployment/echo-v1", "--timeout=120s")
		app.must("", "rollout", "status", "deployment/echo-v1-broken", "--timeout=120s")
		eventually(t, 60*time.Second, "without retries about half the requests fail", func() error {
			r := echoClient(t.Context(), &app, url, "--count=40", "--timeout=30s")
			if r.codes["503"] < 10 || r.ok() < 10 {
				return fmt.Errorf("want both 200s and 503s (the test would prove nothing): %v", r)
			}
			return nil
		})
		applySample(t, &app, "retry.yaml")
		eventually(t, 30*time.Second, "retry route in place", func() error {
			if r := echoClient(t.Context(), &app, url, "--count=40", "--timeout=30s"); r.ok() != 40 {
				return fmt.Errorf("%v", r)
			}
			return nil
		})
		const n = 1000
		r := echoClient(t.Context(), &app, url, fmt.Sprintf("--count=%d", n), "--timeout=120s")
		rate := 100 * float64(r.ok()) / n
		t.Logf("backend failing 50%% with 503, attempts 3: %d/%d succeeded (%.2f%%)", r.ok(), n, rate)
		if rate < 99.9 {
			t.Fatalf("success %.2f%%, want >= 99.9%%: %v", rate, r)
		}
	})

	t.Run("RequestTimeout504", func(t *testing.T) {
		applySample(t, &app, "timeout.yaml")
		eventually(t, 30*time.Second, "a 2 s request answered 504 after the 500 ms timeout", func() error {
			start := time.Now()
			r := echoClient(t.Context(), &app, url+"?delay=2s", "--count=1", "--timeout=10s")
			took := time.Since(start)
			if r.codes["504"] != 1 {
				return fmt.Errorf("want 504: %v\n%s", r, r.out)
			}
			// kubectl exec itself costs a few hundred ms; the backend's 2 s
			// would show.
			if took > 1800*time.Millisecond {
				return fmt.Errorf("504 came after %s, want about 500 ms", took)
			}
			return nil
		})
		if r := echoClient(t.Context(), &app, url, "--count=10", "--timeout=5s"); r.ok() != 10 {
			t.Fatalf("fast requests under the timeout route: %v", r)
		}
	})

	t.Run("Mirror", func(t *testing.T) {
		applySample(t, &app, "mirror.yaml")
		probe := fmt.Sprintf("mirror-probe-%d", time.Now().UnixNano())
		eventually(t, 60*time.Second, "v1 answers and v2 receives the mirrored copies", func() error {
			r := echoClient(t.Context(), &app, url, "--count=20", "-H", "x-probe:"+probe, "--timeout=5s")
			if r.versions["v1"] != 20 {
				return fmt.Errorf("the client must see only the primary (v1): %v", r)
			}
			logs, err := app.run(t.Context(), "", "logs", "deployment/echo-v2", "--since=5m")
			if err != nil {
				return err
			}
			if !strings.Contains(logs, probe) {
				return fmt.Errorf("echo-v2's log has no request with x-probe %s", probe)
			}
			return nil
		})
	})

	t.Run("GRPC", func(t *testing.T) {
		grpcURL := fmt.Sprintf("grpc://echo.%s.svc.cluster.local:7070", ns)
		var before float64
		if s, err := scrapeWaypoint(t, &app); err == nil {
			before = s.sum("istio_requests_total", map[string]string{"reporter": "waypoint", "request_protocol": "grpc"})
		}
		r := echoClient(t.Context(), &app, grpcURL, "--count=20", "--timeout=5s")
		if r.ok() != 20 {
			t.Fatalf("gRPC through the waypoint: %v\n%s", r, r.out)
		}
		eventually(t, 30*time.Second, "the waypoint counted the gRPC requests", func() error {
			s, err := scrapeWaypoint(t, &app)
			if err != nil {
				return err
			}
			if got := s.sum("istio_requests_total", map[string]string{"reporter": "waypoint", "request_protocol": "grpc"}); got-before < 20 {
				return fmt.Errorf("istio_requests_total{request_protocol=grpc} grew by %v, want >= 20", got-before)
			}
			return nil
		})
	})

	t.Run("ServiceWithoutWaypointUntouched", func(t *testing.T) {
		plainURL := fmt.Sprintf("http://plain.%s.svc.cluster.local/", ns)
		host := fmt.Sprintf("plain.%s.svc.cluster.local", ns)
		r := echoClient(t.Context(), &app, plainURL, "--count=60", "--timeout=5s")
		if r.ok() != 60 || r.versions["v1"] == 0 || r.versions["v2"] == 0 {
			t.Fatalf("Service plain (no waypoint) must reach every endpoint: %v", r)
		}
		s, err := scrapeWaypoint(t, &app)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.sum("istio_requests_total", map[string]string{"destination_service": host}); got != 0 {
			t.Fatalf("the waypoint counted %v requests for %s, which does not use it", got, host)
		}
	})
}

// waypointCounted checks the waypoint's metrics count at least n requests
// to the namespace's Services. As Envoy's do, they name the Service the
// route chose (echo-v1, echo-v2) as destination_service.
func waypointCounted(t *testing.T, k *kubectl, ns string, n float64) error {
	s, err := scrapeWaypoint(t, k)
	if err != nil {
		return err
	}
	want := map[string]string{"reporter": "waypoint", "destination_service_namespace": ns}
	if got := s.sum("istio_requests_total", want); got < n {
		return fmt.Errorf("waypoint istio_requests_total%v = %v, want >= %v", want, got, n)
	}
	return nil
}

// scrapeWaypoint reads the metrics of the (single) waypoint pod: the tests
// run on the node, which routes to pod IPs.
func scrapeWaypoint(t *testing.T, k *kubectl) (metricSeries, error) {
	pods := listPods(t, k, "gateway.networking.k8s.io/gateway-name=waypoint")
	if len(pods) == 0 {
		return nil, fmt.Errorf("no waypoint pod")
	}
	return scrapeURL(t.Context(), "http://"+pods[0].Status.PodIP+":15020/metrics")
}
