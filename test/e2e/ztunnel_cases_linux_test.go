package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/enroll"
)

// bulkManifest is the bulk server (Deployment "bulk", Service "bulk" on TCP
// 9000, default service account) and a client pod running as service
// account "client", so that the two ends have distinct identities.
const bulkManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: bulk}
spec:
  replicas: 1
  selector: {matchLabels: {app: bulk}}
  template:
    metadata: {labels: {app: bulk}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: bulk
        image: ` + bulkImage + `
        imagePullPolicy: Never
        args: ["serve", "-listen=:9000"]
        ports: [{containerPort: 9000}]
        readinessProbe:
          tcpSocket: {port: 9000}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: bulk}
spec:
  selector: {app: bulk}
  ports:
  - {name: tcp, port: 9000, targetPort: 9000}
---
` + bulkClientManifest

// bulkClientManifest is the client pod, as service account "client".
const bulkClientManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  serviceAccountName: client
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: ` + bulkImage + `
    imagePullPolicy: Never
    args: ["serve", "-listen=:9000"]
    readinessProbe:
      tcpSocket: {port: 9000}
      periodSeconds: 1
`

// meshCases is the shared fixture of TestZtunnelCases: an ambient namespace
// with the bulk server and client, captured from their start.
type meshCases struct {
	k, app    *kubectl
	outside   *kubectl // a namespace outside the mesh, with a client pod
	ns        string
	clientIP  string
	serverIP  string
	serviceIP string
	principal string // the client's, as AuthorizationPolicy writes it
}

// TestZtunnelCases is issue #7's end-to-end list beyond TestZtunnel: what a
// capture of the server pod's interface sees, PeerAuthentication,
// AuthorizationPolicy on live connections, a 1 GiB transfer, istiod-lite
// away, a ztunnel rolling restart, and the DNS proxy. The subtests share
// one ambient namespace and run in order; RollingRestart and
// ControlPlaneDown disturb the mesh and restore it.
func TestZtunnelCases(t *testing.T) {
	k := newKubectl(t)
	installMesh(t, k)
	installCNI(t, k)

	ns := testNamespace(t, k, "ztc", enroll.LabelDataplaneMode+"="+enroll.DataplaneModeAmbient)
	app := *k
	app.namespace = ns
	app.must(bulkManifest, "apply", "-f", "-")
	app.must("", "rollout", "status", "deployment/bulk", "--timeout=120s")
	app.must("", "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")
	outside := *k
	outside.namespace = testNamespace(t, k, "ztc-out")
	outside.must(bulkClientManifest, "apply", "-f", "-")
	outside.must("", "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")
	mc := &meshCases{k: k, app: &app, outside: &outside, ns: ns,
		principal: fmt.Sprintf("cluster.local/ns/%s/sa/client", ns)}
	waitCaptured(t, &app, 60*time.Second, "app=bulk", "client")
	mc.clientIP = getPod(t, &app, "client").Status.PodIP
	mc.serverIP = listPods(t, &app, "app=bulk")[0].Status.PodIP
	mc.serviceIP = strings.TrimSpace(app.must("", "get", "service", "bulk", "-o", "jsonpath={.spec.clusterIP}"))
	// The first connection through the mesh may wait for the certificates.
	eventually(t, 60*time.Second, "client reaches bulk through the mesh", func() error {
		_, err := mc.send(t, "bulk:9000", 1<<20)
		return err
	})
	// The client outside the mesh goes through kube-proxy's rules for the
	// Service, which may trail the Endpoints the mesh path already used
	// (until then the Service has no endpoints there: connection refused).
	eventually(t, 60*time.Second, "a client outside the mesh reaches bulk", func() error {
		_, err := sendFrom(t, &outside, "client", fmt.Sprintf("bulk.%s:9000", ns), 1<<10)
		return err
	})

	t.Run("DNS", mc.testDNS)
	t.Run("Capture", mc.testCapture)
	t.Run("PeerAuthentication", mc.testPeerAuthentication)
	t.Run("AuthorizationDeny", mc.testAuthorizationDeny)
	t.Run("Transfer1GiB", mc.testTransfer)
	t.Run("ControlPlaneDown", mc.testControlPlaneDown)
	t.Run("RollingRestart", mc.testRollingRestart)
}

