package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/certmanager"
)

const (
	systemNS = "istio-system"
	td       = "cluster.local"
)

// cluster is an envtest apiserver with nodes, service accounts and pods
// (scheduled by setting spec.nodeName; envtest has no scheduler or kubelet).
type cluster struct {
	cfg  *rest.Config
	cs   kubernetes.Interface
	cl   client.Client
	pods map[string]*corev1.Pod // "ns/name"
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	env := kubetest.Start(t, kubetest.Options{})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(env.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{cfg: env.Config, cs: cs, cl: cl, pods: map[string]*corev1.Pod{}}
	ctx := t.Context()
	for _, ns := range []string{systemNS, "demo", "other"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
	}
	for _, n := range []string{"node-a", "node-b"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create node %s: %v", n, err)
		}
	}
	for _, sa := range []string{systemNS + "/ztunnel", "demo/app", "demo/web", "demo/far", "demo/idle", "other/stranger"} {
		ns, name, _ := strings.Cut(sa, "/")
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create service account %s: %v", sa, err)
		}
	}
	for _, p := range []struct{ ns, name, sa, node string }{
		{systemNS, "ztunnel-a", "ztunnel", "node-a"},
		{systemNS, "ztunnel-b", "ztunnel", "node-b"},
		{"demo", "app-1", "app", "node-a"},
		{"demo", "web-1", "web", "node-a"},
		{"demo", "far-1", "far", "node-b"},
		{"other", "stranger-1", "stranger", "node-a"},
	} {
		c.addPod(t, p.ns, p.name, p.sa, p.node)
	}
	return c
}

func (c *cluster) addPod(t *testing.T, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: "c", Image: "example.invalid/app"}},
		},
	}
	got, err := c.cs.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	c.pods[ns+"/"+name] = got
	return got
}

// token is a real TokenRequest token bound to the pod ns/name.
func (c *cluster) token(t testing.TB, pod, audience string) string {
	t.Helper()
	p := c.pods[pod]
	exp := int64(600)
	tr, err := c.cs.CoreV1().ServiceAccounts(p.Namespace).CreateToken(context.Background(), p.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request for %s: %v", pod, err)
	}
	return tr.Status.Token
}

// caServer is the CA's gRPC service on a loopback TLS port.
type caServer struct {
	ca    *ca.CA
	addr  string
	roots *x509.CertPool
	conn  *grpc.ClientConn
}

func startCA(t *testing.T, c *cluster, log *zap.Logger) *caServer {
	t.Helper()
	keys, err := ca.EnsureSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{Logger: log})
	if err != nil {
		t.Fatalf("EnsureSelfSignedRoot: %v", err)
	}
	authority, err := ca.New(keys, ca.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.NewServer(authority, ca.ServerOptions{
		Authenticator:   &ca.TokenReviewAuthenticator{Client: c.cs},
		Pods:            ca.ClientPods{Reader: c.cl},
		SystemNamespace: systemNS,
		Logger:          log,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(authority.ServerTLSConfig("istiod." + systemNS + ".svc"))))
	srv.Register(g)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); <-done })
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(authority.RootsPEM())
	conn, err := certmanager.DialCA(lis.Addr().String(), roots, "istiod."+systemNS+".svc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &caServer{ca: authority, addr: lis.Addr().String(), roots: roots, conn: conn}
}

func spiffe(ns, sa string) string { return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa }

func newCSR(t testing.TB, sans ...string) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{}
	for _, s := range sans {
		if strings.HasPrefix(s, "spiffe://") {
			u, _ := url.Parse(s)
			tmpl.URIs = append(tmpl.URIs, u)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

func (s *caServer) call(ctx context.Context, token, impersonate, csr string) (*pb.IstioCertificateResponse, error) {
	req := &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: 3600}
	if impersonate != "" {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ca.ImpersonatedIdentityKey: structpb.NewStringValue(impersonate)}}
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return pb.NewIstioCertificateServiceClient(s.conn).CreateCertificate(ctx, req)
}

