// Command capture is the driver of `make bench-capture`. On the local
// cluster it measures, in one run:
//
//   - pod_start_added_ms: what capture adds to a pod's start: the median time
//     from creating a pod to seeing it Ready, for pods in an ambient namespace
//     with the plugin in the chain, minus the same for pods started before
//     the plugin is installed (when the node agent was already installed by
//     someone else, the baseline is a non-ambient namespace instead, and the
//     JSON says so);
//   - label_to_captured_50_pods_s: the time from labelling a namespace with
//     50 running pods istio.io/dataplane-mode=ambient to all 50 carrying the
//     ambient.istio.io/redirection annotation (the agent sets it after their
//     rules are in place).
//
// Pods run the pause image, so the figures are the mesh's and the runtime's,
// not an app's. It installs manifests/cni if needed, leaves the cluster as it
// found it, writes one flat JSON object and prints a one-line summary.
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/ambient-mesh/mesh/pkg/cni"
	"github.com/ambient-mesh/mesh/pkg/enroll"
)

const pauseImage = "localhost/ambient-mesh/pause:dev"

type result struct {
	LabelToCaptured50PodsS float64 `json:"label_to_captured_50_pods_s"`
	PodStartAddedMs        float64 `json:"pod_start_added_ms"`
	PodStartBaselineMs     float64 `json:"pod_start_baseline_ms"`
	PodStartCapturedMs     float64 `json:"pod_start_captured_ms"`
	Baseline               string  `json:"baseline"`
	StartSamples           int     `json:"start_samples"`
	Pods                   int     `json:"pods"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", "/var/lib/ambient-mesh/cluster/admin.kubeconfig", "the local cluster's admin kubeconfig")
	kubectl := flag.String("kubectl", "_output/bin/kubectl", "kubectl binary")
	manifests := flag.String("manifests", "manifests/cni", "the node agent's kustomization")
	conflist := flag.String("conflist", "/etc/cni/net.d/10-mesh-pods.conflist", "the node's CNI conflist")
	out := flag.String("out", "_output/bench/capture.json", "where to write the figures")
	pods := flag.Int("pods", 50, "running pods to label at once")
	samples := flag.Int("samples", 8, "pods started one by one for each start-latency figure")
	timeout := flag.Duration("timeout", 4*time.Minute, "bound on the whole run")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	b := &bench{kubeconfig: *kubeconfig, kubectl: *kubectl, manifests: *manifests, conflist: *conflist}
	res, err := b.run(ctx, *pods, *samples)
	b.cleanup()
	benchkit.Save("bench-capture", *out, res, err)
	fmt.Printf("bench-capture: %d running pods captured %.2f s after the label; pod start +%.0f ms with capture (%.0f -> %.0f ms, median of %d, baseline %s) -> %s\n",
		res.Pods, res.LabelToCaptured50PodsS, res.PodStartAddedMs, res.PodStartBaselineMs, res.PodStartCapturedMs, res.StartSamples, res.Baseline, *out)
}

type bench struct {
	kubeconfig, kubectl, manifests, conflist string
	client                                   kubernetes.Interface
	namespaces                               []string
	installed                                bool // by us: uninstall at the end
}

func (b *bench) run(ctx context.Context, pods, samples int) (*result, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", b.kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 100, 200
	if b.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	res := &result{StartSamples: samples, Pods: pods}
	_, err = b.client.AppsV1().DaemonSets("istio-system").Get(ctx, "ambient-cni", metav1.GetOptions{})
	preinstalled := err == nil

	// Baseline: pods started without the plugin (or, if it was already
	// installed, in a namespace it does not capture).
	res.Baseline = "no plugin in the CNI chain"
	if preinstalled {
		res.Baseline = "plugin in the chain, namespace not ambient"
	}
	base, err := b.startLatency(ctx, "bench-capture-base", false, samples)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	if !preinstalled {
		if err := b.install(ctx); err != nil {
			return nil, err
		}
	}
	captured, err := b.startLatency(ctx, "bench-capture-start", true, samples)
	if err != nil {
		return nil, fmt.Errorf("captured start: %w", err)
	}
	res.PodStartBaselineMs, res.PodStartCapturedMs = ms(median(base)), ms(median(captured))
	res.PodStartAddedMs = res.PodStartCapturedMs - res.PodStartBaselineMs

	d, err := b.labelToCaptured(ctx, pods)
	if err != nil {
		return nil, fmt.Errorf("label to captured: %w", err)
	}
	res.LabelToCaptured50PodsS = d.Seconds()
	return res, nil
}

func (b *bench) namespace(ctx context.Context, prefix string, ambient bool) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if ambient {
		ns.Labels = map[string]string{enroll.LabelDataplaneMode: enroll.DataplaneModeAmbient}
	}
	created, err := b.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	b.namespaces = append(b.namespaces, created.Name)
	return created.Name, nil
}

func pausePod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "bench-capture"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers:                    []corev1.Container{{Name: "pause", Image: pauseImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
}

// startLatency starts pods one at a time and returns each one's time from
// Create to Ready as seen by polling every 20 ms.
func (b *bench) startLatency(ctx context.Context, prefix string, ambient bool, n int) ([]time.Duration, error) {
	ns, err := b.namespace(ctx, prefix, ambient)
	if err != nil {
		return nil, err
	}
	pods := b.client.CoreV1().Pods(ns)
	var out []time.Duration
	for i := range n {
		name := fmt.Sprintf("p%d", i)
		t0 := time.Now()
		if _, err := pods.Create(ctx, pausePod(name), metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		for {
			p, err := pods.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			if ready(p) {
				if ambient && enroll.CurrentState(p) == enroll.NotCaptured {
					return nil, fmt.Errorf("pod %s/%s is Ready but not captured", ns, name)
				}
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("pod %s/%s not ready: %w", ns, name, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

// labelToCaptured starts n pods, waits until all are Ready, labels their
// namespace and times until every pod is annotated.
func (b *bench) labelToCaptured(ctx context.Context, n int) (time.Duration, error) {
	ns, err := b.namespace(ctx, "bench-capture-label", false)
	if err != nil {
		return 0, err
	}
	pods := b.client.CoreV1().Pods(ns)
	for i := range n {
		if _, err := pods.Create(ctx, pausePod(fmt.Sprintf("p%d", i)), metav1.CreateOptions{}); err != nil {
			return 0, err
		}
	}
	if err := b.poll(ctx, ns, func(p *corev1.Pod) bool { return ready(p) }, n); err != nil {
		return 0, fmt.Errorf("pods ready: %w", err)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, enroll.LabelDataplaneMode, enroll.DataplaneModeAmbient)
	t0 := time.Now()
	if _, err := b.client.CoreV1().Namespaces().Patch(ctx, ns, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		return 0, err
	}
	if err := b.poll(ctx, ns, func(p *corev1.Pod) bool { return enroll.CurrentState(p) != enroll.NotCaptured }, n); err != nil {
		return 0, fmt.Errorf("pods captured: %w", err)
	}
	return time.Since(t0), nil
}

// poll lists the namespace's pods every 50 ms until n of them satisfy ok.
func (b *bench) poll(ctx context.Context, ns string, ok func(*corev1.Pod) bool, n int) error {
	for {
		list, err := b.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		c := 0
		for i := range list.Items {
			if ok(&list.Items[i]) {
				c++
			}
		}
		if c >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d: %w", c, n, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (b *bench) install(ctx context.Context) error {
	b.installed = true
	if out, err := exec.CommandContext(ctx, b.kubectl, "--kubeconfig", b.kubeconfig, "apply", "-k", b.manifests).CombinedOutput(); err != nil {
		return fmt.Errorf("install: %w: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, b.kubectl, "--kubeconfig", b.kubeconfig, "-n", "istio-system", "rollout", "status", "daemonset/ambient-cni", "--timeout=120s").CombinedOutput(); err != nil {
		return fmt.Errorf("install: %w: %s", err, out)
	}
	for {
		if data, err := os.ReadFile(b.conflist); err == nil && cni.HasPlugin(data) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("plugin never reached %s: %w", b.conflist, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cleanup deletes our namespaces and, if we installed the agent, uninstalls it.
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, ns := range b.namespaces {
		if err := b.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			fmt.Fprintln(os.Stderr, "bench-capture: cleanup:", err)
		}
	}
	if b.installed {
		// Wait for our pods to go first: their DEL goes to the agent.
		for _, ns := range b.namespaces {
			for ctx.Err() == nil {
				if _, err := b.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		if out, err := exec.CommandContext(ctx, b.kubectl, "--kubeconfig", b.kubeconfig, "delete", "-k", b.manifests, "--wait=true").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "bench-capture: uninstall: %v: %s\n", err, strings.TrimSpace(string(out)))
		}
	}
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
