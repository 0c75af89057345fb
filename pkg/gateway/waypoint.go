// Package gateway deploys waypoints: for every Gateway API Gateway of class
// istio-waypoint, istiod-lite's leader keeps a ServiceAccount, Deployment and
// Service (owner-referenced to the Gateway), and writes the Gateway's status
// (Accepted, Programmed with observedGeneration, and its address, which the
// mesh model needs before it routes through the waypoint). It also installs
// and accepts the GatewayClass. Only istiod-lite imports it.
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
)

const (
	// ClassName is the GatewayClass of waypoints.
	ClassName = "istio-waypoint"
	// ControllerName is Istio's controller name for it.
	ControllerName gatewayv1.GatewayController = "istio.io/mesh-controller"
	// FieldOwner is the server-side apply manager of generated objects.
	FieldOwner = client.FieldOwner("istiod-lite")

	hbonePort     = 15008
	readinessPort = 15021
	metricsPort   = 15020
	containerName = "istio-proxy"
	// The waypoint's credentials: a projected token for the CA (and xDS)
	// and the mesh root from the ConfigMap istiod-lite publishes in every
	// namespace.
	caAudience          = "istio-ca"
	tokenVolume         = "istio-token"
	tokenDir            = "/var/run/secrets/tokens"
	rootCertVolume      = "istiod-ca-cert"
	rootCertDir         = "/var/run/secrets/istio"
	rootCertConfigMap   = "istio-ca-root-cert"
	parametersDeployKey = "deployment"
	parametersSvcKey    = "service"
)

// Options configure the waypoints istiod-lite deploys.
type Options struct {
	// Image of the waypoint proxy.
	Image string
	// XDSAddress is where waypoints reach istiod-lite (host:port).
	XDSAddress string
	// DomainSuffix of Service hostnames (cluster.local).
	DomainSuffix string
	// TrustDomain of the mesh, for the waypoint's identity; default cluster.local.
	TrustDomain string
	Logger      *zap.Logger
}

// Reconciler reconciles istio-waypoint Gateways. It is level-based: each
// pass computes the desired objects from the Gateway (and its parameters
// ConfigMap), applies them server-side, and writes status from what exists.
type Reconciler struct {
	Client client.Client
	Opts   Options
}

// SetupWithManager registers the reconciler (leader only, the default) and
// the GatewayClass installer.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Opts.Logger == nil {
		r.Opts.Logger = zap.NewNop()
	}
	gvk := gatewayv1.SchemeGroupVersion.WithKind("Gateway")
	if _, err := mgr.GetRESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version); meta.IsNoMatchError(err) {
		r.Opts.Logger.Warn("gateway api crds not installed; waypoints are not deployed until restart", zap.String("kind", gvk.String()))
		return nil
	} else if err != nil {
		return fmt.Errorf("look up %s in the API: %w", gvk, err)
	}
	isWaypoint := predicate.NewPredicateFuncs(func(o client.Object) bool {
		gw, ok := o.(*gatewayv1.Gateway)
		return ok && string(gw.Spec.GatewayClassName) == ClassName
	})
	if err := mgr.Add(&classInstaller{client: mgr.GetClient(), log: r.Opts.Logger}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("waypoint-deployer").
		For(&gatewayv1.Gateway{}, builder.WithPredicates(isWaypoint)).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.gatewaysUsingConfigMap)).
		Complete(r)
}

// gatewaysUsingConfigMap maps a parameters ConfigMap to the Gateways that
// reference it.
func (r *Reconciler) gatewaysUsingConfigMap(ctx context.Context, o client.Object) []reconcile.Request {
	var l gatewayv1.GatewayList
	if err := r.Client.List(ctx, &l, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, gw := range l.Items {
		if p := parametersRef(&gw); p != "" && p == o.GetName() {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}})
		}
	}
	return out
}

func parametersRef(gw *gatewayv1.Gateway) string {
	if gw.Spec.Infrastructure == nil || gw.Spec.Infrastructure.ParametersRef == nil {
		return ""
	}
	p := gw.Spec.Infrastructure.ParametersRef
	if p.Group != "" || p.Kind != "ConfigMap" {
		return ""
	}
	return p.Name
}

