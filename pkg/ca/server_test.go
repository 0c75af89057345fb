package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// tokenAuthenticator maps tokens to callers: the fake beside Authenticator.
type tokenAuthenticator map[string]*Caller

func (f tokenAuthenticator) Authenticate(_ context.Context, token string) (*Caller, error) {
	if c, ok := f[token]; ok {
		return c, nil
	}
	return nil, refuse(codes.Unauthenticated, "authn.token", "unknown token")
}

func pod(ns, name, uid, sa, node string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// TestImpersonationRules covers the rule table without an apiserver; the
// envtest suite runs the same rules on real tokens.
func TestImpersonationRules(t *testing.T) {
	f := newPluginFiles(t)
	keys, err := ParseKeys(f.caCert, f.caKey, f.certChain, f.rootCert)
	if err != nil {
		t.Fatal(err)
	}
	authority, _ := New(keys, Options{})
	for _, indexed := range []bool{false, true} {
		t.Run(map[bool]string{false: "scan", true: "indexed"}[indexed], func(t *testing.T) {
			b := fake.NewClientBuilder().WithObjects(
				pod("istio-system", "zt-a", "uid-zt-a", "ztunnel", "a", corev1.PodRunning),
				pod("istio-system", "zt-nonode", "uid-zt-nonode", "ztunnel", "", corev1.PodPending),
				pod("demo", "web-1", "uid-web", "web", "a", corev1.PodRunning),
				pod("demo", "done-1", "uid-done", "done", "a", corev1.PodSucceeded),
				pod("demo", "far-1", "uid-far", "far", "b", corev1.PodRunning),
				pod("demo", "default-1", "uid-def", "", "a", corev1.PodRunning),
			)
			if indexed {
				b = b.WithIndex(&corev1.Pod{}, PodNodeServiceAccountIndex, podIndexValue)
			}
			impersonationRules(t, authority, ClientPods{Reader: b.Build(), Indexed: indexed})
		})
	}
}

func impersonationRules(t *testing.T, authority *CA, pods Pods) {
	zt := func(podName, uid string) *Caller {
		return &Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: podName, PodUID: types.UID(uid)}
	}
	srv, err := NewServer(authority, ServerOptions{
		Authenticator: tokenAuthenticator{
			"zt-a":        zt("zt-a", "uid-zt-a"),
			"zt-stale":    zt("zt-a", "uid-old"),
			"zt-unbound":  {Namespace: "istio-system", ServiceAccount: "ztunnel"},
			"zt-gone":     zt("zt-deleted", "uid-x"),
			"zt-nonode":   zt("zt-nonode", "uid-zt-nonode"),
			"web":         {Namespace: "demo", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-web"},
			"custom-node": {Namespace: "kube-system", ServiceAccount: "node-agent", PodName: "x", PodUID: "y"},
		},
		Pods:   pods,
		Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, impersonate string
		wantRule                 string
		wantCode                 codes.Code
	}{
		{name: "impersonate pod on own node", token: "zt-a", impersonate: "spiffe://cluster.local/ns/demo/sa/web"},
		{name: "default service account", token: "zt-a", impersonate: "spiffe://cluster.local/ns/demo/sa/default"},
		{name: "own identity without impersonation", token: "web"},
		{name: "impersonate own identity is own identity", token: "web", impersonate: "spiffe://cluster.local/ns/demo/sa/web"},
		{name: "pod on another node", token: "zt-a", impersonate: "spiffe://cluster.local/ns/demo/sa/far", wantRule: "impersonation.node", wantCode: codes.PermissionDenied},
		{name: "only a finished pod on the node", token: "zt-a", impersonate: "spiffe://cluster.local/ns/demo/sa/done", wantRule: "impersonation.node", wantCode: codes.PermissionDenied},
		{name: "stale pod uid", token: "zt-stale", impersonate: "spiffe://cluster.local/ns/demo/sa/web", wantRule: "impersonation.bound-pod", wantCode: codes.PermissionDenied},
		{name: "token not bound to a pod", token: "zt-unbound", impersonate: "spiffe://cluster.local/ns/demo/sa/web", wantRule: "impersonation.bound-pod", wantCode: codes.PermissionDenied},
		{name: "bound pod deleted", token: "zt-gone", impersonate: "spiffe://cluster.local/ns/demo/sa/web", wantRule: "impersonation.bound-pod", wantCode: codes.PermissionDenied},
		{name: "caller pod not scheduled", token: "zt-nonode", impersonate: "spiffe://cluster.local/ns/demo/sa/web", wantRule: "impersonation.node", wantCode: codes.PermissionDenied},
		{name: "untrusted caller", token: "custom-node", impersonate: "spiffe://cluster.local/ns/demo/sa/web", wantRule: "impersonation.trusted", wantCode: codes.PermissionDenied},
		{name: "malformed identity", token: "zt-a", impersonate: "spiffe://cluster.local/web", wantRule: "impersonation.identity", wantCode: codes.InvalidArgument},
		{name: "not a spiffe id", token: "zt-a", impersonate: "web", wantRule: "impersonation.identity", wantCode: codes.InvalidArgument},
		{name: "unknown token", token: "nope", wantRule: "authn.token", wantCode: codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.impersonate // the identity asked for (and put in the CSR)
			if want == "" {
				want = "spiffe://cluster.local/ns/demo/sa/web"
			}
			u, _ := url.Parse(want)
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			req := &pb.IstioCertificateRequest{Csr: string(csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}}))}
			if tc.impersonate != "" {
				req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ImpersonatedIdentityKey: structpb.NewStringValue(tc.impersonate)}}
			}
			ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+tc.token))
			resp, err := srv.CreateCertificate(ctx, req)
			if tc.wantRule == "" {
				if err != nil {
					t.Fatalf("CreateCertificate: %v", err)
				}
				leaf, _ := parseCerts([]byte(resp.CertChain[0]))
				if got := leaf[0].URIs[0].String(); got != want {
					t.Errorf("issued %s, want %s", got, want)
				}
				return
			}
			st, _ := status.FromError(err)
			if st.Code() != tc.wantCode || !strings.HasPrefix(st.Message(), tc.wantRule+":") {
				t.Errorf("got %v, want %s %q", err, tc.wantCode, tc.wantRule)
			}
		})
	}
}

func TestNewServerRejectsBadTrustedAccounts(t *testing.T) {
	f := newPluginFiles(t)
	keys, _ := ParseKeys(f.caCert, f.caKey, f.certChain, f.rootCert)
	authority, _ := New(keys, Options{})
	_, err := NewServer(authority, ServerOptions{Authenticator: tokenAuthenticator{}, Pods: ClientPods{}, TrustedNodeAccounts: []string{"ztunnel"}})
	if err == nil {
		t.Errorf("NewServer accepted trusted account %q without a namespace", "ztunnel")
	}
}
