package ca

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
)

// RootRotator is the leader's root maintenance, a controller-runtime
// Runnable that runs only on the leader. Every Interval it calls
// EnsureSelfSignedRoot (which activates a staged root when due and prunes
// replaced roots after the overlap) and stages a rotation when the signing
// root has less than RenewBefore left. Replicas follow the Secret with a
// Reloader.
type RootRotator struct {
	Client    kubernetes.Interface
	Namespace string
	Options   RootOptions
	// Interval between checks; default 1 min.
	Interval time.Duration
	// RenewBefore is the remaining root lifetime that triggers a rotation;
	// default one fifth of RootOptions.TTL (2 years of the default 10).
	RenewBefore time.Duration
}

// NeedLeaderElection tells the manager to run it on the leader only.
func (r *RootRotator) NeedLeaderElection() bool { return true }

// Start checks every Interval until ctx ends; errors are logged and retried.
func (r *RootRotator) Start(ctx context.Context) error {
	opts := r.Options.withDefaults()
	iv := r.Interval
	if iv == 0 {
		iv = time.Minute
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		if _, err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
			opts.Logger.Warn("root maintenance failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunOnce does one check and returns the keys now stored.
func (r *RootRotator) RunOnce(ctx context.Context) (*Keys, error) {
	opts := r.Options.withDefaults()
	keys, err := EnsureSelfSignedRoot(ctx, r.Client, r.Namespace, opts)
	if err != nil {
		return nil, err
	}
	if keys.Source != r.Namespace+"/"+SelfSignedSecretName {
		return keys, nil // plug-in cacerts: rotated by its owner
	}
	renew := r.RenewBefore
	if renew == 0 {
		renew = opts.TTL / 5
	}
	if keys.Root().NotAfter.Sub(opts.Now()) > renew {
		return keys, nil
	}
	staged, err := StageRootRotation(ctx, r.Client, r.Namespace, opts)
	if err != nil {
		return nil, fmt.Errorf("root expires %s: %w", keys.Root().NotAfter, err)
	}
	return staged, nil
}