// Reconcile deploys one waypoint and writes its status.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var gw gatewayv1.Gateway
	if err := r.Client.Get(ctx, req.NamespacedName, &gw); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if string(gw.Spec.GatewayClassName) != ClassName || gw.DeletionTimestamp != nil {
		return reconcile.Result{}, nil
	}
	if field, msg := validate(&gw); field != "" {
		r.Opts.Logger.Warn("waypoint gateway rejected", zap.String("namespace", gw.Namespace), zap.String("name", gw.Name), zap.String("field", field), zap.String("reason", msg))
		return reconcile.Result{}, r.writeStatus(ctx, &gw, metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionFalse,
			Reason: string(gatewayv1.GatewayReasonListenersNotValid), Message: field + ": " + msg}, nil, nil)
	}
	objs, err := r.desired(ctx, &gw)
	if err != nil {
		r.Opts.Logger.Warn("waypoint parameters rejected", zap.String("namespace", gw.Namespace), zap.String("name", gw.Name), zap.Error(err))
		return reconcile.Result{}, r.writeStatus(ctx, &gw, metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionFalse,
			Reason: string(gatewayv1.GatewayReasonInvalidParameters), Message: err.Error()}, nil, nil)
	}
	for _, o := range objs {
		if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), FieldOwner, client.ForceOwnership); err != nil {
			return reconcile.Result{}, fmt.Errorf("apply %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	var dep appsv1.Deployment
	var svc corev1.Service
	if err := r.Client.Get(ctx, req.NamespacedName, &dep); err != nil {
		return reconcile.Result{}, err
	}
	if err := r.Client.Get(ctx, req.NamespacedName, &svc); err != nil {
		return reconcile.Result{}, err
	}
	accepted := metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "waypoint deployed by istiod-lite"}
	return reconcile.Result{}, r.writeStatus(ctx, &gw, accepted, &dep, &svc)
}

func (r *Reconciler) trustDomain() string {
	if r.Opts.TrustDomain != "" {
		return r.Opts.TrustDomain
	}
	return "cluster.local"
}

// validate checks the listener contract of a waypoint: a listener of
// protocol HBONE on port 15008.
func validate(gw *gatewayv1.Gateway) (field, msg string) {
	for _, l := range gw.Spec.Listeners {
		if l.Protocol == "HBONE" && l.Port == hbonePort {
			return "", ""
		}
	}
	return "spec.listeners", "a waypoint needs a listener with protocol HBONE on port 15008 (name it mesh)"
}

