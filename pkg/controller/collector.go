// Package controller holds istiod-lite's Kubernetes controllers that are not
// owned by a feature package: the Collector, which turns the watched cluster
// state into a model.Snapshot, translates it (pkg/model) and hands the
// resources to the xDS server (pkg/xds). Only istiod-lite imports it.
package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	telemetryv1alpha1 "istio.io/client-go/pkg/apis/telemetry/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"go.uber.org/zap"

	policyv1alpha1 "github.com/ambient-mesh/mesh/api/policy/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
)

// Collector rebuilds the mesh model whenever a watched object changes.
//
// It is level-based: every event enqueues the same single key, and Reconcile
// lists everything from the manager's informer cache, translates the whole
// snapshot and hands it to Sink. Bursts of events collapse into one
// reconcile (the workqueue de-duplicates the key), and the xDS server diffs
// what it is given against what clients hold, so only changes are pushed.
// When only Pods changed, Reconcile reads just the Pods that events named and
// translates those alone, keeping every other message (see incremental).
//
// Optional kinds (Gateway API Gateways, routes and ReferenceGrants, Istio
// security, networking and telemetry CRDs, the mesh's LocalRateLimitPolicy)
// are watched only when their CRDs are installed when the Collector is set
// up; Missing lists the ones that were not. Telemetry is read at v1, or at
// v1alpha1 where only that version is served.
//
// Istio's mesh config is read from the ConfigMap MeshConfigMap (key "mesh")
// at every translation, parsed again only when it changed; while it does
// not parse or validate, the last good one stays in use and the problem is
// reported (log line and Warning Event on the ConfigMap, naming the field).
// Without the ConfigMap, Mesh.Istio (from a file, or nil) is used.
type Collector struct {
	Client client.Reader
	Mesh   model.MeshConfig
	// MeshConfigMap names the ConfigMap holding Istio's mesh config;
	// zero: only Mesh.Istio.
	MeshConfigMap types.NamespacedName
	// Sink receives every translation (normally xds.Server.Update).
	Sink   func(model.Resources)
	Logger *zap.Logger
	// Events, when set, gets a Warning Event on each object that could not
	// be (fully) translated, once per distinct problem, and only while
	// IsLeader reports true (replicas would otherwise repeat each other).
	Events   events.EventRecorder
	IsLeader func() bool

	optional map[string]bool // kind -> watched; written in SetupWithManager only
	// telemetryVersion is the served Telemetry version read ("v1" or
	// "v1alpha1"), "" when none; written in SetupWithManager only.
	telemetryVersion string
	mesh             meshState

	mu       sync.Mutex // guards last
	last     time.Time
	reported map[model.Diagnostic]bool // problems already logged; Reconcile only (one worker)
	inc      incremental               // previous translation; Reconcile only

	dirtyMu   sync.Mutex
	dirtyPods map[string]bool // "<ns>/<name>" of Pods with events since the last Reconcile; guarded by dirtyMu
}

// key is the single work item every event maps to.
var key = reconcile.Request{NamespacedName: types.NamespacedName{Name: "mesh"}}

func toKey(context.Context, client.Object) []reconcile.Request { return []reconcile.Request{key} }