// sendResult is the JSON line of `bulk send`.
type sendResult struct {
	Bytes        int64   `json:"bytes"`
	SHA256       string  `json:"sha256"`
	ServerBytes  int64   `json:"server_bytes"`
	ServerSHA256 string  `json:"server_sha256"`
	Seconds      float64 `json:"seconds"`
	MBps         float64 `json:"mbps"`
}

// send runs `bulk send` in the client pod (extra flags after size) and
// checks the server got every byte with the same hash.
func (mc *meshCases) send(t *testing.T, addr string, size int64, extra ...string) (sendResult, error) {
	return sendFrom(t, mc.app, "client", addr, size, extra...)
}

func sendFrom(t *testing.T, k *kubectl, pod, addr string, size int64, extra ...string) (sendResult, error) {
	var res sendResult
	args := append([]string{"exec", pod, "--", "/usr/local/bin/bulk", "send", "-addr=" + addr,
		"-bytes=" + strconv.FormatInt(size, 10)}, extra...)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	out, err := k.run(ctx, "", args...)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return res, fmt.Errorf("bulk send printed %q: %w", out, err)
	}
	if res.ServerBytes != size || res.Bytes != size {
		return res, fmt.Errorf("sent %d bytes, server got %d, want %d", res.Bytes, res.ServerBytes, size)
	}
	if res.SHA256 != "-" && res.SHA256 != res.ServerSHA256 {
		return res, fmt.Errorf("sha256 sent %s, received %s", res.SHA256, res.ServerSHA256)
	}
	return res, nil
}

// dnsAnswer is a JSON line of `bulk dns`.
type dnsAnswer struct {
	Name  string   `json:"name"`
	Net   string   `json:"net"`
	Rcode string   `json:"rcode"`
	AA    bool     `json:"aa"`
	IPs   []string `json:"ips"`
	Error string   `json:"error"`
}

