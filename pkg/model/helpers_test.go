package model

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
)

func TestWorkloadName(t *testing.T) {
	ctrl := func(kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true)}}
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"bare pod", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "solo"}}, "solo"},
		{"deployment", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-7c9-x", GenerateName: "web-7c9-",
			Labels: map[string]string{"pod-template-hash": "7c9"}, OwnerReferences: ctrl("ReplicaSet", "web-7c9")}}, "web"},
		{"statefulset", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", GenerateName: "db-",
			OwnerReferences: ctrl("StatefulSet", "db")}}, "db"},
		{"cronjob", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "backup-29000000-q", GenerateName: "backup-29000000-",
			OwnerReferences: ctrl("Job", "backup-29000000")}}, "backup"},
		{"plain job", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "migrate-q", GenerateName: "migrate-",
			OwnerReferences: ctrl("Job", "migrate")}}, "migrate"},
		{"label override", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{LabelServiceWorkloadName: "named"}}}, "named"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := workloadName(tc.pod); got != tc.want {
				t.Errorf("workloadName() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAppProtocol(t *testing.T) {
	tests := []struct {
		name string
		port corev1.ServicePort
		want workloadapi.AppProtocol
	}{
		{"http prefix", corev1.ServicePort{Name: "http-web"}, workloadapi.AppProtocol_HTTP11},
		{"grpc", corev1.ServicePort{Name: "grpc"}, workloadapi.AppProtocol_GRPC},
		{"grpc-web", corev1.ServicePort{Name: "grpc-web"}, workloadapi.AppProtocol_UNKNOWN},
		{"appProtocol wins", corev1.ServicePort{Name: "http", AppProtocol: ptr.To("tcp")}, workloadapi.AppProtocol_TCP},
		{"h2c", corev1.ServicePort{AppProtocol: ptr.To("kubernetes.io/h2c")}, workloadapi.AppProtocol_HTTP2},
		{"udp", corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolUDP}, workloadapi.AppProtocol_UNKNOWN},
		{"unnamed", corev1.ServicePort{}, workloadapi.AppProtocol_UNKNOWN},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := appProtocol(tc.port); got != tc.want {
				t.Errorf("appProtocol() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAmbientEnabled(t *testing.T) {
	amb := namespace("a", ambientNS)
	plain := namespace("p", nil)
	tests := []struct {
		name string
		ns   *corev1.Namespace
		pod  *corev1.Pod
		want bool
	}{
		{"namespace ambient", amb, pod("a", "x", "1", "10.0.0.1", nil), true},
		{"pod opts out", amb, pod("a", "x", "1", "10.0.0.1", map[string]string{LabelDataplaneMode: "none"}), false},
		{"pod opts in", plain, pod("p", "x", "1", "10.0.0.1", map[string]string{LabelDataplaneMode: "ambient"}), true},
		{"plain namespace", plain, pod("p", "x", "1", "10.0.0.1", nil), false},
		{"unknown namespace", nil, pod("p", "x", "1", "10.0.0.1", nil), false},
		{"host network", amb, pod("a", "x", "1", "10.0.0.1", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := AmbientEnabled(tc.ns, tc.pod); got != tc.want {
				t.Errorf("AmbientEnabled() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPeerAuthKeys(t *testing.T) {
	const ss = "istio-system/" + StaticStrictPolicyName
	app := map[string]string{"app": "x"}
	tests := []struct {
		name string
		pas  []*securityv1.PeerAuthentication
		want []string
	}{
		{"none", nil, nil},
		{"mesh strict", []*securityv1.PeerAuthentication{peerAuth("istio-system", "m", 0, nil, strict, nil)}, []string{ss}},
		{"mesh permissive", []*securityv1.PeerAuthentication{peerAuth("istio-system", "m", 0, nil, permissive, nil)}, nil},
		{"namespace strict over mesh permissive", []*securityv1.PeerAuthentication{
			peerAuth("istio-system", "m", 0, nil, permissive, nil), peerAuth("ns", "n", 0, nil, strict, nil)}, []string{ss}},
		{"namespace unset inherits mesh", []*securityv1.PeerAuthentication{
			peerAuth("istio-system", "m", 0, nil, strict, nil), peerAuth("ns", "n", 0, nil, unset, nil)}, []string{ss}},
		{"workload permissive over namespace strict", []*securityv1.PeerAuthentication{
			peerAuth("ns", "n", 0, nil, strict, nil), peerAuth("ns", "w", 0, app, permissive, nil)}, nil},
		{"workload strict over mesh disable", []*securityv1.PeerAuthentication{
			peerAuth("istio-system", "m", 0, nil, disable, nil), peerAuth("ns", "w", 0, app, strict, nil)}, []string{ss}},
		{"workload strict with all ports strict", []*securityv1.PeerAuthentication{
			peerAuth("ns", "w", 0, app, strict, map[uint32]mtls{80: strict})}, []string{ss}},
		{"workload strict with permissive port", []*securityv1.PeerAuthentication{
			peerAuth("ns", "w", 0, app, strict, map[uint32]mtls{80: permissive})}, []string{"ns/converted_peer_authentication_w"}},
		{"workload selector does not match", []*securityv1.PeerAuthentication{
			peerAuth("ns", "w", 0, map[string]string{"app": "other"}, strict, nil)}, nil},
		{"oldest workload policy wins", []*securityv1.PeerAuthentication{
			peerAuth("ns", "new", 2, app, strict, nil), peerAuth("ns", "old", 1, app, permissive, nil)}, nil},
		{"other namespace ignored", []*securityv1.PeerAuthentication{peerAuth("other", "n", 0, nil, strict, nil)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Snapshot{PeerAuthentications: tc.pas}
			s.Mesh = s.Mesh.withDefaults()
			if got := peerAuthKeys(s, "ns", app); !slices.Equal(got, tc.want) {
				t.Errorf("peerAuthKeys() = %v, want %v", got, tc.want)
			}
		})
	}
}