// SetupWithManager registers the Collector. It runs on every replica (not only
// the leader): every replica serves xDS from its own model.
func (c *Collector) SetupWithManager(mgr ctrl.Manager) error {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("ambient-model").
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false), MaxConcurrentReconciles: 1})
	always := []client.Object{&corev1.Namespace{}, &corev1.Node{}, &corev1.Service{}, &discoveryv1.EndpointSlice{}}
	for _, o := range always {
		b = b.Watches(o, handler.EnqueueRequestsFromMapFunc(toKey))
	}
	b = b.Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(c.podEvent))
	c.optional = map[string]bool{}
	optional := []struct {
		gvk schema.GroupVersionKind
		obj client.Object
		// specOnly: status writes (ours, by pkg/routestatus) are not inputs.
		specOnly bool
	}{
		{gatewayv1.SchemeGroupVersion.WithKind("Gateway"), &gatewayv1.Gateway{}, false},
		// Not specOnly though istiod-lite writes its status: the dry-run
		// annotation is an input and does not change the generation. A
		// status write costs one translation that changes nothing.
		{securityv1.SchemeGroupVersion.WithKind("AuthorizationPolicy"), &securityv1.AuthorizationPolicy{}, false},
		{securityv1.SchemeGroupVersion.WithKind("PeerAuthentication"), &securityv1.PeerAuthentication{}, false},
		{gatewayv1.SchemeGroupVersion.WithKind("HTTPRoute"), &gatewayv1.HTTPRoute{}, true},
		{gatewayv1.SchemeGroupVersion.WithKind("GRPCRoute"), &gatewayv1.GRPCRoute{}, true},
		{gatewayv1.SchemeGroupVersion.WithKind("TCPRoute"), &gatewayv1.TCPRoute{}, true},
		{gatewayv1.SchemeGroupVersion.WithKind("ReferenceGrant"), &gatewayv1.ReferenceGrant{}, false},
		{networkingv1.SchemeGroupVersion.WithKind("DestinationRule"), &networkingv1.DestinationRule{}, false},
		{networkingv1.SchemeGroupVersion.WithKind("VirtualService"), &networkingv1.VirtualService{}, true},
		{policyv1alpha1.SchemeGroupVersion.WithKind(model.KindLocalRateLimitPolicy), &policyv1alpha1.LocalRateLimitPolicy{}, true},
	}
	for _, o := range optional {
		_, err := mgr.GetRESTMapper().RESTMapping(o.gvk.GroupKind(), o.gvk.Version)
		switch {
		case meta.IsNoMatchError(err):
			c.Logger.Warn("crd not installed; kind ignored until restart", zap.String("kind", o.gvk.String()))
			continue
		case err != nil:
			return fmt.Errorf("look up %s in the API: %w", o.gvk, err)
		}
		c.optional[o.gvk.Kind] = true
		if o.specOnly {
			b = b.Watches(o.obj, handler.EnqueueRequestsFromMapFunc(toKey), builder.WithPredicates(predicate.GenerationChangedPredicate{}))
			continue
		}
		b = b.Watches(o.obj, handler.EnqueueRequestsFromMapFunc(toKey))
	}
	for _, v := range []struct {
		version string
		obj     client.Object
	}{{"v1", &telemetryv1.Telemetry{}}, {"v1alpha1", &telemetryv1alpha1.Telemetry{}}} {
		gvk := schema.GroupVersionKind{Group: telemetryv1.SchemeGroupVersion.Group, Version: v.version, Kind: model.KindTelemetry}
		_, err := mgr.GetRESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("look up %s in the API: %w", gvk, err)
		}
		c.optional[model.KindTelemetry], c.telemetryVersion = true, v.version
		b = b.Watches(v.obj, handler.EnqueueRequestsFromMapFunc(toKey))
		break
	}
	if !c.optional[model.KindTelemetry] {
		c.Logger.Warn("crd not installed; kind ignored until restart", zap.String("kind", "telemetry.istio.io/v1, Kind=Telemetry"))
	}
	if c.MeshConfigMap.Name != "" {
		b = b.Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(toKey), builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == c.MeshConfigMap.Namespace && o.GetName() == c.MeshConfigMap.Name
		})))
	}
	return b.Complete(c)
}

// optionalKinds are the kinds watched only when their CRD is installed.
var optionalKinds = []string{"Gateway", "AuthorizationPolicy", "PeerAuthentication", "HTTPRoute", "GRPCRoute", "TCPRoute", "ReferenceGrant",
	model.KindDestinationRule, model.KindVirtualService, model.KindLocalRateLimitPolicy, model.KindTelemetry}

// Missing lists the optional kinds that are not watched (CRD absent).
func (c *Collector) Missing() []string {
	var out []string
	for _, k := range optionalKinds {
		if !c.optional[k] {
			out = append(out, k)
		}
	}
	return out
}