// writeStatus sets Accepted, Programmed and the address. Programmed is true
// once the Deployment has an available replica and the Service an address.
func (r *Reconciler) writeStatus(ctx context.Context, gw *gatewayv1.Gateway, accepted metav1.Condition, dep *appsv1.Deployment, svc *corev1.Service) error {
	next := gw.DeepCopy()
	accepted.ObservedGeneration = gw.Generation
	meta.SetStatusCondition(&next.Status.Conditions, accepted)
	programmed := metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
		Reason: string(gatewayv1.GatewayReasonPending), ObservedGeneration: gw.Generation}
	next.Status.Addresses = nil
	switch {
	case accepted.Status != metav1.ConditionTrue:
		programmed.Reason, programmed.Message = string(gatewayv1.GatewayReasonInvalid), "not accepted: "+accepted.Message
	case dep == nil || dep.Status.AvailableReplicas < 1:
		programmed.Message = "waiting for the waypoint Deployment to have an available replica"
	case svc == nil || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone:
		programmed.Message = "waiting for the waypoint Service to get an address"
	default:
		programmed.Status, programmed.Reason, programmed.Message = metav1.ConditionTrue, string(gatewayv1.GatewayReasonProgrammed), "waypoint ready"
	}
	if svc != nil && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		next.Status.Addresses = []gatewayv1.GatewayStatusAddress{
			{Type: ptr.To(gatewayv1.HostnameAddressType), Value: fmt.Sprintf("%s.%s.svc.%s", svc.Name, svc.Namespace, r.Opts.DomainSuffix)},
			{Type: ptr.To(gatewayv1.IPAddressType), Value: svc.Spec.ClusterIP},
		}
	}
	meta.SetStatusCondition(&next.Status.Conditions, programmed)
	if equalStatus(gw.Status, next.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, next, client.MergeFrom(gw)); err != nil {
		return fmt.Errorf("write status of gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	return nil
}

func equalStatus(a, b gatewayv1.GatewayStatus) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// desired builds the ServiceAccount, Deployment and Service of a waypoint,
// with the Gateway's infrastructure labels and annotations and the
// overrides of its parameters ConfigMap (keys "deployment" and "service":
// strategic merge patches, as Istio reads them).
func (r *Reconciler) desired(ctx context.Context, gw *gatewayv1.Gateway) ([]*unstructured.Unstructured, error) {
	lbls := map[string]string{model.LabelGatewayName: gw.Name, model.LabelGatewayManaged: model.ManagedMeshControllerValue}
	annotations := map[string]string{}
	if inf := gw.Spec.Infrastructure; inf != nil {
		for k, v := range inf.Labels {
			lbls[string(k)] = string(v)
		}
		for k, v := range inf.Annotations {
			annotations[string(k)] = string(v)
		}
	}
	owner := metav1.OwnerReference{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Name: gw.Name, UID: gw.UID,
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}
	om := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: gw.Name, Namespace: gw.Namespace, Labels: maps.Clone(lbls),
			Annotations: maps.Clone(annotations), OwnerReferences: []metav1.OwnerReference{owner}}
	}
	sa := &corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: om()}
	podLabels := maps.Clone(lbls)
	podLabels[model.LabelDataplaneMode] = model.DataplaneModeNone // waypoints speak HBONE themselves; ztunnel does not capture them
	podAnnotations := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus"}
	maps.Copy(podAnnotations, annotations)
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: om(),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{model.LabelGatewayName: gw.Name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: podAnnotations},
				Spec: corev1.PodSpec{
					ServiceAccountName: gw.Name,
					// The waypoint never calls the Kubernetes API: its only
					// token is the projected istio-ca one below.
					AutomountServiceAccountToken:  ptr.To(false),
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					SecurityContext:               &corev1.PodSecurityContext{FSGroup: ptr.To[int64](1337)},
					Volumes: []corev1.Volume{
						{Name: tokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
							Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
								Audience: caAudience, ExpirationSeconds: ptr.To[int64](43200), Path: "istio-token"}}}}}},
						{Name: rootCertVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: rootCertConfigMap}}}},
					},
					Containers: []corev1.Container{{
						Name:            containerName,
						Image:           r.Opts.Image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            []string{"--xds-address", r.Opts.XDSAddress},
						// cmd/waypoint's settings (pkg/waypoint/app.Config): its
						// Gateway and identity, the mesh root and the token the CA
						// and xDS accept, and the drain deadline.
						Env: []corev1.EnvVar{
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
							{Name: "INSTANCE_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
							{Name: "SERVICE_ACCOUNT", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
							{Name: "GATEWAY_NAME", Value: gw.Name},
							{Name: "TRUST_DOMAIN", Value: r.trustDomain()},
							{Name: "ROOT_CERT_FILE", Value: rootCertDir + "/root-cert.pem"},
							{Name: "TOKEN_FILE", Value: tokenDir + "/istio-token"},
							{Name: "TERMINATION_GRACE_PERIOD_SECONDS", Value: "30"},
							// Keeps the Go runtime's monitor awake between
							// requests (see proxyadmin.GODEBUG).
							{Name: "GODEBUG", Value: proxyadmin.GODEBUG},
						},
						Ports: []corev1.ContainerPort{
							{Name: "hbone", ContainerPort: hbonePort},
							{Name: "status-port", ContainerPort: readinessPort},
							{Name: "metrics", ContainerPort: metricsPort},
						},
						VolumeMounts: []corev1.VolumeMount{
							{Name: tokenVolume, MountPath: tokenDir, ReadOnly: true},
							{Name: rootCertVolume, MountPath: rootCertDir, ReadOnly: true},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/healthz/ready", Port: intstr.FromInt32(readinessPort)}}, PeriodSeconds: 2},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("32Mi")}},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: om(),
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{model.LabelGatewayName: gw.Name},
			Ports: []corev1.ServicePort{
				{Name: "mesh", Port: hbonePort, AppProtocol: ptr.To("all")},
				{Name: "status-port", Port: readinessPort},
			},
		},
	}
	if name := parametersRef(gw); name != "" {
		var cm corev1.ConfigMap
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: gw.Namespace, Name: name}, &cm); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("spec.infrastructure.parametersRef: ConfigMap %s/%s not found", gw.Namespace, name)
			}
			return nil, err
		}
		if p, ok := cm.Data[parametersDeployKey]; ok {
			if err := strategicMerge(dep, p, &appsv1.Deployment{}); err != nil {
				return nil, fmt.Errorf("spec.infrastructure.parametersRef: ConfigMap %s key %q: %w", name, parametersDeployKey, err)
			}
		}
		if p, ok := cm.Data[parametersSvcKey]; ok {
			if err := strategicMerge(svc, p, &corev1.Service{}); err != nil {
				return nil, fmt.Errorf("spec.infrastructure.parametersRef: ConfigMap %s key %q: %w", name, parametersSvcKey, err)
			}
		}
	}
	var out []*unstructured.Unstructured
	for _, o := range []runtime.Object{sa, dep, svc} {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{Object: m}
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(u.Object, "status")
		out = append(out, u)
	}
	return out, nil
}

// strategicMerge applies a YAML strategic merge patch to obj in place.
func strategicMerge(obj any, patchYAML string, schema any) error {
	patch, err := yaml.YAMLToJSON([]byte(patchYAML))
	if err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	orig, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	merged, err := strategicpatch.StrategicMergePatch(orig, patch, schema)
	if err != nil {
		return fmt.Errorf("patch does not apply: %w", err)
	}
	// Decode into a zero value: encoding/json reuses the elements of
	// existing slices without clearing them, which would leave fields of
	// the original env entries in the merged ones.
	v := reflect.ValueOf(obj).Elem()
	v.Set(reflect.Zero(v.Type()))
	dec := json.NewDecoder(bytes.NewReader(merged))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return fmt.Errorf("patched object is invalid: %w", err)
	}
	return nil
}
