package enroll

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func namespace(mode string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}
	if mode != "" {
		ns.Labels = map[string]string{LabelDataplaneMode: mode}
	}
	return ns
}

type podOpt func(*corev1.Pod)

func pod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "demo"}}
	for _, o := range opts {
		o(p)
	}
	return p
}

func label(mode string) podOpt {
	return func(p *corev1.Pod) {
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		p.Labels[LabelDataplaneMode] = mode
	}
}

func annotate(k, v string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[k] = v
	}
}

func hostNetwork(p *corev1.Pod)       { p.Spec.HostNetwork = true }
func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func deleting(p *corev1.Pod)          { p.DeletionTimestamp = &metav1.Time{} }
func state(v string) podOpt           { return annotate(AnnotationRedirection, v) }
func sidecar(p *corev1.Pod)           { annotate(AnnotationSidecarStatus, `{"containers":["istio-proxy"]}`)(p) }
func otherLabel(k, v string) podOpt {
	return func(p *corev1.Pod) {
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		p.Labels[k] = v
	}
}

func TestSelect(t *testing.T) {
	for _, tc := range []struct {
		name string
		ns   *corev1.Namespace
		pod  *corev1.Pod
		want Decision
	}{
		{"unlabelled", namespace(""), pod(), Decision{false, ReasonNotSelected}},
		{"namespace ambient", namespace("ambient"), pod(), Decision{true, ReasonNamespaceLabel}},
		{"pod ambient in plain namespace", namespace(""), pod(label("ambient")), Decision{true, ReasonPodLabel}},
		{"pod ambient, namespace none", namespace("none"), pod(label("ambient")), Decision{true, ReasonPodLabel}},
		{"pod ambient, namespace unknown", nil, pod(label("ambient")), Decision{true, ReasonPodLabel}},
		{"namespace unknown", nil, pod(), Decision{false, ReasonNotSelected}},
		{"pod none in ambient namespace", namespace("ambient"), pod(label("none")), Decision{false, ReasonPodOptOut}},
		{"namespace none", namespace("none"), pod(), Decision{false, ReasonNotSelected}},
		{"unknown pod value falls back to namespace", namespace("ambient"), pod(label("sidecar")), Decision{true, ReasonNamespaceLabel}},
		{"unknown namespace value", namespace("Ambient"), pod(), Decision{false, ReasonNotSelected}},
		{"other labels ignored", namespace(""), pod(otherLabel("istio.io/use-waypoint", "wp")), Decision{false, ReasonNotSelected}},
		{"host network in ambient namespace", namespace("ambient"), pod(hostNetwork), Decision{false, ReasonHostNetwork}},
		{"host network labelled ambient", namespace(""), pod(hostNetwork, label("ambient")), Decision{false, ReasonHostNetwork}},
		{"sidecar in ambient namespace", namespace("ambient"), pod(sidecar), Decision{false, ReasonSidecar}},
		{"sidecar labelled ambient", namespace(""), pod(sidecar, label("ambient")), Decision{false, ReasonSidecar}},
		{"already captured stays selected", namespace("ambient"), pod(state("enabled")), Decision{true, ReasonNamespaceLabel}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Select(tc.ns, tc.pod); got != tc.want {
				t.Errorf("Select = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReconcile(t *testing.T) {
	for _, tc := range []struct {
		name string
		ns   *corev1.Namespace
		pod  *corev1.Pod
		want Action
	}{
		{"new pod in ambient namespace", namespace("ambient"), pod(), Capture},
		{"pending pod is retried", namespace("ambient"), pod(state("pending")), Capture},
		{"captured pod", namespace("ambient"), pod(state("enabled")), None},
		{"namespace unlabelled", namespace(""), pod(state("enabled")), Release},
		{"namespace unlabelled while pending", namespace(""), pod(state("pending")), Release},
		{"pod opts out", namespace("ambient"), pod(label("none"), state("enabled")), Release},
		{"never captured, not selected", namespace(""), pod(), None},
		{"unknown annotation value, not selected", namespace(""), pod(state("bogus")), None},
		{"unknown annotation value, selected", namespace("ambient"), pod(state("bogus")), Capture},
		{"host network never", namespace("ambient"), pod(hostNetwork), None},
		{"deleted captured pod", namespace("ambient"), pod(deleting, state("enabled")), Forget},
		{"deleted pod never captured", namespace("ambient"), pod(deleting), None},
		{"succeeded captured pod", namespace("ambient"), pod(phase(corev1.PodSucceeded), state("enabled")), Forget},
		{"failed pending pod", namespace(""), pod(phase(corev1.PodFailed), state("pending")), Forget},
		{"running pod", namespace("ambient"), pod(phase(corev1.PodRunning)), Capture},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, d := Reconcile(tc.ns, tc.pod); got != tc.want {
				t.Errorf("Reconcile = %s (%s), want %s", got, d.Reason, tc.want)
			}
		})
	}
}

func TestCurrentState(t *testing.T) {
	for _, tc := range []struct {
		pod  *corev1.Pod
		want State
	}{
		{pod(), NotCaptured},
		{pod(state("enabled")), Enabled},
		{pod(state("pending")), Pending},
		{pod(state("")), NotCaptured},
	} {
		if got := CurrentState(tc.pod); got != tc.want {
			t.Errorf("CurrentState(%v) = %s, want %s", tc.pod.Annotations, got, tc.want)
		}
	}
}
