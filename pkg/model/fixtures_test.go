package model

import (
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Builders for test objects. Each returns a fresh object; options mutate it.

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

type podOpt func(*corev1.Pod)

// pod returns a ready, running, captured Deployment pod named <deploy>-<rs>-<id>.
func pod(ns, deploy, id, ip string, labels map[string]string, opts ...podOpt) *corev1.Pod {
	l := map[string]string{"pod-template-hash": "5d8f7b"}
	for k, v := range labels {
		l[k] = v
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: deploy + "-5d8f7b-" + id, GenerateName: deploy + "-5d8f7b-", Namespace: ns, Labels: l,
			Annotations: map[string]string{AnnotationRedirection: RedirectionEnabled},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: deploy + "-5d8f7b", Controller: ptr.To(true),
			}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-1", ServiceAccountName: deploy,
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func notReady(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }
func terminating(p *corev1.Pod) {
	p.DeletionTimestamp = &metav1.Time{Time: epoch}
}
func notCaptured(p *corev1.Pod) { delete(p.Annotations, AnnotationRedirection) }

type svcOpt func(*corev1.Service)

func service(ns, name, ip string, selector map[string]string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: selector, ClusterIP: ip, ClusterIPs: []string{ip},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "tcp-admin", Port: 9000, TargetPort: intstr.FromInt32(9000), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withLabels(l map[string]string) svcOpt {
	return func(s *corev1.Service) { s.Labels = l }
}

type gwOpt func(*gatewayv1.Gateway)

func waypointGateway(ns, name string, opts ...gwOpt) *gatewayv1.Gateway {
	g := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: WaypointGatewayClassName,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: HBONEPort, Protocol: "HBONE"}},
		},
		Status: gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{{
			Type: ptr.To(gatewayv1.HostnameAddressType), Value: name + "." + ns + ".svc.cluster.local",
		}}},
	}
	for _, o := range opts {
		o(g)
	}
	return g
}

func waypointFor(v string) gwOpt {
	return func(g *gatewayv1.Gateway) { g.Labels = map[string]string{LabelWaypointFor: v} }
}

func fromAll(g *gatewayv1.Gateway) {
	g.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: ptr.To(gatewayv1.NamespacesFromAll)}}
}

func notProgrammed(g *gatewayv1.Gateway) { g.Status.Addresses = nil }

func endpointSlice(ns, name, svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Port: ptr.To[int32](8443), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
}

func authz(ns, name string, spec *securityv1beta1.AuthorizationPolicy) *securityv1.AuthorizationPolicy {
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	ap.Spec.Selector = spec.Selector
	ap.Spec.TargetRefs = spec.TargetRefs
	ap.Spec.Rules = spec.Rules
	ap.Spec.Action = spec.Action
	return ap
}

func selector(l map[string]string) *typev1beta1.WorkloadSelector {
	return &typev1beta1.WorkloadSelector{MatchLabels: l}
}

type mtls = securityv1beta1.PeerAuthentication_MutualTLS_Mode

func peerAuth(ns, name string, age int, sel map[string]string, mode mtls, ports map[uint32]mtls) *securityv1.PeerAuthentication {
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: ns, CreationTimestamp: metav1.Time{Time: epoch.Add(time.Duration(age) * time.Hour)},
	}}
	if sel != nil {
		pa.Spec.Selector = selector(sel)
	}
	pa.Spec.Mtls = &securityv1beta1.PeerAuthentication_MutualTLS{Mode: mode}
	if ports != nil {
		pa.Spec.PortLevelMtls = map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS{}
		for p, m := range ports {
			pa.Spec.PortLevelMtls[p] = &securityv1beta1.PeerAuthentication_MutualTLS{Mode: m}
		}
	}
	return pa
}
