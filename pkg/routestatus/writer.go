// Package routestatus writes the status of Gateway API mesh routes
// (HTTPRoute, GRPCRoute, TCPRoute) that pkg/model computes with each
// translation: the entries of status.parents istiod-lite owns (controllerName
// istio.io/gateway-controller, for parentRefs to a Service or to an
// istio-waypoint Gateway), with Accepted, ResolvedRefs and ResolvedWaypoints
// conditions carrying observedGeneration; and the status of the policies
// it reads (policies.go): LocalRateLimitPolicy status.ancestors with
// Accepted, an Accepted condition in VirtualService status.conditions and
// istio.io/WaypointAccepted in AuthorizationPolicy status.conditions.
// Only the leader writes. Only istiod-lite imports it.
package routestatus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/mesh/pkg/model"
)

// Defaults of the Writer's timing.
const (
	// DefaultResync is how often every route is compared again with the
	// last translation, so a status someone else changed is put back.
	DefaultResync = time.Minute
	minRetry      = 500 * time.Millisecond
	maxRetry      = 30 * time.Second
)

// Writer keeps route statuses equal to the newest translation. It is
// level-based and idempotent: each pass reads every route of the watched
// kinds from the cache, computes its parents (others' entries kept, ours
// replaced, lastTransitionTime kept for unchanged conditions) and updates
// the status subresource only when it differs. A route whose cached
// generation is not the one the translation saw is skipped: the translation
// of its new generation follows.
//
// Concurrency: Update may be called from any goroutine (the Collector's
// Sink); it stores the statuses under mu and wakes Start's loop, which alone
// reads and writes the API.
type Writer struct {
	// Client reads routes from the manager's cache and writes status.
	Client client.Client
	// Watches reports whether a route kind is watched (its CRD installed);
	// nil means all are.
	Watches func(kind string) bool
	Logger  *zap.Logger
	// Resync; DefaultResync when zero.
	Resync time.Duration

	mu       sync.Mutex
	desired  map[string]*model.RouteStatus  // newest translation's; guarded by mu
	policies map[string]*model.PolicyStatus // newest translation's; guarded by mu
	have     bool                           // a translation arrived; guarded by mu
	kick     chan struct{}                  // capacity 1
	once     sync.Once
}

func (w *Writer) init() {
	w.once.Do(func() {
		w.kick = make(chan struct{}, 1)
		if w.Logger == nil {
			w.Logger = zap.NewNop()
		}
		if w.Resync <= 0 {
			w.Resync = DefaultResync
		}
	})
}

// Update records the route statuses of a translation. r.RouteStatuses must
// not be modified afterwards.
func (w *Writer) Update(r model.Resources) {
	w.init()
	w.mu.Lock()
	w.desired, w.policies, w.have = r.RouteStatuses, r.PolicyStatuses, true
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// NeedLeaderElection makes the manager run the Writer on the leader only.
func (*Writer) NeedLeaderElection() bool { return true }

// Start writes statuses until ctx is done; it returns nil then.
func (w *Writer) Start(ctx context.Context) error {
	w.init()
	resync := time.NewTicker(w.Resync)
	defer resync.Stop()
	retry := time.NewTimer(0)
	<-retry.C
	backoff := minRetry
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.kick:
		case <-resync.C:
		case <-retry.C:
		}
		if err := w.sync(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			w.Logger.Warn("route status not written; retrying", zap.Duration("in", backoff), zap.Error(err))
			retry.Reset(backoff)
			backoff = min(backoff*2, maxRetry)
			continue
		}
		backoff = minRetry
	}
}

// routeRef is one cached route with a pointer into its status.
type routeRef struct {
	kind   string
	obj    client.Object
	status *gatewayv1.RouteStatus
}

func (w *Writer) list(ctx context.Context, kind string) ([]routeRef, error) {
	var out []routeRef
	switch kind {
	case model.KindHTTPRoute:
		var l gatewayv1.HTTPRouteList
		if err := w.Client.List(ctx, &l); err != nil {
			return nil, err
		}
		for i := range l.Items {
			out = append(out, routeRef{kind, &l.Items[i], &l.Items[i].Status.RouteStatus})
		}
	case model.KindGRPCRoute:
		var l gatewayv1.GRPCRouteList
		if err := w.Client.List(ctx, &l); err != nil {
			return nil, err
		}
		for i := range l.Items {
			out = append(out, routeRef{kind, &l.Items[i], &l.Items[i].Status.RouteStatus})
		}
	case model.KindTCPRoute:
		var l gatewayv1.TCPRouteList
		if err := w.Client.List(ctx, &l); err != nil {
			return nil, err
		}
		for i := range l.Items {
			out = append(out, routeRef{kind, &l.Items[i], &l.Items[i].Status.RouteStatus})
		}
	}
	return out, nil
}