// testDNS: queries sent from the client pod to 192.0.2.53:53, where nothing
// listens (TEST-NET-1), are answered: the capture rules send the pod's port
// 53 to ztunnel's DNS proxy on 15053, so an answer at all proves the proxy
// answered. The service's short, namespace-qualified and full names resolve
// to its ClusterIP from the xDS state, over UDP and TCP. The "outside" name
// is one CoreDNS knows and xDS never holds: a pod A record
// (198-18-0-1.default.pod.cluster.local, which CoreDNS's `pods insecure`
// answers with 198.18.0.1): the proxy forwards it to its upstream
// (ztunnel's resolv.conf, the cluster's CoreDNS). An unknown name is
// forwarded too and comes back NXDOMAIN. Finally the pod's own resolver
// (resolv.conf and its search path) resolves the short name the same way.
func (mc *meshCases) testDNS(t *testing.T) {
	const blackhole = "192.0.2.53:53"
	outside := "198-18-0-1.default.pod.cluster.local"
	want := map[string]string{
		"bulk":                                 mc.serviceIP,
		"bulk." + mc.ns:                        mc.serviceIP,
		"bulk." + mc.ns + ".svc":               mc.serviceIP,
		"bulk." + mc.ns + ".svc.cluster.local": mc.serviceIP,
		outside:                                "198.18.0.1",
		"nowhere-" + mc.ns + ".svc.cluster.local": "NXDOMAIN",
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	for _, network := range []string{"udp", "tcp"} {
		out := mc.app.must("", append([]string{"exec", "client", "--", "/usr/local/bin/bulk", "dns",
			"-server=" + blackhole, "-net=" + network}, names...)...)
		got := map[string]dnsAnswer{}
		for line := range strings.Lines(out) {
			var a dnsAnswer
			if err := json.Unmarshal([]byte(line), &a); err != nil {
				t.Fatalf("bulk dns printed %q: %v", line, err)
			}
			got[a.Name] = a
		}
		for name, w := range want {
			a, ok := got[name]
			switch {
			case !ok:
				t.Errorf("%s %s: no answer line", network, name)
			case a.Error != "":
				t.Errorf("%s %s via %s: %s (not captured to ztunnel's DNS proxy?)", network, name, blackhole, a.Error)
			case w == "NXDOMAIN":
				if a.Rcode != "NXDOMAIN" {
					t.Errorf("%s %s: rcode %s %v, want NXDOMAIN", network, name, a.Rcode, a.IPs)
				}
			case a.Rcode != "NOERROR" || len(a.IPs) != 1 || a.IPs[0] != w:
				t.Errorf("%s %s: rcode %s, addresses %v; want [%s]", network, name, a.Rcode, a.IPs, w)
			}
		}
	}
	out := mc.app.must("", "exec", "client", "--", "/usr/local/bin/bulk", "dns", "-system", "bulk", outside)
	if !strings.Contains(out, `"ips":["`+mc.serviceIP+`"]`) || !strings.Contains(out, `"ips":["198.18.0.1"]`) {
		t.Errorf("the pod's resolver: got %s; want bulk -> %s and %s -> 198.18.0.1", out, mc.serviceIP, outside)
	}
}

// testCapture: while the client sends a plaintext marker to the server
// through the mesh, a packet capture on the server pod's host-side veth
// sees TCP to port 15008 and never the marker.
func (mc *meshCases) testCapture(t *testing.T) {
	server := listPods(t, mc.app, "app=bulk")[0]
	veth := hostVeth(t, server)
	marker := fmt.Sprintf("PLAINTEXT-MARKER-%d-", time.Now().UnixNano())
	cap := startCapture(t, veth, marker)
	if _, err := mc.send(t, "bulk:9000", 4<<20, "-marker="+marker); err != nil {
		t.Fatal(err)
	}
	st := cap.stop()
	t.Logf("capture on %s: %d frames, %d to or from port 15008, %d with the marker", veth.name, st.frames, st.hbone, st.marker)
	if st.marker != 0 {
		t.Errorf("%d frames on the server's veth carry the plaintext marker", st.marker)
	}
	// 4 MiB in frames of at most 64 KiB (GSO): at least 64 frames.
	if st.hbone < 64 {
		t.Errorf("%d frames to or from port 15008, want the 4 MiB to cross as HBONE", st.hbone)
	}
	if st.plainTCP != 0 {
		t.Errorf("%d TCP frames on port 9000 in clear (not kubelet's probes): %v", st.plainTCP, st.plainSamples)
	}

	// The capture can fail: a plaintext client outside the mesh (allowed
	// without a PeerAuthentication) shows the marker on the same veth.
	cap = startCapture(t, veth, marker)
	_, err := sendFrom(t, mc.outside, "client", fmt.Sprintf("bulk.%s:9000", mc.ns), 1<<20, "-marker="+marker)
	st = cap.stop()
	t.Logf("plaintext client outside the mesh: err %v; capture: %d frames, %d on port 9000, %d with the marker", err, st.frames, st.plainTCP, st.marker)
	if err != nil {
		t.Errorf("plaintext client outside the mesh: %v", err)
	} else if st.marker == 0 || st.plainTCP == 0 {
		t.Errorf("a plaintext client's data crossed the veth without the capture seeing it")
	}
}

// testPeerAuthentication: a client outside the mesh (a pod in a namespace
// that is not ambient) reaches the server in plaintext without a policy
// and with PERMISSIVE; STRICT refuses it while mesh clients keep working.
func (mc *meshCases) testPeerAuthentication(t *testing.T) {
	addr := fmt.Sprintf("bulk.%s:9000", mc.ns)
	sendOutside := func() error {
		_, err := sendFrom(t, mc.outside, "client", addr, 64<<10, "-timeout=5s")
		return err
	}
	if err := sendOutside(); err != nil {
		t.Fatalf("without PeerAuthentication, the outside client is refused: %v", err)
	}
	pa := func(mode string) string {
		return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: %s}
spec: {mtls: {mode: %s}}
`, mc.ns, mode)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = mc.app.run(ctx, "", "delete", "peerauthentication", "default", "--ignore-not-found")
	})
	mc.app.must(pa("STRICT"), "apply", "-f", "-")
	eventually(t, 30*time.Second, "STRICT refuses the plaintext client", func() error {
		if err := sendOutside(); err == nil {
			return fmt.Errorf("plaintext client outside the mesh still served")
		}
		return nil
	})
	if _, err := mc.send(t, "bulk:9000", 64<<10); err != nil {
		t.Errorf("mesh client under STRICT: %v", err)
	}
	mc.app.must(pa("PERMISSIVE"), "apply", "-f", "-")
	eventually(t, 30*time.Second, "PERMISSIVE lets the plaintext client in", sendOutside)
}

// testAuthorizationDeny: a DENY policy on the client's principal closes
// the client's open connection and refuses new ones; deleting it lets new
// connections through again.
func (mc *meshCases) testAuthorizationDeny(t *testing.T) {
	s := startStream(t, mc.app, "client", "bulk:9000")
	s.waitFlowing(t)
	policy := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: %s}
spec:
  selector: {matchLabels: {app: bulk}}
  action: DENY
  rules:
  - from: [{source: {principals: [%q]}}]
`, mc.ns, mc.principal)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = mc.app.run(ctx, "", "delete", "authorizationpolicy", "deny-client", "--ignore-not-found")
	})
	mc.app.must(policy, "apply", "-f", "-")
	eventually(t, 30*time.Second, "the open connection is closed by the DENY policy", func() error {
		if st := s.state(); !st.closed {
			return fmt.Errorf("stream still open: %s", st.last)
		}
		return nil
	})
	t.Logf("open connection: %s", s.state().last)
	if _, err := mc.send(t, "bulk:9000", 64<<10, "-timeout=5s"); err == nil {
		t.Errorf("a new connection from the denied principal was served")
	}
	mc.app.must("", "delete", "authorizationpolicy", "deny-client")
	eventually(t, 30*time.Second, "traffic restored after deleting the policy", func() error {
		_, err := mc.send(t, "bulk:9000", 64<<10, "-timeout=5s")
		return err
	})
}

