package ca_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/zapr"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/certmanager"
)

// TestRootCertConfigMaps runs the reconciler in a controller-runtime manager
// against the apiserver: every namespace, including one created later, gets
// istio-ca-root-cert; edits and deletions are undone; a root rotation picked
// up by the Reloader republishes the bundle with both roots everywhere.
func TestRootCertConfigMaps(t *testing.T) {
	c := startCluster(t)
	log := zaptest.NewLogger(t)
	keys, err := ca.EnsureSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(keys, ca.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(c.cfg, ctrl.Options{
		Logger:                 zapr.NewLogger(log),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &ca.RootCertReconciler{Client: mgr.GetClient(), Roots: authority.RootsPEM}
	if err := r.SetupWithManager(mgr, ca.RootsChangedChannel(authority)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	// published reports whether every namespace carries want.
	published := func(want []byte) func() (bool, string) {
		return func() (bool, string) {
			var nss corev1.NamespaceList
			if err := c.cl.List(t.Context(), &nss); err != nil {
				return false, err.Error()
			}
			for _, ns := range nss.Items {
				var cm corev1.ConfigMap
				if err := c.cl.Get(t.Context(), client.ObjectKey{Namespace: ns.Name, Name: ca.RootConfigMapName}, &cm); err != nil {
					return false, ns.Name + ": " + err.Error()
				}
				if cm.Data[ca.RootConfigMapKey] != string(want) {
					return false, ns.Name + ": stale bundle"
				}
			}
			return len(nss.Items) > 0, ""
		}
	}
	waitFor(t, "the root in every namespace", published(authority.RootsPEM()))

	if _, err := c.cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "late"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the root in a new namespace", published(authority.RootsPEM()))

	cm, err := c.cs.CoreV1().ConfigMaps("demo").Get(t.Context(), ca.RootConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[ca.RootConfigMapKey] = "tampered"
	if _, err := c.cs.CoreV1().ConfigMaps("demo").Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.cs.CoreV1().ConfigMaps("other").Delete(t.Context(), ca.RootConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an edited and a deleted ConfigMap restored", published(authority.RootsPEM()))

	oldRoot := authority.Keys().Root()
	if _, err := ca.RotateSelfSignedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{}); err != nil {
		t.Fatal(err)
	}
	reloader := &ca.Reloader{CA: authority, Client: c.cs, Namespace: systemNS}
	if err := reloader.ReloadOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if authority.Keys().Root().Equal(oldRoot) {
		t.Fatalf("the reloader did not pick up the rotated root")
	}
	waitFor(t, "the two-root bundle in every namespace", published(authority.RootsPEM()))
	roots, err := certmanager.ParseCertificates(authority.RootsPEM())
	if err != nil || len(roots) != 2 || !roots[1].Equal(oldRoot) {
		t.Errorf("bundle after rotation has %d roots (err %v), want the new root and the old one", len(roots), err)
	}
}

func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
