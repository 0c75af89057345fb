package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/testenv"
	"github.com/ambient-mesh/mesh/pkg/cni"
	"github.com/ambient-mesh/mesh/pkg/enroll"
	"github.com/ambient-mesh/mesh/pkg/redirect"
	"github.com/ambient-mesh/mesh/pkg/zds"
	"github.com/vishvananda/netns"
	"istio.io/istio/pkg/zdsapi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

var nsSeq atomic.Int64

// newNetns creates a named netns with loopback up and ip on lo, and links it
// into dir (the "runtime's" netns directory) when dir is not empty.
func newNetns(t *testing.T, dir, ip string) string {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.Unavailable(t, "needs the ip binary: %v", err)
	}
	name := fmt.Sprintf("nat%d-%d", os.Getpid(), nsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	if ip != "" {
		run(t, "ip", "-n", name, "addr", "add", ip+"/32", "dev", "lo")
	}
	path := "/run/netns/" + name
	if dir != "" {
		link := filepath.Join(dir, name)
		if err := os.Symlink(path, link); err != nil {
			t.Fatal(err)
		}
		return link
	}
	return path
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func installed(t *testing.T, path string) bool {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ok, err := redirect.Installed(h)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testPod(name, uid, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", UID: ktypes.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// recorder is a ztunnel stand-in that records what it is told.
type recorder struct {
	mu   sync.Mutex
	pods map[string]string // uid -> pod name
}

func (r *recorder) AddWorkload(uid string, info *zdsapi.WorkloadInfo, ns *os.File) error {
	ns.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods[uid] = info.GetName()
	return nil
}
func (r *recorder) KeepWorkload(string) error { return nil }
func (r *recorder) DelWorkload(uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pods, uid)
	return nil
}
func (r *recorder) SnapshotSent() error { return nil }
func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.pods)
}

func (r *recorder) has(uid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.pods[uid]
	return ok
}

// TestAgent runs the agent against a fake API server with "pods" that are
// network namespaces this test creates: a running pod is captured when its
// namespace is labelled, handed to ztunnel when one connects (annotation
// pending, then enabled), a new pod is captured through the CNI socket, and
// unlabelling releases the running pod.
func TestAgent(t *testing.T) {
	dir := t.TempDir()
	netnsDir := filepath.Join(dir, "netns")
	os.Mkdir(netnsDir, 0o755)
	hostNS := newNetns(t, "", "")
	webNS := newNetns(t, netnsDir, "10.78.0.2")
	newNS := newNetns(t, netnsDir, "10.78.0.3")

	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}},
		testPod("web", "uid-web", "10.78.0.2"),
	)
	cfg := Config{
		NodeName: "n1", CNISocket: filepath.Join(dir, "cni.sock"), ZDSSocket: filepath.Join(dir, "zds.sock"),
		NetnsDir: netnsDir, HostNetns: hostNS, DNSCapture: true, Workers: 2,
	}
	startAgent := func() (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- New(cfg, client, nil).Start(ctx) }()
		var once sync.Once
		stop = func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Start: %v", err)
				}
			})
		}
		t.Cleanup(stop)
		return stop
	}
	stopAgent := startAgent()
	pods := client.CoreV1().Pods("demo")
	annotation := func(name string) string {
		p, err := pods.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations[enroll.AnnotationRedirection]
	}
	waitFor(t, "agent serving the plugin", func() error { _, err := os.Stat(cfg.CNISocket); return err })
	if installed(t, webNS) {
		t.Fatal("pod captured before its namespace is labelled")
	}

	// Label: the running pod is captured, pending (no ztunnel yet).
	ns, _ := client.CoreV1().Namespaces().Get(t.Context(), "demo", metav1.GetOptions{})
	ns.Labels = map[string]string{enroll.LabelDataplaneMode: enroll.DataplaneModeAmbient}
	client.CoreV1().Namespaces().Update(t.Context(), ns, metav1.UpdateOptions{})
	waitFor(t, "running pod captured", func() error {
		if a := annotation("web"); a != enroll.RedirectionPending {
			return fmt.Errorf("annotation %q, want pending", a)
		}
		if !installed(t, webNS) {
			return fmt.Errorf("no rules in the pod netns")
		}
		return nil
	})
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(hostNS), "nft", "list", "table", "inet", redirect.HostTable).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.78.0.2") {
		t.Errorf("probe SNAT set in the host netns lacks the pod (err %v):\n%s", err, out)
	}

	// A ztunnel connects: it gets the pod, which becomes enabled.
	zt := &recorder{pods: map[string]string{}}
	zctx, zcancel := context.WithCancel(t.Context())
	zdone := make(chan error, 1)
	go func() {
		zdone <- (&zds.Client{Path: cfg.ZDSSocket, Handler: zt, MinBackoff: 10 * time.Millisecond}).Run(zctx)
	}()
	t.Cleanup(func() { zcancel(); <-zdone })
	waitFor(t, "pod enabled after ztunnel sync", func() error {
		if !zt.has("uid-web") {
			return fmt.Errorf("ztunnel does not have the pod")
		}
		if a := annotation("web"); a != enroll.RedirectionEnabled {
			return fmt.Errorf("annotation %q, want enabled", a)
		}
		return nil
	})

	// A new pod through the plugin's socket: captured before it answers.
	if _, err := pods.Create(t.Context(), testPod("new", "uid-new", ""), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	resp := postAdd(t, cfg.CNISocket, cni.PodEvent{UID: "uid-new", Name: "new", Namespace: "demo", Netns: newNS, IPs: []netip.Addr{netip.MustParseAddr("10.78.0.3")}})
	if !resp.Captured || resp.Redirection != enroll.RedirectionEnabled || resp.Error != "" {
		t.Errorf("ADD answer: %+v, want captured and enabled", resp)
	}
	if !installed(t, newNS) || !zt.has("uid-new") {
		t.Errorf("after ADD: rules %v, ztunnel has it %v; want both", installed(t, newNS), zt.has("uid-new"))
	}

	// The kubelet reports the new pod's IP. Then the agent restarts (an
	// upgrade): pods stay captured, and the new agent takes them over from
	// their annotations, finding their netns by IP, and replays them to the
	// reconnecting ztunnel.
	np, _ := pods.Get(t.Context(), "new", metav1.GetOptions{})
	np.Status.PodIP, np.Status.PodIPs = "10.78.0.3", []corev1.PodIP{{IP: "10.78.0.3"}}
	pods.UpdateStatus(t.Context(), np, metav1.UpdateOptions{})
	stopAgent()
	if !installed(t, webNS) || !installed(t, newNS) {
		t.Fatal("stopping the agent released captured pods")
	}
	zt.mu.Lock()
	zt.pods = map[string]string{} // forget, to see the replay
	zt.mu.Unlock()
	startAgent()
	waitFor(t, "pods replayed by the restarted agent", func() error {
		if !zt.has("uid-web") || !zt.has("uid-new") {
			return fmt.Errorf("ztunnel has %v, want uid-web and uid-new", zt)
		}
		return nil
	})

	// Unlabel: released, rules gone, ztunnel told.
	ns.Labels = nil
	client.CoreV1().Namespaces().Update(t.Context(), ns, metav1.UpdateOptions{})
	waitFor(t, "pods released", func() error {
		for name, path := range map[string]string{"web": webNS, "new": newNS} {
			if a := annotation(name); a != "" {
				return fmt.Errorf("%s: annotation %q still set", name, a)
			}
			if installed(t, path) {
				return fmt.Errorf("%s: rules still there", name)
			}
		}
		if zt.has("uid-web") || zt.has("uid-new") {
			return fmt.Errorf("ztunnel still has pods: %v", zt)
		}
		return nil
	})
}