// testTransfer: 1 GiB from the client to the server through the mesh
// arrives whole, compared by SHA-256.
func (mc *meshCases) testTransfer(t *testing.T) {
	res, err := mc.send(t, "bulk:9000", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("1 GiB through the mesh in %.1f s (%.0f MB/s, hashing both ends), sha256 %s", res.Seconds, res.MBps, res.SHA256)
}

// cpDownDuration is how long ControlPlaneDown keeps istiod-lite at zero
// replicas: issue #7 asks for 2 minutes; ZTUNNEL_E2E_CP_DOWN (a Go
// duration) shortens it for local runs.
func cpDownDuration(t *testing.T) time.Duration {
	if v := os.Getenv("ZTUNNEL_E2E_CP_DOWN"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("ZTUNNEL_E2E_CP_DOWN=%q: %v", v, err)
		}
		return d
	}
	return 2 * time.Minute
}

// testControlPlaneDown: with istiod-lite scaled to zero, an established
// connection keeps streaming and new connections between the known pods
// keep working, for the whole outage; istiod-lite is scaled back after.
func (mc *meshCases) testControlPlaneDown(t *testing.T) {
	down := cpDownDuration(t)
	sys := *mc.k
	sys.namespace = "istio-system"
	replicas := strings.TrimSpace(sys.must("", "get", "deployment", "istiod-lite", "-o", "jsonpath={.spec.replicas}"))
	s := startStream(t, mc.app, "client", "bulk:9000")
	s.waitFlowing(t)
	restore := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, err := sys.run(ctx, "", "scale", "deployment", "istiod-lite", "--replicas="+replicas); err != nil {
			t.Errorf("restore istiod-lite: %v", err)
		}
		if _, err := sys.run(ctx, "", "rollout", "status", "deployment/istiod-lite", "--timeout=150s"); err != nil {
			t.Errorf("istiod-lite back: %v", err)
		}
	}
	t.Cleanup(restore)
	sys.must("", "scale", "deployment", "istiod-lite", "--replicas=0")
	eventually(t, 60*time.Second, "istiod-lite pods gone", func() error {
		out, err := sys.run(t.Context(), "", "get", "pods", "-l", "app=istiod-lite", "-o", "name")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("still running: %s", out)
		}
		return nil
	})
	start := time.Now()
	n := 0
	for time.Since(start) < down {
		if _, err := mc.send(t, "bulk:9000", 1<<20, "-timeout=10s"); err != nil {
			t.Fatalf("new connection %s into the outage: %v", time.Since(start).Round(time.Second), err)
		}
		n++
		if st := s.state(); st.closed {
			t.Fatalf("the established connection closed %s into the outage: %s", time.Since(start).Round(time.Second), st.last)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(5 * time.Second):
		}
	}
	before := s.state().recv
	s.waitProgress(t, before)
	t.Logf("istiod-lite away %s: %d new connections served, the established one carried %d bytes", down, n, s.state().recv)
	restore()
	if _, err := mc.send(t, "bulk:9000", 1<<20); err != nil {
		t.Errorf("after istiod-lite came back: %v", err)
	}
}

