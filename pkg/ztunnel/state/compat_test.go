package state_test

// A compatibility test across the wire: Istio objects translated by
// istiod-lite's model (pkg/model), served by its delta xDS server (pkg/xds),
// received by xdsclient into this package's Store, then routed and
// authorized by ztunnel's pure functions. The control-plane packages appear
// only in this test, never in ztunnel's build (internal/archtest).

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/authz"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/route"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

func k8sPod(name, sa, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", Labels: labels, UID: types.UID("uid-" + name),
			Annotations: map[string]string{model.AnnotationRedirection: model.RedirectionEnabled}},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func TestIstiodLiteToStore(t *testing.T) {
	client := k8sPod("client", "client", "10.1.0.1", map[string]string{"app": "client"})
	server := k8sPod("server", "server", "10.1.0.2", map[string]string{"app": "server"})
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: "demo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "server"}, ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}}}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "server-x", Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "server"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: "server", UID: "uid-server"}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	strict := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: "demo"}}
	strict.Spec.Mtls = &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT}
	allow := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-client", Namespace: "demo"}}
	allow.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "server"}}
	allow.Spec.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
		Principals: []string{"cluster.local/ns/demo/sa/client"}}}}}}
	res := model.Translate(model.Snapshot{
		Namespaces:            []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}}},
		Pods:                  []*corev1.Pod{client, server},
		Services:              []*corev1.Service{svc},
		EndpointSlices:        []*discoveryv1.EndpointSlice{slice},
		PeerAuthentications:   []*securityv1.PeerAuthentication{strict},
		AuthorizationPolicies: []*securityv1.AuthorizationPolicy{allow},
	})
	if len(res.Diagnostics) > 0 {
		t.Logf("translation diagnostics: %v", res.Diagnostics)
	}

	srv, err := xds.New(xds.Options{
		Authenticator: xds.AuthenticatorFunc(func(context.Context) (xds.Identity, error) {
			return xds.Identity{Namespace: "istio-system", ServiceAccount: "ztunnel"}, nil
		}),
		Logger: zaptest.NewLogger(t).Named("xds-server"), Debounce: time.Millisecond, MaxDebounce: 10 * time.Millisecond, ShutdownGrace: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Update(res)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopSrv := context.WithCancel(t.Context())
	srvDone, pushDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(srvDone); _ = srv.Serve(srvCtx, ln) }()
	go func() { defer close(pushDone); _ = srv.Start(srvCtx) }()
	stopServer := func() { stopSrv(); <-srvDone; <-pushDone }
	defer stopServer()

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	store := state.NewStore()
	streamErr := make(chan error, 16)
	cl, err := xdsclient.New(xdsclient.Config{
		Conn: conn, Node: &core.Node{Id: "ztunnel~10.0.0.9~ztunnel-x.istio-system~istio-system.svc.cluster.local"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: state.AddressTypeURL}, {TypeURL: state.AuthorizationTypeURL}},
		Handler:       store.Handler(), Logger: zaptest.NewLogger(t).Named("xds-client"),
		InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		OnStreamError: func(err error) {
			select {
			case streamErr <- err:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	clCtx, stopCl := context.WithCancel(t.Context())
	clDone := make(chan struct{})
	go func() { defer close(clDone); _ = cl.Run(clCtx) }()
	defer func() { stopCl(); <-clDone }()

	// Wait for the server workload and both policies.
	deadline := time.Now().Add(5 * time.Second)
	var snap *state.Snapshot
	for {
		ch, s := store.Changed()
		if w := s.WorkloadByIP(state.NetworkAddr{IP: netip.MustParseAddr("10.1.0.2")}); w != nil && len(s.PoliciesFor(w)) >= 2 &&
			s.ServiceByIP(state.NetworkAddr{IP: netip.MustParseAddr("10.96.0.20")}) != nil {
			snap = s
			break
		}
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("state incomplete after 5s: %d workloads, %d services, %d policies", len(s.Workloads()), len(s.Services()), len(s.Policies()))
		}
	}

	clientW := snap.WorkloadByIP(state.NetworkAddr{IP: netip.MustParseAddr("10.1.0.1")})
	req, err := route.Outbound(snap, route.Source{Workload: clientW, IP: netip.MustParseAddr("10.1.0.1")}, netip.MustParseAddrPort("10.96.0.20:80"), func(int) int { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	if want := "hbone 10.1.0.2:15008 authority=10.1.0.2:8080 ids=spiffe://cluster.local/ns/demo/sa/server"; req.String() != want {
		t.Errorf("route to the service VIP:\n got %s\nwant %s", req, want)
	}

	serverW := snap.WorkloadByIP(state.NetworkAddr{IP: netip.MustParseAddr("10.1.0.2")})
	dst := netip.MustParseAddrPort("10.1.0.2:8080")
	for _, tc := range []struct {
		name  string
		src   string
		allow bool
	}{
		{"allowed principal over mTLS", "spiffe://cluster.local/ns/demo/sa/client", true},
		{"other principal", "spiffe://cluster.local/ns/demo/sa/other", false},
		{"plaintext under STRICT", "", false},
	} {
		var id spiffeid.ID
		if tc.src != "" {
			id = spiffeid.RequireFromString(tc.src)
		}
		d := authz.Evaluate(snap.PoliciesFor(serverW), authz.Conn{Source: id, SrcIP: netip.MustParseAddr("10.1.0.1"), Dst: dst})
		if d.Allow != tc.allow {
			t.Errorf("%s: allow = %v (%s %s), want %v", tc.name, d.Allow, d.Reason, d.Policy, tc.allow)
		}
	}

	// istiod-lite goes away: the client's stream fails, the state stays.
	stopServer()
	select {
	case <-streamErr:
	case <-time.After(5 * time.Second):
		t.Fatal("no stream error after the server stopped")
	}
	if got := store.Snapshot(); got.WorkloadByIP(state.NetworkAddr{IP: netip.MustParseAddr("10.1.0.2")}) == nil || len(got.Policies()) != len(snap.Policies()) {
		t.Errorf("state lost while istiod-lite is away: %d workloads, %d policies", len(got.Workloads()), len(got.Policies()))
	}
}
