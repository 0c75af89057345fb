package gateway

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// classInstaller creates the istio-waypoint GatewayClass when missing and
// marks it Accepted. It runs on the leader, again every minute, so a deleted
// class comes back.
type classInstaller struct {
	client client.Client
	log    *zap.Logger
}

func (c *classInstaller) Start(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if err := c.ensure(ctx); err != nil {
			c.log.Warn("gatewayclass not ensured", zap.String("name", ClassName), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (c *classInstaller) ensure(ctx context.Context) error {
	var gc gatewayv1.GatewayClass
	err := c.client.Get(ctx, types.NamespacedName{Name: ClassName}, &gc)
	if apierrors.IsNotFound(err) {
		gc = gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: ClassName},
			Spec: gatewayv1.GatewayClassSpec{ControllerName: ControllerName,
				Description: ptr.To("The waypoint proxies of the ambient mesh (istiod-lite)")},
		}
		if err := c.client.Create(ctx, &gc); err != nil {
			return fmt.Errorf("create gatewayclass: %w", err) // AlreadyExists: the next pass sees it
		}
	} else if err != nil {
		return err
	}
	if gc.Spec.ControllerName != ControllerName {
		return nil // someone else's class of that name
	}
	next := gc.DeepCopy()
	meta.SetStatusCondition(&next.Status.Conditions, metav1.Condition{Type: string(gatewayv1.GatewayClassConditionStatusAccepted),
		Status: metav1.ConditionTrue, Reason: string(gatewayv1.GatewayClassReasonAccepted), Message: "handled by istiod-lite",
		ObservedGeneration: gc.Generation})
	if equalConds(gc.Status.Conditions, next.Status.Conditions) {
		return nil
	}
	return c.client.Status().Patch(ctx, next, client.MergeFrom(&gc))
}

func equalConds(a, b []metav1.Condition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Type != b[i].Type || a[i].Status != b[i].Status || a[i].Reason != b[i].Reason || a[i].ObservedGeneration != b[i].ObservedGeneration {
			return false
		}
	}
	return true
}