// TestCreateCertificate runs every rule against a real apiserver: tokens are
// TokenRequest tokens bound to pods, checked by TokenReview.
func TestCreateCertificate(t *testing.T) {
	c := startCluster(t)
	srv := startCA(t, c, zaptest.NewLogger(t))
	ztA := c.token(t, systemNS+"/ztunnel-a", ca.Audience)
	app := c.token(t, "demo/app-1", ca.Audience)
	stranger := c.token(t, "other/stranger-1", ca.Audience)
	wrongAud := c.token(t, systemNS+"/ztunnel-a", "https://kubernetes.default.svc")
	minted := newMinter(t, c)
	expired := minted.token(t, c.pods[systemNS+"/ztunnel-a"], time.Now().Add(-time.Hour))
	control := minted.token(t, c.pods[systemNS+"/ztunnel-a"], time.Now().Add(time.Hour))
	csr := func(id string) string { s, _ := newCSR(t, id); return s }

	for _, tc := range []struct {
		name        string
		token       string
		impersonate string
		csr         string
		wantID      string
		wantCode    codes.Code
		wantRule    string
	}{
		{name: "own identity", token: app, csr: csr(spiffe("demo", "app")), wantID: spiffe("demo", "app")},
		{name: "ztunnel impersonates pod on its node", token: ztA, impersonate: spiffe("demo", "web"), csr: csr(spiffe("demo", "web")), wantID: spiffe("demo", "web")},
		{name: "ztunnel own identity", token: ztA, csr: csr(spiffe(systemNS, "ztunnel")), wantID: spiffe(systemNS, "ztunnel")},
		{name: "minted token control (valid signature, not expired)", token: control, impersonate: spiffe("demo", "app"), csr: csr(spiffe("demo", "app")), wantID: spiffe("demo", "app")},
		{name: "pod on another node", token: ztA, impersonate: spiffe("demo", "far"), csr: csr(spiffe("demo", "far")), wantCode: codes.PermissionDenied, wantRule: "impersonation.node"},
		{name: "service account without pods", token: ztA, impersonate: spiffe("demo", "idle"), csr: csr(spiffe("demo", "idle")), wantCode: codes.PermissionDenied, wantRule: "impersonation.node"},
		{name: "other service account asks for app", token: stranger, csr: csr(spiffe("demo", "app")), wantCode: codes.PermissionDenied, wantRule: "csr.identity"},
		{name: "untrusted caller impersonates", token: app, impersonate: spiffe("demo", "web"), csr: csr(spiffe("demo", "web")), wantCode: codes.PermissionDenied, wantRule: "impersonation.trusted"},
		{name: "expired token", token: expired, impersonate: spiffe("demo", "app"), csr: csr(spiffe("demo", "app")), wantCode: codes.Unauthenticated, wantRule: "authn.token"},
		{name: "wrong audience", token: wrongAud, csr: csr(spiffe(systemNS, "ztunnel")), wantCode: codes.Unauthenticated, wantRule: "authn.token"},
		{name: "garbage token", token: "not-a-jwt", csr: csr(spiffe("demo", "app")), wantCode: codes.Unauthenticated, wantRule: "authn.token"},
		{name: "no token", csr: csr(spiffe("demo", "app")), wantCode: codes.Unauthenticated, wantRule: "authn.bearer"},
		{name: "csr with extra sans", token: app, csr: func() string { s, _ := newCSR(t, spiffe("demo", "app"), "evil.example.com"); return s }(), wantCode: codes.InvalidArgument, wantRule: "csr.san"},
		{name: "csr for another identity", token: ztA, impersonate: spiffe("demo", "web"), csr: csr(spiffe("demo", "app")), wantCode: codes.PermissionDenied, wantRule: "csr.identity"},
		{name: "garbage csr", token: app, csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", wantCode: codes.InvalidArgument, wantRule: "csr.parse"},
		{name: "impersonated identity in another trust domain", token: ztA, impersonate: "spiffe://evil.org/ns/demo/sa/web", csr: csr("spiffe://evil.org/ns/demo/sa/web"), wantCode: codes.PermissionDenied, wantRule: "impersonation.identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := srv.call(t.Context(), tc.token, tc.impersonate, tc.csr)
			if tc.wantRule != "" {
				st, _ := status.FromError(err)
				if err == nil || st.Code() != tc.wantCode || !strings.HasPrefix(st.Message(), tc.wantRule+":") {
					t.Fatalf("got %v, want code %s with a message starting %q", err, tc.wantCode, tc.wantRule+":")
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			chain := resp.GetCertChain()
			if len(chain) != 2 {
				t.Fatalf("cert_chain has %d elements, want leaf and root", len(chain))
			}
			leaf, _ := certmanager.ParseCertificates([]byte(chain[0]))
			root, _ := certmanager.ParseCertificates([]byte(chain[1]))
			if len(leaf) != 1 || len(root) != 1 || !root[0].Equal(srv.ca.Keys().Root()) {
				t.Fatalf("chain is not leaf, CA root")
			}
			if got := leaf[0].URIs; len(got) != 1 || got[0].String() != tc.wantID {
				t.Errorf("leaf URI SANs = %v, want [%s]", got, tc.wantID)
			}
			if life := leaf[0].NotAfter.Sub(time.Now()); life > time.Hour || life < 59*time.Minute {
				t.Errorf("leaf lives %s more, want the requested 1h", life)
			}
		})
	}
}

// TestCARestartKeepsRoot starts the CA twice against one apiserver: the second
// start reuses the root the first one stored, and a concurrent leader race
// converges on one Secret.
func TestCARestartKeepsRoot(t *testing.T) {
	c := startCluster(t)
	type res struct {
		k   *ca.Keys
		err error
	}
	ch := make(chan res, 3)
	for range 3 {
		go func() {
			k, err := ca.EnsureSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{})
			ch <- res{k, err}
		}()
	}
	var first *ca.Keys
	for range 3 {
		r := <-ch
		if r.err != nil {
			t.Fatalf("EnsureSelfSignedRoot: %v", r.err)
		}
		if first == nil {
			first = r.k
		} else if !first.Root().Equal(r.k.Root()) {
			t.Fatalf("concurrent leaders stored different roots")
		}
	}
	srv1 := startCA(t, c, zap.NewNop())
	if !srv1.ca.Keys().Root().Equal(first.Root()) {
		t.Fatalf("CA did not reuse the stored root")
	}
	srv2 := startCA(t, c, zap.NewNop()) // a restart: new process state, same Secret
	if !srv2.ca.Keys().Root().Equal(first.Root()) {
		t.Fatalf("restarted CA has a new root %x, want %x", srv2.ca.Keys().Root().SerialNumber, first.Root().SerialNumber)
	}
	loaded, err := ca.LoadKeys(t.Context(), c.cs, systemNS)
	if err != nil || !loaded.Root().Equal(first.Root()) || loaded.Source != systemNS+"/"+ca.SelfSignedSecretName {
		t.Fatalf("LoadKeys = %v, %v; want the stored root from %s", loaded, err, ca.SelfSignedSecretName)
	}
	// A leaf from the restarted CA verifies against the first root.
	resp, err := srv2.call(t.Context(), c.token(t, "demo/app-1", ca.Audience), "", func() string { s, _ := newCSR(t, spiffe("demo", "app")); return s }())
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := certmanager.ParseCertificates([]byte(resp.CertChain[0]))
	pool := x509.NewCertPool()
	pool.AddCert(first.Root())
	if _, err := leaf[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("leaf of the restarted CA does not verify against the original root: %v", err)
	}
}

// TestPluginCACerts: a cacerts Secret takes precedence over the self-signed root.
func TestPluginCACerts(t *testing.T) {
	c := startCluster(t)
	self, err := ca.EnsureSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Build a plug-in intermediate signed by a new offline root.
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(8), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(47 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	interDER, _ := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	keyDER, _ := x509.MarshalECPrivateKey(interKey)
	pemOf := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	_, err = c.cs.CoreV1().Secrets(systemNS).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: ca.PluginSecretName, Namespace: systemNS},
		Data: map[string][]byte{
			ca.CACertKey:    pemOf("CERTIFICATE", interDER),
			ca.CAKeyKey:     pemOf("EC PRIVATE KEY", keyDER),
			ca.CertChainKey: append(pemOf("CERTIFICATE", interDER), pemOf("CERTIFICATE", rootDER)...),
			ca.RootCertKey:  pemOf("CERTIFICATE", rootDER),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ca.EnsureSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !keys.Root().Equal(root) || keys.Root().Equal(self.Root()) || keys.Source != systemNS+"/"+ca.PluginSecretName {
		t.Fatalf("keys from %s with root %v, want cacerts' root", keys.Source, keys.Root().Subject)
	}
	if len(keys.Chain) != 2 {
		t.Errorf("signing chain has %d certificates, want intermediate and root", len(keys.Chain))
	}
}

// minter signs service-account JWTs with the envtest apiserver's own signing
// key, to make a token the TokenRequest API cannot: an expired one.
type minter struct {
	key    *ecdsa.PrivateKey
	issuer string
	cs     kubernetes.Interface
}

func newMinter(t *testing.T, c *cluster) *minter {
	t.Helper()
	keyFile, issuer := apiserverFlags(t)
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", keyFile)
	}
	var key *ecdsa.PrivateKey
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		key, _ = k.(*ecdsa.PrivateKey)
	} else if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		key = k
	}
	if key == nil {
		t.Fatalf("%s: not an ECDSA key (%s)", keyFile, blk.Type)
	}
	return &minter{key: key, issuer: issuer, cs: c.cs}
}

