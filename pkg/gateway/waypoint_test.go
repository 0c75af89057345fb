package gateway

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/zapr"
	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
)

func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func start(t *testing.T) client.Client {
	t.Helper()
	env := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{"../../manifests/crds"}})
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := gatewayv1.Install(scheme); err != nil {
		t.Fatal(err)
	}
	ctrl.SetLogger(zapr.NewLogger(zaptest.NewLogger(t)))
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Client: mgr.GetClient(), Opts: Options{Image: "localhost/ambient-mesh/waypoint:dev",
		XDSAddress: "istiod.istio-system.svc:15012", DomainSuffix: "cluster.local", Logger: zaptest.NewLogger(t)}}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}); err != nil {
		t.Fatal(err)
	}
	return c
}

func waypointGateway(name string, protocol gatewayv1.ProtocolType, port gatewayv1.PortNumber) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassName,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: port, Protocol: protocol}},
		},
	}
}

func condition(c client.Client, t *testing.T, name, typ string) (*metav1.Condition, *gatewayv1.Gateway) {
	var gw gatewayv1.Gateway
	if err := c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: name}, &gw); err != nil {
		t.Fatal(err)
	}
	return meta.FindStatusCondition(gw.Status.Conditions, typ), &gw
}

func TestWaypointDeployment(t *testing.T) {
	c := start(t)

	// The class is installed and accepted.
	waitFor(t, 30*time.Second, "GatewayClass istio-waypoint Accepted", func() error {
		var gc gatewayv1.GatewayClass
		if err := c.Get(t.Context(), types.NamespacedName{Name: ClassName}, &gc); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(gc.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted)) {
			return fmt.Errorf("conditions %v", gc.Status.Conditions)
		}
		return nil
	})

	if err := c.Create(t.Context(), waypointGateway("waypoint", "HBONE", 15008)); err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	waitFor(t, 30*time.Second, "waypoint Deployment, Service and ServiceAccount", func() error {
		if err := c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: "waypoint"}, &dep); err != nil {
			return err
		}
		if err := c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: "waypoint"}, &corev1.Service{}); err != nil {
			return err
		}
		return c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: "waypoint"}, &corev1.ServiceAccount{})
	})
	if len(dep.OwnerReferences) != 1 || dep.OwnerReferences[0].Kind != "Gateway" || dep.OwnerReferences[0].Name != "waypoint" {
		t.Errorf("deployment owners = %v, want the Gateway", dep.OwnerReferences)
	}
	if got := dep.Spec.Template.Labels["istio.io/dataplane-mode"]; got != "none" {
		t.Errorf("waypoint pods labelled dataplane-mode=%q, want none (not captured)", got)
	}
	checkWaypointPod(t, &dep.Spec.Template.Spec)
	waitFor(t, 30*time.Second, "Accepted true, Programmed false while the deployment is not available", func() error {
		acc, gw := condition(c, t, "waypoint", "Accepted")
		prog, _ := condition(c, t, "waypoint", "Programmed")
		if acc == nil || acc.Status != metav1.ConditionTrue || acc.ObservedGeneration != gw.Generation {
			return fmt.Errorf("accepted = %v", acc)
		}
		if prog == nil || prog.Status != metav1.ConditionFalse || prog.Reason != "Pending" {
			return fmt.Errorf("programmed = %v", prog)
		}
		return nil
	})

	// The deployment becomes available (envtest has no kubelet: say so in status).
	dep.Status = appsv1.DeploymentStatus{Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, ObservedGeneration: dep.Generation}
	if err := c.Status().Update(t.Context(), &dep); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "Programmed true with the waypoint's address", func() error {
		prog, gw := condition(c, t, "waypoint", "Programmed")
		if prog == nil || prog.Status != metav1.ConditionTrue {
			return fmt.Errorf("programmed = %v", prog)
		}
		if len(gw.Status.Addresses) == 0 || gw.Status.Addresses[0].Value != "waypoint.demo.svc.cluster.local" {
			return fmt.Errorf("addresses = %v", gw.Status.Addresses)
		}
		return nil
	})

	// Overrides through infrastructure parameters: 2 replicas, a memory limit.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "waypoint-params"}, Data: map[string]string{
		"deployment": "spec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n      - name: istio-proxy\n        resources:\n          limits:\n            memory: 128Mi\n",
	}}
	if err := c.Create(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	var gw gatewayv1.Gateway
	if err := c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: "waypoint"}, &gw); err != nil {
		t.Fatal(err)
	}
	gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{
		Labels:        map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "payments"},
		ParametersRef: &gatewayv1.LocalParametersReference{Group: "", Kind: "ConfigMap", Name: "waypoint-params"},
	}
	if err := c.Update(t.Context(), &gw); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "overrides applied to the deployment", func() error {
		if err := c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: "waypoint"}, &dep); err != nil {
			return err
		}
		if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
			return fmt.Errorf("replicas = %v", dep.Spec.Replicas)
		}
		if l := dep.Spec.Template.Spec.Containers[0].Resources.Limits.Memory(); l.String() != "128Mi" {
			return fmt.Errorf("memory limit = %s", l)
		}
		if dep.Labels["team"] != "payments" {
			return fmt.Errorf("labels = %v", dep.Labels)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "Accepted observes the new generation", func() error {
		acc, gw := condition(c, t, "waypoint", "Accepted")
		if acc == nil || acc.ObservedGeneration != gw.Generation {
			return fmt.Errorf("accepted = %v, generation %d", acc, gw.Generation)
		}
		return nil
	})
}

