package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/cni"
	"github.com/ambient-mesh/mesh/pkg/enroll"
	"github.com/ambient-mesh/mesh/pkg/nodeagent"
	"github.com/ambient-mesh/mesh/pkg/redirect"
	"github.com/ambient-mesh/mesh/pkg/zds"
	"github.com/vishvananda/netns"
	"istio.io/istio/pkg/zdsapi"
)

// The capture tests run as root on the cluster's only node: they read the
// node's CNI config and enter pods' network namespaces (pinned by containerd
// in netnsDir) to look at the rules, the way ztunnel would.
const (
	cniManifests  = "../../manifests/cni"
	cniNamespace  = "istio-system"
	hostConflist  = "/etc/cni/net.d/10-mesh-pods.conflist"
	netnsDir      = "/var/run/netns"
	nodeIP        = "198.18.0.1"
	firstConnName = "first-conn"
)

// TestCapture installs the CNI node agent (manifests/cni), then: running pods
// are captured when their namespace is labelled, without a restart; a new
// pod's very first outbound connection is captured; unlabelling releases the
// pods; uninstalling takes the plugin out of the node's CNI chain. A fake
// ztunnel (a pkg/zds Client in this process) receives the pods' netns, as
// the real one will.
func TestCapture(t *testing.T) {
	k := newKubectl(t)
	preinstalled := installCNI(t, k)
	zt := startFakeZtunnel(t)

	ns := testNamespace(t, k, "capture")
	app := *k
	app.namespace = ns
	app.must(echoManifest("echo", "v1", 2), "apply", "-f", "-")
	app.must("", "rollout", "status", "deployment/echo-v1", "--timeout=120s")
	before := listPods(t, &app, "app=echo")
	if len(before) != 2 {
		t.Fatalf("echo pods: got %d, want 2", len(before))
	}
	for _, p := range before {
		if p.annotation() != "" || podRulesInstalled(t, p) {
			t.Fatalf("pod %s is captured before its namespace is labelled", p.Metadata.Name)
		}
	}

	t.Run("RunningPodsCapturedOnLabel", func(t *testing.T) {
		app.must("", "label", "namespace", ns, enroll.LabelDataplaneMode+"="+enroll.DataplaneModeAmbient)
		eventually(t, 60*time.Second, "running pods annotated and with rules", func() error {
			for _, p := range listPods(t, &app, "app=echo") {
				if a := p.annotation(); a != enroll.RedirectionEnabled {
					return fmt.Errorf("pod %s: annotation %q, want %q (fake ztunnel connected)", p.Metadata.Name, a, enroll.RedirectionEnabled)
				}
				if !podRulesInstalled(t, p) {
					return fmt.Errorf("pod %s: no capture rules in its netns", p.Metadata.Name)
				}
			}
			return nil
		})
		after := listPods(t, &app, "app=echo")
		for i, p := range after {
			if p.Metadata.UID != before[i].Metadata.UID || p.restarts() != 0 {
				t.Errorf("pod %s was replaced or restarted by capture (uid %s -> %s, restarts %d)", p.Metadata.Name, before[i].Metadata.UID, p.Metadata.UID, p.restarts())
			}
			if !zt.has(p.Metadata.UID) {
				t.Errorf("pod %s was not handed to ztunnel", p.Metadata.Name)
			}
		}
		// kubelet's readiness probes (every second) keep passing: the node
		// SNATs them to the probe address the pod rules let through.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			for _, p := range listPods(t, &app, "app=echo") {
				if !p.ready() {
					t.Fatalf("pod %s is not Ready under capture: kubelet probes are redirected", p.Metadata.Name)
				}
			}
		}
		// A connection from inside the pod lands on 15001 in the pod, with
		// the original destination recovered; the destination never sees it.
		host := hostListener(t)
		for _, p := range after {
			got := dialFromPod(t, p, host)
			if got.redirectedTo != host.addr {
				t.Errorf("pod %s: connection to %s: redirected with original dst %v, want it captured on 15001", p.Metadata.Name, host.addr, got.redirectedTo)
			}
		}
		if c := host.accepted(); c != 0 {
			t.Errorf("the destination accepted %d connections from captured pods", c)
		}
	})

	t.Run("NewPodFirstConnectionCaptured", func(t *testing.T) {
		// The pod's only container connects once, at start, to a listener on
		// the node. The fake ztunnel opens 15001 in the pod's netns when the
		// agent hands it over, during the CNI ADD, so before the container.
		host := hostListener(t)
		app.must(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: %s
    imagePullPolicy: Never
    command: [/usr/local/bin/client]
    args: ["tcp://%s", "--timeout=3s"]
`, firstConnName, echoImage, host.addr), "apply", "-f", "-")
		var orig netip.AddrPort
		select {
		case orig = <-zt.firstConn:
		case <-time.After(90 * time.Second):
			t.Fatalf("no connection from pod %s reached its 15001 listener", firstConnName)
		case <-t.Context().Done():
			return
		}
		if orig != host.addr {
			t.Errorf("first connection: original dst %v, want %v", orig, host.addr)
		}
		if c := host.accepted(); c != 0 {
			t.Errorf("the first connection bypassed capture: destination accepted %d", c)
		}
		p := getPod(t, &app, firstConnName)
		if a := p.annotation(); a != enroll.RedirectionEnabled {
			t.Errorf("new pod annotation %q, want %q", a, enroll.RedirectionEnabled)
		}
	})

	t.Run("UnlabelReleases", func(t *testing.T) {
		app.must("", "label", "namespace", ns, enroll.LabelDataplaneMode+"-")
		eventually(t, 60*time.Second, "pods released", func() error {
			for _, p := range listPods(t, &app, "app=echo") {
				if a := p.annotation(); a != "" {
					return fmt.Errorf("pod %s: annotation %q still there", p.Metadata.Name, a)
				}
				if podRulesInstalled(t, p) {
					return fmt.Errorf("pod %s: capture rules still in its netns", p.Metadata.Name)
				}
			}
			return nil
		})
		host := hostListener(t)
		for _, p := range listPods(t, &app, "app=echo") {
			if got := dialFromPod(t, p, host); got.err != nil || got.redirectedTo.IsValid() {
				t.Errorf("pod %s after unlabel: got %+v, want a direct connection", p.Metadata.Name, got)
			}
			if zt.has(p.Metadata.UID) {
				t.Errorf("pod %s still held by ztunnel after unlabel", p.Metadata.Name)
			}
		}
		if c := host.accepted(); c != 2 {
			t.Errorf("destination accepted %d connections, want 2 (one per pod)", c)
		}
	})

	t.Run("AgentRestartKeepsPlugin", func(t *testing.T) {
		// A restart (or upgrade) of the agent is not an uninstall: the plugin
		// stays in the chain, so no pod can start uncaptured meanwhile.
		old := strings.TrimSpace(k.must("", "-n", cniNamespace, "get", "pods", "-l", "app=ambient-cni", "-o", "name"))
		k.must("", "-n", cniNamespace, "delete", old, "--wait=false")
		eventually(t, 120*time.Second, "a new agent pod ready", func() error {
			b, err := os.ReadFile(hostConflist)
			if err != nil {
				return err
			}
			if !cni.HasPlugin(b) {
				t.Fatalf("plugin left the CNI chain while the agent restarted")
			}
			out, err := k.run(t.Context(), "", "-n", cniNamespace, "get", "pods", "-l", "app=ambient-cni",
				"-o", `jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].ready}{"\n"}{end}`)
			if err != nil {
				return err
			}
			lines := strings.Fields(strings.TrimSpace(out))
			if len(lines) != 2 || "pod/"+lines[0] == old || lines[1] != "true" {
				return fmt.Errorf("agent pods: %q (old %s)", out, old)
			}
			return nil
		})
		if b, _ := os.ReadFile(hostConflist); !cni.HasPlugin(b) {
			t.Error("plugin not in the CNI chain after the agent restarted")
		}
	})

	t.Run("Uninstall", func(t *testing.T) {
		if preinstalled {
			t.Skip("the node agent was installed before this test (the cluster is shared): not uninstalling it under others")
		}
		uninstallCNI(t, k)
		b, err := os.ReadFile(hostConflist)
		if err != nil {
			t.Fatal(err)
		}
		if cni.HasPlugin(b) {
			t.Errorf("%s still chains %s after uninstall:\n%s", hostConflist, cni.PluginType, b)
		}
		var doc struct {
			Plugins []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal(b, &doc); err != nil || len(doc.Plugins) != 2 {
			t.Errorf("conflist after uninstall is not the original ptp+portmap chain (err %v):\n%s", err, b)
		}
	})
}

// installCNI applies manifests/cni, unless the agent is installed already
// (by another test or a person on the shared cluster: it reports true), and
// waits until the plugin is in the node's chain. If it installed the agent,
// a cleanup uninstalls it (the Uninstall subtest does it first, and checks).
func installCNI(t *testing.T, k *kubectl) (preinstalled bool) {
	t.Helper()
	if _, err := k.run(t.Context(), "", "create", "namespace", cniNamespace); err != nil && !strings.Contains(err.Error(), "AlreadyExists") {
		t.Fatal(err)
	}
	_, err := k.run(t.Context(), "", "-n", cniNamespace, "get", "daemonset", "ambient-cni")
	preinstalled = err == nil
	if !preinstalled {
		k.must("", "apply", "-k", cniManifests)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Idempotent: after the Uninstall subtest there is nothing left.
			if _, err := k.run(ctx, "", "delete", "-k", cniManifests, "--ignore-not-found", "--wait=true", "--timeout=90s"); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
	k.must("", "-n", cniNamespace, "rollout", "status", "daemonset/ambient-cni", "--timeout=120s")
	eventually(t, 60*time.Second, "plugin in the node's CNI chain", func() error {
		b, err := os.ReadFile(hostConflist)
		if err != nil {
			return err
		}
		if !cni.HasPlugin(b) {
			return fmt.Errorf("%s does not chain %s", hostConflist, cni.PluginType)
		}
		return nil
	})
	return preinstalled
}

func uninstallCNI(t *testing.T, k *kubectl) {
	t.Helper()
	k.must("", "delete", "-k", cniManifests, "--ignore-not-found", "--wait=true", "--timeout=90s")
	eventually(t, 90*time.Second, "agent pods gone", func() error {
		out, err := k.run(t.Context(), "", "-n", cniNamespace, "get", "pods", "-l", "app=ambient-cni", "-o", "name")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("still running: %s", out)
		}
		return nil
	})
	eventually(t, 30*time.Second, "plugin out of the node's CNI chain", func() error {
		b, err := os.ReadFile(hostConflist)
		if err != nil {
			return err
		}
		if cni.HasPlugin(b) {
			return errors.New("still chained")
		}
		return nil
	})
}

// pod is the part of a Pod the tests read.
type pod struct {
	Metadata struct {
		Name        string            `json:"name"`
		UID         string            `json:"uid"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Status struct {
		PodIP      string `json:"podIP"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
		ContainerStatuses []struct {
			RestartCount int `json:"restartCount"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

func (p pod) annotation() string { return p.Metadata.Annotations[enroll.AnnotationRedirection] }

func (p pod) restarts() int {
	n := 0
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

func (p pod) ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func listPods(t *testing.T, k *kubectl, selector string) []pod {
	t.Helper()
	var list struct {
		Items []pod `json:"items"`
	}
	if err := json.Unmarshal([]byte(k.must("", "get", "pods", "-l", selector, "-o", "json", "--sort-by=.metadata.name")), &list); err != nil {
		t.Fatalf("parse pods: %v", err)
	}
	return list.Items
}

// waitCaptured waits until the pods matching selector and the named pods
// all carry ztunnel's redirection annotation.
func waitCaptured(t *testing.T, k *kubectl, timeout time.Duration, selector string, names ...string) {
	t.Helper()
	eventually(t, timeout, "pods captured by ztunnel", func() error {
		pods := listPods(t, k, selector)
		for _, n := range names {
			pods = append(pods, getPod(t, k, n))
		}
		for _, p := range pods {
			if a := p.annotation(); a != enroll.RedirectionEnabled {
				return fmt.Errorf("pod %s: annotation %q, want %q", p.Metadata.Name, a, enroll.RedirectionEnabled)
			}
		}
		return nil
	})
}

func getPod(t *testing.T, k *kubectl, name string) pod {
	t.Helper()
	var p pod
	if err := json.Unmarshal([]byte(k.must("", "get", "pod", name, "-o", "json")), &p); err != nil {
		t.Fatalf("parse pod: %v", err)
	}
	return p
}

// podNetns opens the pod's network namespace, found by its IP among those
// containerd pinned.
func podNetns(t *testing.T, p pod) netns.NsHandle {
	t.Helper()
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		t.Fatalf("pod %s has no IP: %v", p.Metadata.Name, err)
	}
	path, err := (&nodeagent.NetnsIndex{Dir: netnsDir}).Find(ip)
	if err != nil {
		t.Fatalf("pod %s: %v", p.Metadata.Name, err)
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func podRulesInstalled(t *testing.T, p pod) bool {
	t.Helper()
	ok, err := redirect.Installed(podNetns(t, p))
	if err != nil {
		t.Fatalf("pod %s: read rules: %v", p.Metadata.Name, err)
	}
	return ok
}

// listener is a TCP listener on the node's IP, in the node's netns, counting
// the connections it accepts.
type listener struct {
	addr netip.AddrPort
	mu   sync.Mutex
	n    int
}

func (l *listener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func hostListener(t *testing.T) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", nodeIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	l.addr = netip.AddrPortFrom(l.addr.Addr().Unmap(), l.addr.Port())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			l.n++
			l.mu.Unlock()
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return l
}

// dialResult is what dialFromPod saw.
type dialResult struct {
	redirectedTo netip.AddrPort // original dst seen on the pod's 15001; invalid if none
	err          error
}

// dialFromPod connects from a socket inside the pod's netns to dst while a
// listener of ours waits on 15001 in the same netns, as ztunnel would.
func dialFromPod(t *testing.T, p pod, dst *listener) dialResult {
	t.Helper()
	h := podNetns(t, p)
	ln, err := redirect.Listen(t.Context(), h, "tcp", fmt.Sprintf(":%d", redirect.OutboundPort), redirect.SocketOptions{Mark: redirect.ZtunnelMark})
	if err != nil {
		t.Fatalf("pod %s: listen on %d: %v", p.Metadata.Name, redirect.OutboundPort, err)
	}
	defer ln.Close()
	got := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		o, _ := redirect.OriginalDst(c)
		got <- o
	}()
	c, err := redirect.Dial(t.Context(), h, net.Dialer{Timeout: 5 * time.Second}, "tcp", dst.addr.String(), redirect.SocketOptions{})
	if err != nil {
		return dialResult{err: err}
	}
	defer c.Close()
	select {
	case o := <-got:
		return dialResult{redirectedTo: o}
	case <-time.After(2 * time.Second):
		// Connected, and not through our listener: it went straight out.
		return dialResult{}
	}
}

// fakeZtunnel is a pkg/zds Client standing in for ztunnel: it records the
// pods it holds and, for the pod named firstConnName, opens 15001 in the
// pod's netns before acknowledging it, and reports the first connection's
// original destination on firstConn.
type fakeZtunnel struct {
	t         *testing.T
	mu        sync.Mutex
	pods      map[string]*os.File
	listeners []net.Listener
	firstConn chan netip.AddrPort
}

func startFakeZtunnel(t *testing.T) *fakeZtunnel {
	t.Helper()
	z := &fakeZtunnel{t: t, pods: map[string]*os.File{}, firstConn: make(chan netip.AddrPort, 10)}
	c := &zds.Client{Path: zds.DefaultSocketPath, Handler: z, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}
	ctx := t.Context()
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }() //nolint:errcheck // returns nil when ctx ends
	t.Cleanup(func() {
		<-done
		z.mu.Lock()
		defer z.mu.Unlock()
		for _, l := range z.listeners {
			l.Close()
		}
		for _, f := range z.pods {
			f.Close()
		}
	})
	return z
}

func (z *fakeZtunnel) has(uid string) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	_, ok := z.pods[uid]
	return ok
}

func (z *fakeZtunnel) AddWorkload(uid string, info *zdsapi.WorkloadInfo, ns *os.File) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if old := z.pods[uid]; old != nil {
		old.Close()
	}
	z.pods[uid] = ns
	if info.GetName() != firstConnName {
		return nil
	}
	ln, err := redirect.Listen(z.t.Context(), netns.NsHandle(ns.Fd()), "tcp", fmt.Sprintf(":%d", redirect.OutboundPort), redirect.SocketOptions{Mark: redirect.ZtunnelMark, ReusePort: true})
	if err != nil {
		return fmt.Errorf("listen on %d in pod %s: %w", redirect.OutboundPort, info.GetName(), err)
	}
	z.listeners = append(z.listeners, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if o, err := redirect.OriginalDst(c); err == nil {
				select {
				case z.firstConn <- o:
				default:
				}
			}
			c.Close()
		}
	}()
	return nil
}

func (z *fakeZtunnel) KeepWorkload(string) error { return nil }

func (z *fakeZtunnel) DelWorkload(uid string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if f := z.pods[uid]; f != nil {
		f.Close()
		delete(z.pods, uid)
	}
	return nil
}

func (z *fakeZtunnel) SnapshotSent() error { return nil }