// apiserverFlags reads --service-account-signing-key-file and
// --service-account-issuer from the kube-apiserver this test process started.
func apiserverFlags(t *testing.T) (keyFile, issuer string) {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, pid := range strings.Fields(string(b)) {
			cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			args := strings.Split(string(cmd), "\x00")
			if len(args) == 0 || filepath.Base(args[0]) != "kube-apiserver" {
				continue
			}
			for _, a := range args {
				if v, ok := strings.CutPrefix(a, "--service-account-signing-key-file="); ok {
					keyFile = v
				}
				if v, ok := strings.CutPrefix(a, "--service-account-issuer="); ok {
					issuer = v
				}
			}
		}
	}
	if keyFile == "" || issuer == "" {
		t.Fatalf("kube-apiserver child process with service-account flags not found")
	}
	return keyFile, issuer
}

func (m *minter) token(t *testing.T, pod *corev1.Pod, exp time.Time) string {
	t.Helper()
	sa, err := m.cs.CoreV1().ServiceAccounts(pod.Namespace).Get(t.Context(), pod.Spec.ServiceAccountName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(m.key.Public())
	kid := sha256.Sum256(pub)
	header := map[string]any{"alg": "ES256", "kid": base64.RawURLEncoding.EncodeToString(kid[:])}
	iat := exp.Add(-10 * time.Minute)
	if now := time.Now().Add(-time.Minute); iat.After(now) {
		iat = now
	}
	claims := map[string]any{
		"iss": m.issuer, "aud": []string{ca.Audience}, "sub": "system:serviceaccount:" + pod.Namespace + ":" + sa.Name,
		"iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix(), "jti": fmt.Sprintf("minted-%d", exp.UnixNano()),
		"kubernetes.io": map[string]any{
			"namespace":      pod.Namespace,
			"pod":            map[string]any{"name": pod.Name, "uid": string(pod.UID)},
			"serviceaccount": map[string]any{"name": sa.Name, "uid": string(sa.UID)},
		},
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	signing := enc(header) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, m.key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestStagedRootRotation walks the leader's RootRotator through a rotation:
// the next root is published in the bundle first while the old one still
// signs, becomes the signing root after the propagation time, and the old
// root leaves the bundle after the overlap.
func TestStagedRootRotation(t *testing.T) {
	c := startCluster(t)
	now := time.Now()
	clock := func() time.Time { return now }
	keys0, err := ca.EnsureSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{TTL: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(keys0, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reloader := &ca.Reloader{CA: authority, Client: c.cs, Namespace: systemNS}
	rot := &ca.RootRotator{Client: c.cs, Namespace: systemNS, RenewBefore: 2 * 365 * 24 * time.Hour,
		Options: ca.RootOptions{Now: clock, Propagation: 5 * time.Minute, Overlap: time.Hour}}
	id := mustSPIFFE(t, spiffe("demo", "app"))
	signedBy := func() *x509.Certificate {
		t.Helper()
		if err := reloader.ReloadOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		csr, _ := newCSR(t, id.String())
		issued, err := authority.Sign([]byte(csr), id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range authority.Keys().Roots {
			if issued.Leaf.CheckSignatureFrom(r) == nil {
				return r
			}
		}
		t.Fatalf("leaf signed by no root of the bundle")
		return nil
	}
	bundle := func() []*x509.Certificate {
		roots, _ := certmanager.ParseCertificates(authority.RootsPEM())
		return roots
	}

	// Phase 1: the root has less than RenewBefore left, so a next root is staged.
	if _, err := rot.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := signedBy(); !got.Equal(keys0.Root()) {
		t.Fatalf("a staged root signs before its propagation time")
	}
	if b := bundle(); len(b) != 2 || !b[0].Equal(keys0.Root()) {
		t.Fatalf("bundle while staged has %d roots, want the current one first and the staged one", len(b))
	}
	staged := bundle()[1]
	if _, err := rot.RunOnce(t.Context()); err != nil { // idempotent while staged
		t.Fatal(err)
	}
	signedBy() // reload
	if b := bundle(); len(b) != 2 {
		t.Fatalf("a second check staged another root: %d roots", len(b))
	}

	// Phase 2: after the propagation time the staged root signs.
	now = now.Add(6 * time.Minute)
	if _, err := rot.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := signedBy(); !got.Equal(staged) {
		t.Fatalf("after the propagation time leaves are signed by %v, want the staged root", got.SerialNumber)
	}
	if b := bundle(); len(b) != 2 || !b[0].Equal(staged) || !b[1].Equal(keys0.Root()) {
		t.Fatalf("bundle during the overlap has %d roots, want the new root then the old one", len(b))
	}

	// After the overlap the old root leaves the bundle; a restart keeps the new one.
	now = now.Add(2 * time.Hour)
	if _, err := rot.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	signedBy()
	if b := bundle(); len(b) != 1 || !b[0].Equal(staged) {
		t.Fatalf("bundle after the overlap has %d roots, want only the new root", len(b))
	}
	restarted, err := ca.LoadKeys(t.Context(), c.cs, systemNS)
	if err != nil || !restarted.Root().Equal(staged) {
		t.Fatalf("after a restart the root is %v (err %v), want the rotated root", restarted, err)
	}
}

func mustSPIFFE(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// countingAuth counts the tokens a wrapped Authenticator is asked about.
type countingAuth struct {
	next  ca.Authenticator
	calls int
}

func (c *countingAuth) Authenticate(ctx context.Context, token string) (*ca.Caller, error) {
	c.calls++
	return c.next.Authenticate(ctx, token)
}

// TestLocalAuthenticatorAgainstAPIServer: pod-bound tokens of the real API
// server are accepted without a TokenReview, with the caller TokenReview
// gives, using the keys and issuer its discovery endpoints publish; every
// token the API server would refuse (or that is not bound to a pod) is
// handed to TokenReview, which decides.
func TestLocalAuthenticatorAgainstAPIServer(t *testing.T) {
	c := startCluster(t)
	review := &ca.TokenReviewAuthenticator{Client: c.cs}
	next := &countingAuth{next: review}
	a := &ca.LocalAuthenticator{
		Client: c.cs, Pods: ca.ClientPods{Reader: c.cl}, ServiceAccounts: ca.ClientServiceAccounts{Reader: c.cl},
		Next: next, Logger: zaptest.NewLogger(t),
	}
	ctx := t.Context()
	check := func(what, token string, wantOK bool, wantReviews int) *ca.Caller {
		t.Helper()
		before := next.calls
		got, err := a.Authenticate(ctx, token)
		if (err == nil) != wantOK || next.calls-before != wantReviews {
			t.Fatalf("%s: caller %+v, error %v, %d TokenReviews; want ok=%v and %d TokenReviews", what, got, err, next.calls-before, wantOK, wantReviews)
		}
		return got
	}

	app := c.token(t, "demo/app-1", ca.Audience)
	got := check("pod-bound token", app, true, 0)
	want, err := review.Authenticate(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *want {
		t.Fatalf("local caller %+v, TokenReview's %+v", got, want)
	}
	if got.PodName != "app-1" || got.NodeName != "node-a" {
		t.Fatalf("caller %+v: want pod app-1 on node-a", got)
	}
	zt := c.token(t, systemNS+"/ztunnel-a", ca.Audience)
	check("ztunnel's token", zt, true, 0)

	check("another audience", c.token(t, "demo/app-1", "api"), false, 1)
	expired := newMinter(t, c).token(t, c.pods["demo/web-1"], time.Now().Add(-time.Minute))
	check("expired (signed with the API server's key)", expired, false, 1)
	tampered := strings.Split(app, ".")
	claims, _ := base64.RawURLEncoding.DecodeString(tampered[1])
	claims = []byte(strings.Replace(string(claims), `"app-1"`, `"web-1"`, 1))
	check("claims changed after signing", tampered[0]+"."+base64.RawURLEncoding.EncodeToString(claims)+"."+tampered[2], false, 1)

	tr, err := c.cs.CoreV1().ServiceAccounts("demo").CreateToken(ctx, "app", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{ca.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := check("token bound to no pod: TokenReview accepts it", tr.Status.Token, true, 1); got.PodName != "" {
		t.Fatalf("unbound token: caller %+v", got)
	}

	// The service account recreated: its old tokens are dead.
	web := c.token(t, "demo/web-1", ca.Audience)
	check("web before", web, true, 0)
	if err := c.cs.CoreV1().ServiceAccounts("demo").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cs.CoreV1().ServiceAccounts("demo").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("web after its service account was recreated", web, false, 1)

	// The pod deleted: its tokens are dead. (A token TokenReview has
	// accepted stays accepted by the API server's own cache for 10 s; this
	// one was only ever checked here.)
	if err := c.cs.CoreV1().Pods(systemNS).Delete(ctx, "ztunnel-a", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	check("ztunnel after its pod was deleted", zt, false, 1)
}
