// Package enroll decides which pods ambient mode captures and what the node
// agent must do about a pod, as pure functions of the Pod and Namespace
// objects: no client, no cache, no clock. The CNI plugin (cmd/ambient-cni)
// asks [Select] before capturing a new pod; the node agent's pod and
// namespace watcher asks [Reconcile] for every change. The labels and
// annotations are Istio's (istio-ambient-facts.md §5.1), so clusters labelled
// for Istio ambient behave the same here.
package enroll

import (
	corev1 "k8s.io/api/core/v1"
)

// Labels, annotations and their values.
const (
	// LabelDataplaneMode selects pods (or whole namespaces) for capture.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// DataplaneModeAmbient captures.
	DataplaneModeAmbient = "ambient"
	// DataplaneModeNone, on a pod, opts it out of its namespace's capture.
	DataplaneModeNone = "none"

	// AnnotationRedirection records, on the pod, how far capture got.
	AnnotationRedirection = "ambient.istio.io/redirection"
	// RedirectionEnabled: rules in place and ztunnel acknowledged the pod.
	RedirectionEnabled = "enabled"
	// RedirectionPending: rules in place, no ztunnel has acknowledged yet.
	RedirectionPending = "pending"

	// AnnotationSidecarStatus is set by Istio's sidecar injector; such pods
	// have their own proxy and are never captured.
	AnnotationSidecarStatus = "sidecar.istio.io/status"
)

// Reason says why a pod is or is not selected; it is meant for logs and
// events, and tests compare it.
type Reason string

// Reasons, in the order [Select] checks them.
const (
	ReasonHostNetwork    Reason = "host-network pod: its netns is the node's"
	ReasonSidecar        Reason = "pod has an istio sidecar"
	ReasonPodOptOut      Reason = "pod labelled " + LabelDataplaneMode + "=" + DataplaneModeNone
	ReasonPodLabel       Reason = "pod labelled " + LabelDataplaneMode + "=" + DataplaneModeAmbient
	ReasonNamespaceLabel Reason = "namespace labelled " + LabelDataplaneMode + "=" + DataplaneModeAmbient
	ReasonNotSelected    Reason = "neither pod nor namespace labelled " + LabelDataplaneMode + "=" + DataplaneModeAmbient
)

// Decision is the outcome of [Select].
type Decision struct {
	Capture bool
	Reason  Reason
}

// Select reports whether pod, in namespace ns, is to be captured: it is when
// the pod is labelled istio.io/dataplane-mode=ambient, or its namespace is
// and the pod is not labelled istio.io/dataplane-mode=none. Host-network
// pods and pods with an Istio sidecar never are. ns may be nil when the
// namespace is not known (yet); then only the pod's own label counts.
func Select(ns *corev1.Namespace, pod *corev1.Pod) Decision {
	switch {
	case pod.Spec.HostNetwork:
		return Decision{false, ReasonHostNetwork}
	case hasKey(pod.Annotations, AnnotationSidecarStatus):
		return Decision{false, ReasonSidecar}
	}
	switch pod.Labels[LabelDataplaneMode] {
	case DataplaneModeNone:
		return Decision{false, ReasonPodOptOut}
	case DataplaneModeAmbient:
		return Decision{true, ReasonPodLabel}
	}
	if ns != nil && ns.Labels[LabelDataplaneMode] == DataplaneModeAmbient {
		return Decision{true, ReasonNamespaceLabel}
	}
	return Decision{false, ReasonNotSelected}
}

// State is how far capture got for a pod, as its redirection annotation
// records it.
type State int

const (
	// NotCaptured: no annotation (or a value we do not know).
	NotCaptured State = iota
	// Pending: rules in place, ztunnel has not acknowledged the pod.
	Pending
	// Enabled: rules in place and ztunnel acknowledged the pod.
	Enabled
)

func (s State) String() string {
	switch s {
	case Pending:
		return RedirectionPending
	case Enabled:
		return RedirectionEnabled
	}
	return "not-captured"
}

// CurrentState reads the pod's redirection annotation.
func CurrentState(pod *corev1.Pod) State {
	switch pod.Annotations[AnnotationRedirection] {
	case RedirectionEnabled:
		return Enabled
	case RedirectionPending:
		return Pending
	}
	return NotCaptured
}

// Action is what the node agent does for a pod.
type Action int

const (
	// None: the pod is as it should be.
	None Action = iota
	// Capture: install the rules, hand the netns to ztunnel, annotate
	// (pending, then enabled once ztunnel acknowledges). Idempotent, so it
	// also retries a pending pod.
	Capture
	// Release: tell ztunnel to drop the pod, remove the rules, remove the
	// annotation.
	Release
	// Forget: the pod is finishing or being deleted; tell ztunnel to drop it
	// but leave its netns alone (it is being torn down).
	Forget
)

func (a Action) String() string {
	switch a {
	case Capture:
		return "capture"
	case Release:
		return "release"
	case Forget:
		return "forget"
	}
	return "none"
}

// Reconcile returns what the node agent must do to bring pod to the state
// [Select] wants, given what its annotation says was done. It is level-based:
// the same objects always give the same answer, whatever events led to them.
func Reconcile(ns *corev1.Namespace, pod *corev1.Pod) (Action, Decision) {
	d := Select(ns, pod)
	have := CurrentState(pod)
	if terminating(pod) {
		if have != NotCaptured {
			return Forget, d
		}
		return None, d
	}
	switch {
	case d.Capture && have != Enabled:
		return Capture, d
	case !d.Capture && have != NotCaptured:
		return Release, d
	}
	return None, d
}

// terminating: deleted, or finished and never to run again.
func terminating(pod *corev1.Pod) bool {
	return pod.DeletionTimestamp != nil ||
		pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}
