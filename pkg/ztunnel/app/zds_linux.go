package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambient-mesh/mesh/pkg/zds"
	"github.com/ambient-mesh/mesh/pkg/ztunnel"
)

// podSource is what the node agent feed drives: the proxy's PodSink and the
// list of pods it serves.
type podSource interface {
	ztunnel.PodSink
	Pods() []string
}

// podFeed is the zds.Handler between the node agent and the proxy: it turns
// ZDS messages into PodSink calls. Adds are applied before their Ack (the
// pod's listeners exist before the agent lets the pod's traffic flow);
// removals stop the pod's listeners at once and drain in the background,
// so a long drain never holds an Ack past zds.MessageTimeout.
//
// Concurrency: the zds.Client calls one method at a time; mu guards seen,
// inSnapshot and removing, which the background removals also touch.
type podFeed struct {
	ctx    context.Context
	sink   podSource
	synced func()
	log    *zap.Logger

	mu         sync.Mutex
	inSnapshot bool                     // between Connected and SnapshotSent
	seen       map[string]bool          // pods added or kept by this connection's snapshot
	removing   map[string]chan struct{} // uid -> closed when its removal is done
	wg         sync.WaitGroup
}

var _ zds.ConnHandler = (*podFeed)(nil)

func newPodFeed(ctx context.Context, sink podSource, synced func(), log *zap.Logger) *podFeed {
	return &podFeed{ctx: ctx, sink: sink, synced: synced, log: log, inSnapshot: true, seen: map[string]bool{}, removing: map[string]chan struct{}{}}
}

// runZDS connects to the node agent's socket and feeds its pods to sink
// until ctx ends, reconnecting with backoff; then it waits for the pending
// removals (each bounded by the drain timeout).
func runZDS(ctx context.Context, path string, sink podSource, synced func(), log *zap.Logger, minB, maxB time.Duration) error {
	f := newPodFeed(ctx, sink, synced, log.Named("pods"))
	c := &zds.Client{Path: path, Handler: f, Log: log, MinBackoff: minB, MaxBackoff: maxB}
	err := c.Run(ctx)
	f.wg.Wait()
	return err
}

// Connected implements zds.ConnHandler: a new snapshot begins.
func (f *podFeed) Connected() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inSnapshot = true
	f.seen = map[string]bool{}
	f.log.Info("connected to the node agent")
}

// AddWorkload implements zds.Handler.
func (f *podFeed) AddWorkload(uid string, info *zdsapi.WorkloadInfo, file *os.File) error {
	// The proxy owns a raw netns handle; the *os.File would close its fd
	// when collected, so hand over a duplicate and close the file.
	fd, err := unix.FcntlInt(file.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	file.Close()
	if err != nil {
		return fmt.Errorf("pod %s: dup netns: %w", uid, err)
	}
	ns := netns.NsHandle(fd)
	if err := f.waitRemoved(uid); err != nil {
		_ = ns.Close()
		return err
	}
	pod := ztunnel.PodInfo{UID: uid, Name: info.GetName(), Namespace: info.GetNamespace(), ServiceAccount: info.GetServiceAccount()}
	if err := f.sink.AddPod(f.ctx, pod, ns); err != nil {
		f.log.Warn("pod refused", zap.String("uid", uid), zap.String("pod", pod.Namespace+"/"+pod.Name), zap.Error(err))
		return err
	}
	f.mu.Lock()
	if f.inSnapshot {
		f.seen[uid] = true
	}
	f.mu.Unlock()
	return nil
}

// KeepWorkload implements zds.Handler: the pod stays if served.
func (f *podFeed) KeepWorkload(uid string) error {
	f.mu.Lock()
	f.seen[uid] = true
	f.mu.Unlock()
	return nil
}

// DelWorkload implements zds.Handler.
func (f *podFeed) DelWorkload(uid string) error {
	f.mu.Lock()
	delete(f.seen, uid)
	f.removeLocked(uid)
	f.mu.Unlock()
	return nil
}

// SnapshotSent implements zds.Handler: every pod the snapshot did not name
// is removed, and readiness learns the node's pods are served.
func (f *podFeed) SnapshotSent() error {
	f.mu.Lock()
	var gone []string
	for _, uid := range f.sink.Pods() {
		if !f.seen[uid] {
			gone = append(gone, uid)
			f.removeLocked(uid)
		}
	}
	n := len(f.seen)
	f.inSnapshot = false
	f.seen = map[string]bool{}
	f.mu.Unlock()
	f.log.Info("node agent snapshot applied", zap.Int("pods", n), zap.Strings("removed", gone))
	f.synced()
	return nil
}

// removeLocked starts removing uid in the background (mu held).
func (f *podFeed) removeLocked(uid string) {
	if _, ok := f.removing[uid]; ok {
		return
	}
	done := make(chan struct{})
	f.removing[uid] = done
	f.wg.Go(func() {
		if err := f.sink.RemovePod(f.ctx, uid); err != nil && !errors.Is(err, context.Canceled) {
			f.log.Warn("remove pod", zap.String("uid", uid), zap.Error(err))
		}
		f.mu.Lock()
		delete(f.removing, uid)
		f.mu.Unlock()
		close(done)
	})
}

// waitRemoved waits until a removal of uid in progress is done, so a pod
// re-added at once is not dropped by its own earlier removal.
func (f *podFeed) waitRemoved(uid string) error {
	f.mu.Lock()
	done := f.removing[uid]
	f.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-f.ctx.Done():
		return f.ctx.Err()
	}
}
