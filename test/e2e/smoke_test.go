package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

const echoImage = "localhost/ambient-mesh/echo:dev"

// bulkImage holds hack/cmd/bulk (TCP sink, echo stream, DNS queries) and
// fortio (load generator and echo server); hack/images.sh builds it.
const bulkImage = "localhost/ambient-mesh/bulk:dev"

// echoManifest is a 2-replica Deployment of Istio's echo server and its Service.
func echoManifest(name, version string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s-%[2]s}
spec:
  replicas: %[3]d
  selector: {matchLabels: {app: %[1]s, version: %[2]s}}
  template:
    metadata: {labels: {app: %[1]s, version: %[2]s}}
    spec:
      containers:
      - name: echo
        image: %[4]s
        imagePullPolicy: Never
        args: ["--port=8080", "--tcp=9090", "--grpc=7070", "--version=%[2]s"]
        env:
        - name: INSTANCE_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        ports: [{containerPort: 8080}]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports:
  - {name: http, port: 80, targetPort: 8080}
`, name, version, replicas, echoImage)
}

const clientPod = `apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - name: client
    image: ` + echoImage + `
    imagePullPolicy: Never
    args: ["--port=8080"]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
`

var hostnameRE = regexp.MustCompile(`Hostname=(\S+)`)

// TestSmoke: a 2-replica echo Deployment behind a Service is reached by its
// DNS name from a client pod with kubectl exec, both replicas answer, and
// kubectl logs shows the server's output.
func TestSmoke(t *testing.T) {
	k := newKubectl(t)
	k.namespace = testNamespace(t, k, "smoke")
	k.must(echoManifest("echo", "v1", 2), "apply", "-f", "-")
	k.must(clientPod, "apply", "-f", "-")
	k.must("", "rollout", "status", "deployment/echo-v1", "--timeout=120s")
	k.must("", "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")

	url := fmt.Sprintf("http://echo.%s.svc.cluster.local/", k.namespace)
	seen := map[string]int{}
	eventually(t, 60*time.Second, "both replicas answer by DNS name", func() error {
		out, err := k.run(t.Context(), "", "exec", "client", "--", "/usr/local/bin/client", url,
			"--count=20", "--new-connection-per-request", "--timeout=5s")
		if err != nil {
			return err
		}
		for _, m := range hostnameRE.FindAllStringSubmatch(out, -1) {
			seen[m[1]]++
		}
		if len(seen) < 2 {
			return fmt.Errorf("answers came from %v, want 2 distinct pods", seen)
		}
		return nil
	})
	for host := range seen {
		if !strings.HasPrefix(host, "echo-v1-") {
			t.Errorf("answer from %q, want a pod of deployment echo-v1", host)
		}
	}

	// Short names resolve through the pod's search path as well.
	out := k.must("", "exec", "client", "--", "/usr/local/bin/client", "http://echo/", "--count=1")
	if !strings.Contains(out, "StatusCode=200") {
		t.Errorf("short name echo: want StatusCode=200, got:\n%s", out)
	}

	logs := k.must("", "logs", "deployment/echo-v1")
	if !strings.Contains(logs, "8080") {
		t.Errorf("kubectl logs of echo-v1 does not mention its port 8080:\n%s", logs)
	}
}