// testRollingRestart restarts the ztunnel DaemonSet while a connection
// streams, and asserts that the connection survives with every byte
// (issue #7's target): with the surge strategy of manifests/ztunnel the
// new ztunnel listens beside the old one before the old one stops; the old
// one stops accepting and drains its connections for up to its grace
// period (300 s), so a connection shorter than that ends on its own
// terms. It also asserts that no new connection fails during the rollout,
// that the new ztunnel serves the pods over mTLS, and that the old ztunnel
// exits once its last connection ended.
func (mc *meshCases) testRollingRestart(t *testing.T) {
	sys := *mc.k
	sys.namespace = "istio-system"
	strategy := sys.must("", "get", "daemonset", "ztunnel", "-o", "jsonpath={.spec.updateStrategy.rollingUpdate}")
	old := strings.TrimSpace(sys.must("", "get", "pods", "-l", "app=ztunnel", "-o", "jsonpath={.items[*].metadata.name}"))
	// The stream stops writing after -duration and checks every byte came
	// back; the rollout (about 15 s) happens well inside it.
	s := startStream(t, mc.app, "client", "bulk:9000", "-duration=60s")
	s.waitFlowing(t)
	started := time.Now()
	// New connections all through the rollout: how long is the gap?
	probeCtx, stopProbe := context.WithCancel(t.Context())
	probes := make(chan rolloutProbes, 1)
	go func() { probes <- mc.probeNewConnections(probeCtx, t) }()
	sys.must("", "rollout", "restart", "daemonset/ztunnel")
	// The new ztunnel is ready while the old one drains. (`rollout status`
	// waits for the old pod to exit, which is when its last connection,
	// the stream, ends.)
	eventually(t, 120*time.Second, "new ztunnel ready", func() error {
		out, err := sys.run(t.Context(), "", "get", "pods", "-l", "app=ztunnel", "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return err
		}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] != old && f[1] == "True" {
				return nil
			}
		}
		return fmt.Errorf("ztunnel pods (name ready): %q, old %q", out, old)
	})
	rolled := time.Since(started)
	// The new ztunnel has the pods: new connections go through the mesh.
	eventually(t, 60*time.Second, "new connection after the restart", func() error {
		_, err := mc.send(t, "bulk:9000", 1<<20, "-timeout=10s")
		return err
	})
	stopProbe()
	pr := <-probes
	t.Logf("new connections during the rollout: %d served, %d failed, failures over %s (first: %s)", pr.ok, pr.failed, pr.gap().Round(100*time.Millisecond), pr.firstErr)
	if strings.Contains(strategy, `"maxSurge":1`) && pr.failed > 0 {
		t.Errorf("%d of %d new connections failed during a surge rollout, first: %s", pr.failed, pr.ok+pr.failed, pr.firstErr)
	}
	if pr.ok == 0 {
		t.Errorf("no new connection was served during the rollout")
	}
	// The long-lived connection keeps flowing with the new ztunnel in
	// charge and ends on its own, every byte back.
	afterRollout := s.state().recv
	s.waitProgress(t, afterRollout)
	// Once the new one has been available for minReadySeconds, the old
	// ztunnel is told to stop; the stream must keep flowing through it.
	eventually(t, 60*time.Second, "old ztunnel terminating", func() error {
		out, err := sys.run(t.Context(), "", "get", "pod", old, "-o", "jsonpath={.metadata.deletionTimestamp}")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "" {
			return fmt.Errorf("pod %s has no deletionTimestamp yet", old)
		}
		return nil
	})
	terminating := time.Since(started)
	// The new ztunnel serves the pods over mTLS. Until the old one is told
	// to stop, both listen (SO_REUSEPORT) in the pods and on 15020, and a
	// connection or a scrape may land on either; once it stops, it closes
	// its listeners, so a fresh connection and a fresh scrape reach the
	// new one.
	eventually(t, 30*time.Second, "the new ztunnel counts mTLS connections", func() error {
		if _, err := mc.send(t, "bulk:9000", 1024, "-timeout=10s"); err != nil {
			return err
		}
		series, err := scrapeZtunnelFresh(t.Context())
		if err != nil {
			return err
		}
		want := map[string]string{"reporter": "destination", "destination_workload_namespace": mc.ns,
			"connection_security_policy": "mutual_tls", "source_principal": "spiffe://" + mc.principal}
		if got := series.sum("istio_tcp_connections_opened_total", want); got < 1 {
			return fmt.Errorf("istio_tcp_connections_opened_total%v = %v", want, got)
		}
		return nil
	})
	s.waitProgress(t, s.state().recv)
	select {
	case <-s.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the long-lived stream did not end: %s", s.state().last)
	}
	st := s.state()
	survived := strings.HasPrefix(st.last, "done ") && st.sent == st.recv && st.recv > afterRollout
	outcome := fmt.Sprintf("SURVIVED: the long-lived connection kept streaming for %s after the old ztunnel was told to stop, then ended with all %d bytes back in order",
		st.closedAt.Sub(started.Add(terminating)).Round(100*time.Millisecond), st.recv)
	if !survived {
		lost := "every byte sent came back before the close"
		if st.sent != st.recv {
			lost = fmt.Sprintf("%d bytes sent never came back", st.sent-st.recv)
		}
		outcome = fmt.Sprintf("BROKEN: the long-lived connection closed %s after the restart began (%s): %s",
			st.closedAt.Sub(started).Round(100*time.Millisecond), lost, st.last)
		t.Errorf("long-lived connection across a ztunnel rolling restart: %s", outcome)
	}
	// With its last connection gone, the old ztunnel exits and the
	// rollout completes. A connection of another test still open through
	// it would keep it up to its grace period: report that, and end it so
	// the tests after this one find one ztunnel.
	oldGone := func() error {
		out, err := sys.run(t.Context(), "", "get", "pods", "-l", "app=ztunnel", "-o", "jsonpath={.items[*].metadata.name}")
		if err != nil {
			return err
		}
		if strings.Contains(out, old) || strings.TrimSpace(out) == "" {
			return fmt.Errorf("ztunnel pods: %q (old %q)", out, old)
		}
		return nil
	}
	exit := "exited once its last connection ended"
	for deadline := time.Now().Add(60 * time.Second); oldGone() != nil; time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			exit = "still draining other connections 60 s after the stream ended: deleted"
			t.Logf("old ztunnel %s %s", old, exit)
			_, _ = sys.run(t.Context(), "", "delete", "pod", old, "--grace-period=1", "--wait=false")
			break
		}
	}
	sys.must("", "rollout", "status", "daemonset/ztunnel", "--timeout=180s")
	eventually(t, 90*time.Second, "old ztunnel pod gone", oldGone)
	report := fmt.Sprintf("ztunnel rolling restart (rollingUpdate %s, new ztunnel ready %s, old ztunnel gone %s after the restart began, %s): %s; new connections during it: %d served, %d failed over %s",
		strategy, rolled.Round(time.Second), time.Since(started).Round(time.Second), exit, outcome, pr.ok, pr.failed, pr.gap().Round(100*time.Millisecond))
	t.Log(report)
	if path := os.Getenv("ZTUNNEL_E2E_REPORT"); path != "" {
		_ = os.WriteFile(path, []byte(report+"\n"), 0o644)
	}
}