// Watches reports whether an optional kind is watched (its CRD was
// installed at setup), so the manager's cache can serve it.
func (c *Collector) Watches(kind string) bool { return c.optional[kind] }

// Reconcile lists the cluster state from the cache and pushes a translation.
func (c *Collector) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	start := time.Now()
	res, incremental, pods, err := c.translate(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	c.Sink(res)
	c.report(ctx, append(slices.Clip(res.Diagnostics), c.mesh.diagnostics()...))
	c.mu.Lock()
	c.last = time.Now()
	c.mu.Unlock()
	c.Logger.Debug("model rebuilt", zap.Int("pods", pods),
		zap.Int("addresses", len(res.Addresses)), zap.Int("authorizations", len(res.Authorizations)),
		zap.Bool("incremental", incremental),
		zap.Duration("took", time.Since(start)))
	return reconcile.Result{}, nil
}

// report logs each new problem once and records it as a Warning Event on the
// object, so `kubectl describe` and `kubectl get events` name the field.
// Problems that went away are forgotten, so they are reported again if they
// come back.
func (c *Collector) report(ctx context.Context, diags []model.Diagnostic) {
	now := make(map[model.Diagnostic]bool, len(diags))
	for _, d := range diags {
		now[d] = true
		if c.reported[d] {
			continue
		}
		c.Logger.Warn("resource not fully translated",
			zap.String("kind", d.Kind), zap.String("namespace", d.Namespace), zap.String("name", d.Name),
			zap.String("field", d.Field), zap.String("reason", d.Reason), zap.String("message", d.Message))
		if c.Events == nil || (c.IsLeader != nil && !c.IsLeader()) {
			continue
		}
		obj := c.objectFor(d.Kind)
		if obj == nil {
			continue
		}
		if err := c.Client.Get(ctx, types.NamespacedName{Namespace: d.Namespace, Name: d.Name}, obj); err != nil {
			continue // gone since the snapshot; nothing to attach the event to
		}
		c.Events.Eventf(obj, nil, corev1.EventTypeWarning, d.Reason, "Translate", "%s: %s", d.Field, d.Message)
	}
	c.reported = now
}

// objectFor returns an empty object of a diagnosed kind.
func (c *Collector) objectFor(kind string) client.Object {
	switch kind {
	case "ConfigMap":
		return &corev1.ConfigMap{}
	case model.KindTelemetry:
		if c.telemetryVersion == "v1alpha1" {
			return &telemetryv1alpha1.Telemetry{}
		}
		return &telemetryv1.Telemetry{}
	case "AuthorizationPolicy":
		return &securityv1.AuthorizationPolicy{}
	case "PeerAuthentication":
		return &securityv1.PeerAuthentication{}
	case "Service":
		return &corev1.Service{}
	case "Pod":
		return &corev1.Pod{}
	case "Gateway":
		return &gatewayv1.Gateway{}
	case "EndpointSlice":
		return &discoveryv1.EndpointSlice{}
	case "HTTPRoute":
		return &gatewayv1.HTTPRoute{}
	case "GRPCRoute":
		return &gatewayv1.GRPCRoute{}
	case "TCPRoute":
		return &gatewayv1.TCPRoute{}
	case model.KindDestinationRule:
		return &networkingv1.DestinationRule{}
	case model.KindVirtualService:
		return &networkingv1.VirtualService{}
	case model.KindLocalRateLimitPolicy:
		return &policyv1alpha1.LocalRateLimitPolicy{}
	}
	return nil
}

// Built reports whether at least one translation reached the Sink.
func (c *Collector) Built() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.last.IsZero()
}

// Snapshot reads every watched kind from the cache. The objects are the
// cache's own (lists skip the deep copy, 60 ms at 10,000 pods): callers must
// not modify them; model.Translate only reads.
func (c *Collector) Snapshot(ctx context.Context) (model.Snapshot, error) {
	return c.snapshot(ctx, true)
}

