package routestatus

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/ambient-mesh/mesh/api/policy/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
)

// syncPolicies writes the statuses of LocalRateLimitPolicies (our ancestor
// entries of status.ancestors), VirtualServices (our Accepted condition in
// Istio's status.conditions) and AuthorizationPolicies with targetRefs
// (Istio's istio.io/WaypointAccepted condition) like sync writes routes': only on change,
// skipping objects whose generation the translation did not see.
func (w *Writer) syncPolicies(ctx context.Context, desired map[string]*model.PolicyStatus) error {
	var errs []error
	update := func(kind string, obj client.Object) {
		if err := w.Client.Status().Update(ctx, obj); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("update status of %s %s/%s: %w", kind, obj.GetNamespace(), obj.GetName(), err))
			}
			return
		}
		w.Logger.Debug("policy status written", zap.String("kind", kind), zap.String("namespace", obj.GetNamespace()),
			zap.String("name", obj.GetName()), zap.Int64("generation", obj.GetGeneration()))
	}
	if w.Watches == nil || w.Watches(model.KindLocalRateLimitPolicy) {
		var l policyv1alpha1.LocalRateLimitPolicyList
		if err := w.Client.List(ctx, &l); err != nil {
			errs = append(errs, fmt.Errorf("list %s from the cache: %w", model.KindLocalRateLimitPolicy, err))
		}
		for i := range l.Items {
			p := &l.Items[i]
			want := desired[model.RouteStatusKey(model.KindLocalRateLimitPolicy, p.Namespace, p.Name)]
			if want == nil || want.Generation != p.Generation {
				continue
			}
			next := MergeAncestors(p.Status.Ancestors, want.Ancestors, metav1.Now())
			if apiequality.Semantic.DeepEqual(p.Status.Ancestors, next) {
				continue
			}
			p.Status.Ancestors = next
			update(model.KindLocalRateLimitPolicy, p)
		}
	}
	if w.Watches == nil || w.Watches(model.KindVirtualService) {
		var l networkingv1.VirtualServiceList
		if err := w.Client.List(ctx, &l); err != nil {
			errs = append(errs, fmt.Errorf("list %s from the cache: %w", model.KindVirtualService, err))
		}
		for _, vs := range l.Items {
			want := desired[model.RouteStatusKey(model.KindVirtualService, vs.Namespace, vs.Name)]
			if want == nil || want.Generation != vs.Generation {
				continue
			}
			next, changed := MergeIstioConditions(vs.Status.GetConditions(), want.Conditions, metav1.Now())
			if !changed {
				continue
			}
			vs = vs.DeepCopy()
			vs.Status.Conditions = next
			update(model.KindVirtualService, vs)
		}
	}
	if w.Watches == nil || w.Watches(model.KindAuthorizationPolicy) {
		var l securityv1.AuthorizationPolicyList
		if err := w.Client.List(ctx, &l); err != nil {
			errs = append(errs, fmt.Errorf("list %s from the cache: %w", model.KindAuthorizationPolicy, err))
		}
		for _, ap := range l.Items {
			want := desired[model.RouteStatusKey(model.KindAuthorizationPolicy, ap.Namespace, ap.Name)]
			if want == nil || want.Generation != ap.Generation {
				continue
			}
			next, changed := MergeIstioConditions(ap.Status.GetConditions(), want.Conditions, metav1.Now())
			if !changed {
				continue
			}
			ap = ap.DeepCopy()
			ap.Status.Conditions = next
			update(model.KindAuthorizationPolicy, ap)
		}
	}
	return errors.Join(errs...)
}

// MergeAncestors returns a policy's status.ancestors: other controllers'
// entries as they are, then ours from want. A condition whose status did
// not change keeps its lastTransitionTime.
func MergeAncestors(current, want []gatewayv1.PolicyAncestorStatus, now metav1.Time) []gatewayv1.PolicyAncestorStatus {
	var out []gatewayv1.PolicyAncestorStatus
	for _, a := range current {
		if a.ControllerName != model.PolicyControllerName {
			out = append(out, a)
		}
	}
	for _, a := range want {
		var old []metav1.Condition
		if i := slices.IndexFunc(current, func(c gatewayv1.PolicyAncestorStatus) bool {
			return c.ControllerName == a.ControllerName && apiequality.Semantic.DeepEqual(c.AncestorRef, a.AncestorRef)
		}); i >= 0 {
			old = current[i].Conditions
		}
		conds := make([]metav1.Condition, 0, len(a.Conditions))
		for _, c := range a.Conditions {
			c.LastTransitionTime = now
			if i := slices.IndexFunc(old, func(o metav1.Condition) bool { return o.Type == c.Type }); i >= 0 && old[i].Status == c.Status {
				c.LastTransitionTime = old[i].LastTransitionTime
			}
			conds = append(conds, c)
		}
		out = append(out, gatewayv1.PolicyAncestorStatus{AncestorRef: a.AncestorRef, ControllerName: a.ControllerName, Conditions: conds})
	}
	if out == nil && current != nil {
		return []gatewayv1.PolicyAncestorStatus{}
	}
	return out
}

// MergeIstioConditions sets want's conditions in an Istio status's
// conditions (others kept, in place), keeping lastTransitionTime when the
// status did not change; changed reports whether anything did.
func MergeIstioConditions(current []*metav1alpha1.IstioCondition, want []metav1.Condition, now metav1.Time) (out []*metav1alpha1.IstioCondition, changed bool) {
	for _, c := range current {
		out = append(out, proto.Clone(c).(*metav1alpha1.IstioCondition))
	}
	for _, c := range want {
		next := &metav1alpha1.IstioCondition{Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message,
			ObservedGeneration: c.ObservedGeneration, LastTransitionTime: timestamppb.New(now.Time)}
		i := slices.IndexFunc(out, func(o *metav1alpha1.IstioCondition) bool { return o.Type == c.Type })
		if i < 0 {
			out, changed = append(out, next), true
			continue
		}
		if out[i].Status == next.Status && out[i].LastTransitionTime != nil {
			next.LastTransitionTime = out[i].LastTransitionTime
		}
		if !proto.Equal(out[i], next) {
			out[i], changed = next, true
		}
	}
	return out, changed
}