// rolloutProbes counts new connections tried during a rollout.
type rolloutProbes struct {
	ok, failed          int
	firstFail, lastFail time.Time
	firstErr            string
}

// gap is the time between the first and the last failed probe.
func (p rolloutProbes) gap() time.Duration {
	if p.failed == 0 {
		return 0
	}
	return p.lastFail.Sub(p.firstFail)
}

// probeNewConnections opens one short connection after another from the
// client to the server until ctx ends.
func (mc *meshCases) probeNewConnections(ctx context.Context, t *testing.T) rolloutProbes {
	var p rolloutProbes
	for ctx.Err() == nil {
		out, err := mc.app.run(ctx, "", "exec", "client", "--", "/usr/local/bin/bulk", "send",
			"-addr=bulk:9000", "-bytes=1024", "-timeout=2s")
		if ctx.Err() != nil {
			break
		}
		var res sendResult
		if err == nil {
			err = json.Unmarshal([]byte(out), &res)
		}
		if err == nil && res.ServerBytes != 1024 {
			err = fmt.Errorf("server got %d of 1024 bytes", res.ServerBytes)
		}
		if err != nil {
			if p.failed == 0 {
				p.firstFail, p.firstErr = time.Now(), err.Error()
			}
			p.failed++
			p.lastFail = time.Now()
			continue
		}
		p.ok++
	}
	return p
}

