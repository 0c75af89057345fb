package ca

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Audience is the token audience the CA accepts (Istio's "istio-ca").
const Audience = "istio-ca"

// Extra keys the apiserver puts in a bound token's TokenReview user info.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// Caller is an authenticated service account.
type Caller struct {
	Namespace      string
	ServiceAccount string
	// PodName and PodUID come from a pod-bound token; empty otherwise.
	PodName string
	PodUID  types.UID
	// NodeName is the node the token claims (informational; the node used for
	// authorization is read from the bound pod).
	NodeName string
}

func (c *Caller) String() string { return c.Namespace + "/" + c.ServiceAccount }

// Authenticator turns a bearer token into a Caller. Errors are *RuleError.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*Caller, error)
}

// TokenReviewAuthenticator authenticates with the Kubernetes TokenReview API.
// It is safe for concurrent use (client-go clients are).
type TokenReviewAuthenticator struct {
	Client kubernetes.Interface
	// Audiences the token must be issued for; default [istio-ca].
	Audiences []string
}

// Authenticate reviews token.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (*Caller, error) {
	auds := a.Audiences
	if len(auds) == 0 {
		auds = []string{Audience}
	}
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: auds},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, refuse(codes.Unavailable, "authn.tokenreview", "token review failed: %v", err)
	}
	if !tr.Status.Authenticated {
		msg := tr.Status.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return nil, refuse(codes.Unauthenticated, "authn.token", "token rejected by token review: %s", msg)
	}
	if !slices.ContainsFunc(tr.Status.Audiences, func(s string) bool { return slices.Contains(auds, s) }) {
		return nil, refuse(codes.Unauthenticated, "authn.audience", "token audiences %v do not include %v", tr.Status.Audiences, auds)
	}
	parts := strings.Split(tr.Status.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" {
		return nil, refuse(codes.Unauthenticated, "authn.serviceaccount", "caller %q is not a service account", tr.Status.User.Username)
	}
	c := &Caller{Namespace: parts[2], ServiceAccount: parts[3]}
	ex := tr.Status.User.Extra
	if v := ex[extraPodName]; len(v) == 1 {
		c.PodName = v[0]
	}
	if v := ex[extraPodUID]; len(v) == 1 {
		c.PodUID = types.UID(v[0])
	}
	if v := ex[extraNodeName]; len(v) == 1 {
		c.NodeName = v[0]
	}
	return c, nil
}

// Pods answers the impersonation rule's questions about pods.
type Pods interface {
	// Pod returns the pod, or nil when it does not exist.
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	// OnNode reports whether a non-terminated pod of namespace/serviceAccount
	// is scheduled on node.
	OnNode(ctx context.Context, node, namespace, serviceAccount string) (bool, error)
}

// ClientPods implements Pods with a controller-runtime reader. Give it the
// manager's cached client (an informer, so lookups are memory scans) or, in
// tests and tools, a direct client.
type ClientPods struct {
	Reader client.Reader
	// Indexed says the reader has the PodNodeServiceAccountIndex (see
	// IndexPods): OnNode then looks up one key instead of scanning the
	// namespace's pods.
	Indexed bool
}

// PodNodeServiceAccountIndex is the pod field index "<node>/<service account>".
const PodNodeServiceAccountIndex = "ca.ambient-mesh.io/node-serviceaccount"

// IndexPods registers PodNodeServiceAccountIndex with a manager's field
// indexer (mgr.GetFieldIndexer()), before the manager starts.
func IndexPods(ctx context.Context, indexer client.FieldIndexer) error {
	if err := indexer.IndexField(ctx, &corev1.Pod{}, PodNodeServiceAccountIndex, podIndexValue); err != nil {
		return fmt.Errorf("index pods by node and service account: %w", err)
	}
	return nil
}

func podIndexValue(o client.Object) []string {
	p, ok := o.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" {
		return nil
	}
	return []string{p.Spec.NodeName + "/" + podServiceAccount(p)}
}

// Pod gets namespace/name.
func (p ClientPods) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var pod corev1.Pod
	err := p.Reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &pod)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return &pod, nil
}

// OnNode lists the namespace's pods and looks for one of serviceAccount on node.
func (p ClientPods) OnNode(ctx context.Context, node, namespace, serviceAccount string) (bool, error) {
	var pods corev1.PodList
	// Read-only: a cache reader may skip its deep copy.
	opts := []client.ListOption{client.InNamespace(namespace), client.UnsafeDisableDeepCopy}
	if p.Indexed {
		opts = append(opts, client.MatchingFields{PodNodeServiceAccountIndex: node + "/" + serviceAccount})
	}
	if err := p.Reader.List(ctx, &pods, opts...); err != nil {
		return false, fmt.Errorf("list pods in %s: %w", namespace, err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Spec.NodeName == node && podServiceAccount(pod) == serviceAccount && !terminated(pod) {
			return true, nil
		}
	}
	return false, nil
}

func podServiceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

func terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
