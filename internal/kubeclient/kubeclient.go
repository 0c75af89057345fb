// Package kubeclient loads the Kubernetes client configuration of the
// binaries that talk to the API (istiod-lite and the CNI node agent): a
// kubeconfig file when one is named, otherwise the in-cluster service account.
package kubeclient

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig returns the config for kubeconfig (empty: in-cluster), with
// client-side rate limits raised for a controller (QPS 50, burst 100).
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes config (--kubeconfig %q, or in-cluster): %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}