// stream is a `bulk stream` running in a pod through kubectl exec: a
// long-lived echo connection whose every byte the client checks.
type stream struct {
	mu     sync.Mutex
	st     streamState
	cancel context.CancelFunc
	done   chan struct{}
}

type streamState struct {
	sent, recv int64
	closed     bool
	closedAt   time.Time
	last       string
}

var streamLineRE = regexp.MustCompile(`^(ok|closed|done) sent=(\d+) recv=(\d+)`)

func startStream(t *testing.T, k *kubectl, pod, addr string, args ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	full := []string{"--kubeconfig", k.kubeconfig, "-n", k.namespace, "exec", pod, "--",
		"/usr/local/bin/bulk", "stream", "-addr=" + addr}
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, k.bin, full...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start bulk stream: %v", err)
	}
	s := &stream{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			if m := streamLineRE.FindStringSubmatch(line); m != nil {
				s.st.last = line
				s.st.sent, _ = strconv.ParseInt(m[2], 10, 64)
				s.st.recv, _ = strconv.ParseInt(m[3], 10, 64)
				if !s.st.closed && m[1] != "ok" {
					s.st.closed, s.st.closedAt = true, time.Now()
				}
			}
			s.mu.Unlock()
		}
		werr := cmd.Wait()
		s.mu.Lock()
		if !s.st.closed {
			s.st.closed, s.st.closedAt = true, time.Now()
			s.st.last += fmt.Sprintf(" (kubectl exec ended: %v)", werr)
		}
		s.mu.Unlock()
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
		// Ending kubectl exec does not end the process in the pod: stop it,
		// so its connection does not outlive the test (it would hold a
		// draining ztunnel until its grace period ends).
		ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
		defer stop()
		_, _ = k.run(ctx, "", "exec", pod, "--", "/usr/local/bin/bulk", "stop-streams")
	})
	return s
}

func (s *stream) state() streamState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// waitFlowing waits until bytes come back on the stream.
func (s *stream) waitFlowing(t *testing.T) {
	t.Helper()
	s.waitProgress(t, 0)
}

// waitProgress waits until more than recv bytes came back.
func (s *stream) waitProgress(t *testing.T, recv int64) {
	t.Helper()
	eventually(t, 30*time.Second, "bytes flowing on the long-lived connection", func() error {
		st := s.state()
		if st.closed {
			return fmt.Errorf("stream closed: %s", st.last)
		}
		if st.recv <= recv {
			return fmt.Errorf("received %d bytes, waiting for more than %d", st.recv, recv)
		}
		return nil
	})
}