func TestWaypointRejections(t *testing.T) {
	c := start(t)
	// No HBONE listener on 15008.
	if err := c.Create(t.Context(), waypointGateway("http-only", "HTTP", 80)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "Accepted false naming spec.listeners", func() error {
		acc, _ := condition(c, t, "http-only", "Accepted")
		if acc == nil || acc.Status != metav1.ConditionFalse || acc.Reason != "ListenersNotValid" || !strings.Contains(acc.Message, "spec.listeners") {
			return fmt.Errorf("accepted = %v", acc)
		}
		return nil
	})
	// Parameters that are not a valid patch.
	if err := c.Create(t.Context(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "bad-params"},
		Data: map[string]string{"deployment": "spec:\n  replicas: many\n"}}); err != nil {
		t.Fatal(err)
	}
	gw := waypointGateway("bad-params", "HBONE", 15008)
	gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{ParametersRef: &gatewayv1.LocalParametersReference{Kind: "ConfigMap", Name: "bad-params"}}
	if err := c.Create(t.Context(), gw); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "Accepted false with InvalidParameters", func() error {
		acc, _ := condition(c, t, "bad-params", "Accepted")
		if acc == nil || acc.Status != metav1.ConditionFalse || acc.Reason != "InvalidParameters" || !strings.Contains(acc.Message, "parametersRef") {
			return fmt.Errorf("accepted = %v", acc)
		}
		return nil
	})
	if err := c.Get(t.Context(), types.NamespacedName{Namespace: "demo", Name: "http-only"}, &appsv1.Deployment{}); err == nil {
		t.Errorf("a deployment was created for a rejected gateway")
	}
}

// TestWithoutGatewayCRDs: without the Gateway API CRDs the deployer stands
// down instead of failing the manager.
func TestWithoutGatewayCRDs(t *testing.T) {
	env := kubetest.Start(t, kubetest.Options{})
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := gatewayv1.Install(scheme); err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		// A controller whose source cannot sync fails the manager after this.
		Controller: config.Controller{SkipNameValidation: ptr.To(true), CacheSyncTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Client: mgr.GetClient(), Opts: Options{Logger: zaptest.NewLogger(t)}}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatalf("SetupWithManager without the CRDs = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	// The manager must stay up past the sync timeout: a Gateway watch
	// without its CRD would end it with an error by then. (Waiting out a
	// window is the only way to see that something does not happen.)
	select {
	case err := <-done:
		t.Fatalf("manager stopped on its own: %v", err)
	case <-time.After(5 * time.Second):
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("manager: %v", err)
	}
}

// checkWaypointPod checks what cmd/waypoint needs from its pod: the
// projected token the CA accepts, the mesh root, its identity and Gateway
// in the environment, and the ports it serves.
func checkWaypointPod(t *testing.T, spec *corev1.PodSpec) {
	t.Helper()
	var token, root bool
	for _, v := range spec.Volumes {
		if p := v.Projected; p != nil {
			for _, src := range p.Sources {
				if sat := src.ServiceAccountToken; sat != nil && sat.Audience == "istio-ca" && sat.Path == "istio-token" {
					token = true
				}
			}
		}
		if cm := v.ConfigMap; cm != nil && cm.Name == "istio-ca-root-cert" {
			root = true
		}
	}
	if !token || !root {
		t.Errorf("volumes %v: want a projected istio-ca token and the istio-ca-root-cert ConfigMap", spec.Volumes)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the waypoint pod mounts an API token; it needs none")
	}
	c := spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for name, want := range map[string]string{"GATEWAY_NAME": "waypoint", "TOKEN_FILE": "/var/run/secrets/tokens/istio-token", "ROOT_CERT_FILE": "/var/run/secrets/istio/root-cert.pem", "GODEBUG": proxyadmin.GODEBUG} {
		if env[name].Value != want {
			t.Errorf("env %s = %q, want %q", name, env[name].Value, want)
		}
	}
	for name, field := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP", "SERVICE_ACCOUNT": "spec.serviceAccountName"} {
		if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field {
			t.Errorf("env %s = %+v, want from field %s", name, e, field)
		}
	}
	ports := map[int32]bool{}
	for _, p := range c.Ports {
		ports[p.ContainerPort] = true
	}
	if !ports[15008] || !ports[15020] || !ports[15021] {
		t.Errorf("container ports %v, want 15008, 15020 and 15021", c.Ports)
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = true
	}
	if !mounts["/var/run/secrets/tokens"] || !mounts["/var/run/secrets/istio"] {
		t.Errorf("mounts %v, want the token and root-cert directories", c.VolumeMounts)
	}
}