func postAdd(t *testing.T, socket string, ev cni.PodEvent) cni.AddResponse {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	defer c.CloseIdleConnections()
	b, _ := json.Marshal(ev)
	r, err := c.Post("http://agent"+cni.PathAdd, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var resp cni.AddResponse
	if err := json.NewDecoder(r.Body).Decode(&resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestNetnsIndexFind(t *testing.T) {
	dir := t.TempDir()
	a := newNetns(t, dir, "10.79.0.2")
	var x NetnsIndex
	x.Dir = dir
	if got, err := x.Find(netip.MustParseAddr("10.79.0.2")); err != nil || got != a {
		t.Errorf("Find: got %q, %v; want %q", got, err, a)
	}
	b := newNetns(t, dir, "10.79.0.3") // appears after the first scan
	if got, err := x.Find(netip.MustParseAddr("10.79.0.3")); err != nil || got != b {
		t.Errorf("Find after a new netns: got %q, %v; want %q", got, err, b)
	}
	if _, err := x.Find(netip.MustParseAddr("10.79.0.9")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Find of an unknown IP: got %v, want not exist", err)
	}
}

// TestUninstalling: the plugin leaves the chain on exit only when the
// agent's DaemonSet is gone or being deleted.
func TestUninstalling(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name string
		objs []runtime.Object
		want bool
	}{
		{"daemonset gone", nil, true},
		{"daemonset being deleted", []runtime.Object{&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ambient-cni", Namespace: "istio-system", DeletionTimestamp: &now, Finalizers: []string{"x"}}}}, true},
		{"daemonset there: restart or upgrade", []runtime.Object{&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ambient-cni", Namespace: "istio-system"}}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := New(Config{DaemonSetNamespace: "istio-system", DaemonSetName: "ambient-cni"}, fake.NewClientset(tc.objs...), nil)
			if got := a.uninstalling(); got != tc.want {
				t.Errorf("uninstalling() = %v, want %v", got, tc.want)
			}
		})
	}
}