// snapshot is Snapshot, without the Pods unless withPods.
func (c *Collector) snapshot(ctx context.Context, withPods bool) (model.Snapshot, error) {
	s := model.Snapshot{Mesh: c.Mesh}
	if c.MeshConfigMap.Name != "" {
		var cm corev1.ConfigMap
		switch err := c.Client.Get(ctx, c.MeshConfigMap, &cm); {
		case apierrors.IsNotFound(err):
			s.Mesh.Istio = c.mesh.load(nil, c.Mesh.Istio, c.Logger)
		case err != nil:
			return s, fmt.Errorf("get mesh config ConfigMap %s from the cache: %w", c.MeshConfigMap, err)
		default:
			s.Mesh.Istio = c.mesh.load(&cm, c.Mesh.Istio, c.Logger)
		}
	}
	var (
		nss   corev1.NamespaceList
		nodes corev1.NodeList
		pods  corev1.PodList
		svcs  corev1.ServiceList
		eps   discoveryv1.EndpointSliceList
	)
	lists := []client.ObjectList{&nss, &nodes, &svcs, &eps}
	if withPods {
		lists = append(lists, &pods)
	}
	for _, l := range lists {
		if err := c.Client.List(ctx, l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list %T from the cache: %w", l, err)
		}
	}
	s.Namespaces = ptrs(nss.Items)
	s.Nodes = ptrs(nodes.Items)
	s.Pods = ptrs(pods.Items)
	s.Services = ptrs(svcs.Items)
	s.EndpointSlices = ptrs(eps.Items)
	if c.optional["Gateway"] {
		var l gatewayv1.GatewayList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list gateways: %w", err)
		}
		s.Gateways = ptrs(l.Items)
	}
	if c.optional["AuthorizationPolicy"] {
		var l securityv1.AuthorizationPolicyList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list authorizationpolicies: %w", err)
		}
		s.AuthorizationPolicies = l.Items
	}
	if c.optional["PeerAuthentication"] {
		var l securityv1.PeerAuthenticationList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list peerauthentications: %w", err)
		}
		s.PeerAuthentications = l.Items
	}
	if c.optional["HTTPRoute"] {
		var l gatewayv1.HTTPRouteList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list httproutes: %w", err)
		}
		s.HTTPRoutes = ptrs(l.Items)
	}
	if c.optional["GRPCRoute"] {
		var l gatewayv1.GRPCRouteList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list grpcroutes: %w", err)
		}
		s.GRPCRoutes = ptrs(l.Items)
	}
	if c.optional["TCPRoute"] {
		var l gatewayv1.TCPRouteList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list tcproutes: %w", err)
		}
		s.TCPRoutes = ptrs(l.Items)
	}
	if c.optional["ReferenceGrant"] {
		var l gatewayv1.ReferenceGrantList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list referencegrants: %w", err)
		}
		s.ReferenceGrants = ptrs(l.Items)
	}
	if c.optional[model.KindDestinationRule] {
		var l networkingv1.DestinationRuleList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list destinationrules: %w", err)
		}
		s.DestinationRules = l.Items
	}
	if c.optional[model.KindVirtualService] {
		var l networkingv1.VirtualServiceList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list virtualservices: %w", err)
		}
		s.VirtualServices = l.Items
	}
	if c.optional[model.KindLocalRateLimitPolicy] {
		var l policyv1alpha1.LocalRateLimitPolicyList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list localratelimitpolicies: %w", err)
		}
		s.LocalRateLimitPolicies = ptrs(l.Items)
	}
	switch c.telemetryVersion {
	case "v1":
		var l telemetryv1.TelemetryList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list telemetries: %w", err)
		}
		s.Telemetries = l.Items
	case "v1alpha1":
		var l telemetryv1alpha1.TelemetryList
		if err := c.Client.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return s, fmt.Errorf("list telemetries: %w", err)
		}
		for _, o := range l.Items { // same schema: the spec is one proto type
			t := &telemetryv1.Telemetry{ObjectMeta: o.ObjectMeta}
			proto.Merge(&t.Spec, &o.Spec)
			s.Telemetries = append(s.Telemetries, t)
		}
	}
	return s, nil
}

func ptrs[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}
