package ca

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// Root ConfigMap name, key and label (as Istio publishes it).
const (
	RootConfigMapName = "istio-ca-root-cert"
	RootConfigMapKey  = "root-cert.pem"
	rootConfigLabel   = "istio.io/config"
)

// RootCertReconciler keeps ConfigMap istio-ca-root-cert (key root-cert.pem,
// the CA's trust bundle) in every active namespace. Requests are namespace
// names. It is level-based: each Reconcile reads the namespace and the
// ConfigMap and writes only when they differ from the bundle.
type RootCertReconciler struct {
	Client client.Client
	// Roots returns the bundle to publish (normally CA.RootsPEM).
	Roots func() []byte
}

// Reconcile makes req.Name's ConfigMap carry the current bundle.
func (r *RootCertReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, types.NamespacedName{Name: req.Name}, &ns); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if ns.DeletionTimestamp != nil || ns.Status.Phase == corev1.NamespaceTerminating {
		return reconcile.Result{}, nil
	}
	want := string(r.Roots())
	var cm corev1.ConfigMap
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: req.Name, Name: RootConfigMapName}, &cm)
	if apierrors.IsNotFound(err) {
		cm = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: req.Name, Name: RootConfigMapName, Labels: map[string]string{rootConfigLabel: "true"}},
			Data:       map[string]string{RootConfigMapKey: want},
		}
		if err := r.Client.Create(ctx, &cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("create configmap %s/%s: %w", req.Name, RootConfigMapName, err)
		}
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("get configmap %s/%s: %w", req.Name, RootConfigMapName, err)
	}
	if cm.Data[RootConfigMapKey] == want && cm.Labels[rootConfigLabel] == "true" {
		return reconcile.Result{}, nil
	}
	patch := client.MergeFrom(cm.DeepCopy())
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Data[RootConfigMapKey] = want
	cm.Labels[rootConfigLabel] = "true"
	if err := r.Client.Patch(ctx, &cm, patch); err != nil {
		return reconcile.Result{}, fmt.Errorf("update configmap %s/%s: %w", req.Name, RootConfigMapName, err)
	}
	return reconcile.Result{}, nil
}

// SetupWithManager registers the reconciler: it runs for every namespace,
// for every change to an istio-ca-root-cert ConfigMap, and for every
// namespace whenever rootsChanged receives (wire it to CA.OnRootsChange with
// RootsChangedChannel). rootsChanged may be nil.
func (r *RootCertReconciler) SetupWithManager(mgr ctrl.Manager, rootsChanged <-chan event.GenericEvent) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named("istio-ca-root-cert").
		For(&corev1.Namespace{}).
		Watches(&corev1.ConfigMap{},
			handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
				return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetNamespace()}}}
			}),
			builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == RootConfigMapName })))
	if rootsChanged != nil {
		b = b.WatchesRawSource(source.Channel(rootsChanged, handler.EnqueueRequestsFromMapFunc(r.allNamespaces)))
	}
	if err := b.Complete(r); err != nil {
		return fmt.Errorf("set up istio-ca-root-cert controller: %w", err)
	}
	return nil
}

func (r *RootCertReconciler) allNamespaces(ctx context.Context, _ client.Object) []reconcile.Request {
	var list corev1.NamespaceList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, ns := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: ns.Name}})
	}
	return out
}

// RootsChangedChannel returns a channel that receives one event each time
// ca's trust bundle changes (coalesced while one is pending), for
// SetupWithManager.
func RootsChangedChannel(ca *CA) <-chan event.GenericEvent {
	ch := make(chan event.GenericEvent, 1)
	ca.OnRootsChange(func() {
		select {
		case ch <- event.GenericEvent{Object: &corev1.Namespace{}}:
		default:
		}
	})
	return ch
}