// sync makes one pass over every route.
func (w *Writer) sync(ctx context.Context) error {
	w.mu.Lock()
	desired, policies, have := w.desired, w.policies, w.have
	w.mu.Unlock()
	if !have {
		return nil // nothing translated yet: do not clear what a previous leader wrote
	}
	var errs []error
	if err := w.syncPolicies(ctx, policies); err != nil {
		errs = append(errs, err)
	}
	for _, kind := range []string{model.KindHTTPRoute, model.KindGRPCRoute, model.KindTCPRoute} {
		if w.Watches != nil && !w.Watches(kind) {
			continue
		}
		routes, err := w.list(ctx, kind)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s from the cache: %w", kind, err))
			continue
		}
		for _, r := range routes {
			want := desired[model.RouteStatusKey(kind, r.obj.GetNamespace(), r.obj.GetName())]
			if want != nil && want.Generation != r.obj.GetGeneration() {
				continue // translated from another generation; the next translation covers this one
			}
			next := Merge(r.status.Parents, want, r.obj.GetNamespace(), metav1.Now())
			if apiequality.Semantic.DeepEqual(r.status.Parents, next) {
				continue
			}
			r.status.Parents = next
			if err := w.Client.Status().Update(ctx, r.obj); err != nil {
				if apierrors.IsNotFound(err) {
					continue
				}
				errs = append(errs, fmt.Errorf("update status of %s %s/%s: %w", kind, r.obj.GetNamespace(), r.obj.GetName(), err))
				continue
			}
			w.Logger.Debug("route status written", zap.String("kind", kind), zap.String("namespace", r.obj.GetNamespace()),
				zap.String("name", r.obj.GetName()), zap.Int64("generation", r.obj.GetGeneration()))
		}
	}
	return errors.Join(errs...)
}

// Merge returns the parents a route's status should have: the entries of
// other controllers as they are, then ours from want (nil: none) in want's
// order. A condition that did not change keeps its lastTransitionTime;
// others get now. ns is the route's namespace (the default of parentRefs).
func Merge(current []gatewayv1.RouteParentStatus, want *model.RouteStatus, ns string, now metav1.Time) []gatewayv1.RouteParentStatus {
	var out []gatewayv1.RouteParentStatus
	for _, p := range current {
		if p.ControllerName != model.RouteStatusControllerName {
			out = append(out, p)
		}
	}
	if want == nil {
		if len(out) == 0 && current != nil {
			return []gatewayv1.RouteParentStatus{}
		}
		return out
	}
	for _, p := range want.Parents {
		var old []metav1.Condition
		if i := slices.IndexFunc(current, func(c gatewayv1.RouteParentStatus) bool {
			return c.ControllerName == model.RouteStatusControllerName && sameRef(c.ParentRef, p.ParentRef, ns)
		}); i >= 0 {
			old = current[i].Conditions
		}
		conds := make([]metav1.Condition, 0, len(p.Conditions))
		for _, c := range p.Conditions {
			c.LastTransitionTime = now
			if i := slices.IndexFunc(old, func(o metav1.Condition) bool { return o.Type == c.Type }); i >= 0 && old[i].Status == c.Status {
				c.LastTransitionTime = old[i].LastTransitionTime
			}
			conds = append(conds, c)
		}
		out = append(out, gatewayv1.RouteParentStatus{ParentRef: p.ParentRef, ControllerName: p.ControllerName, Conditions: conds})
	}
	return out
}

// sameRef compares parentRefs with their defaults applied.
func sameRef(a, b gatewayv1.ParentReference, ns string) bool {
	norm := func(p gatewayv1.ParentReference) [6]string {
		out := [6]string{gatewayv1.GroupName, "Gateway", ns, string(p.Name), "", ""}
		if p.Group != nil {
			out[0] = string(*p.Group)
		}
		if p.Kind != nil {
			out[1] = string(*p.Kind)
		}
		if p.Namespace != nil {
			out[2] = string(*p.Namespace)
		}
		if p.SectionName != nil {
			out[4] = string(*p.SectionName)
		}
		if p.Port != nil {
			out[5] = fmt.Sprint(*p.Port)
		}
		return out
	}
	return norm(a) == norm(b)
}
