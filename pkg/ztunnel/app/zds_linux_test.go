package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambient-mesh/mesh/pkg/zds"
	"github.com/ambient-mesh/mesh/pkg/ztunnel"
)

// fakeSink is a PodSink recording what it serves; removals block until
// release is closed (a draining pod), when hold is set.
type fakeSink struct {
	mu      sync.Mutex
	pods    map[string]ztunnel.PodInfo
	log     []string
	hold    bool
	release chan struct{}
}

func newFakeSink() *fakeSink {
	return &fakeSink{pods: map[string]ztunnel.PodInfo{}, release: make(chan struct{})}
}

func (s *fakeSink) AddPod(_ context.Context, p ztunnel.PodInfo, ns netns.NsHandle) error {
	defer ns.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.Name == "refused" {
		return fmt.Errorf("cannot serve %s", p.Name)
	}
	if _, ok := s.pods[p.UID]; !ok {
		s.pods[p.UID] = p
		s.log = append(s.log, "add "+p.UID)
	}
	return nil
}

func (s *fakeSink) RemovePod(ctx context.Context, uid string) error {
	s.mu.Lock()
	_, ok := s.pods[uid]
	delete(s.pods, uid)
	if ok {
		s.log = append(s.log, "del "+uid)
	}
	hold := s.hold
	s.mu.Unlock()
	if ok && hold {
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *fakeSink) RetainPods(context.Context, []string) error {
	panic("not used: removals are per pod")
}

func (s *fakeSink) Pods() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for uid := range s.pods {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

func (s *fakeSink) info(uid string) ztunnel.PodInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pods[uid]
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startAgent serves a zds.Server on path until the returned stop is called.
func startAgent(t *testing.T, path string, ws ...zds.Workload) (*zds.Server, func()) {
	t.Helper()
	srv := zds.NewServer(path, zds.ServerOptions{Log: zaptest.NewLogger(t)})
	for _, w := range ws {
		if err := srv.Add(w); err != nil && !isNotConnected(err) {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return srv, stop
}

func isNotConnected(err error) bool { return err != nil && errors.Is(err, zds.ErrNotConnected) }

// fakeNetns stands in for a pod netns: the feed only passes the fd on.
func fakeNetns(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func workload(t *testing.T, uid, name string, withNetns bool) zds.Workload {
	w := zds.Workload{UID: uid, Info: &zdsapi.WorkloadInfo{Name: name, Namespace: "demo", ServiceAccount: "sa-" + name}}
	if withNetns {
		w.Netns = fakeNetns(t)
	}
	return w
}

// TestZDSFeed runs the node agent's real zds.Server in-process and checks the
// proxy is fed: the snapshot's pods are added (with their identity) before
// readiness is told, incremental adds and deletes follow, a refused pod is
// refused to the agent, a deleted pod drains without holding the Ack, and
// after an agent restart the new snapshot keeps the kept pods and drops the
// rest.
func TestZDSFeed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztunnel.sock")
	srv, stopAgent := startAgent(t, path, workload(t, "a", "pod-a", true), workload(t, "b", "pod-b", true))

	sink := newFakeSink()
	var synced atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runZDS(ctx, path, sink, func() { synced.Add(1) }, zaptest.NewLogger(t), 10*time.Millisecond, 50*time.Millisecond)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runZDS: %v", err)
		}
	}()

	waitFor(t, "first snapshot applied", func() bool { return synced.Load() == 1 })
	if got := sink.Pods(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("pods after snapshot = %v, want [a b]", got)
	}
	if p := sink.info("a"); p.Name != "pod-a" || p.Namespace != "demo" || p.ServiceAccount != "sa-pod-a" {
		t.Errorf("pod a = %+v", p)
	}

	// Incremental: the Add returns once the proxy serves the pod.
	if err := srv.Add(workload(t, "c", "pod-c", true)); err != nil {
		t.Fatalf("add c: %v", err)
	}
	if !slices.Contains(sink.Pods(), "c") {
		t.Errorf("c acknowledged but not served")
	}
	var ackErr *zds.AckError
	if err := srv.Add(workload(t, "r", "refused", true)); !errors.As(err, &ackErr) {
		t.Errorf("add of a pod the proxy refuses: err = %v, want an AckError", err)
	}
	_ = srv.Del("r")

	// A delete is acknowledged while the pod still drains.
	sink.mu.Lock()
	sink.hold = true
	sink.mu.Unlock()
	start := time.Now()
	if err := srv.Del("a"); err != nil {
		t.Fatalf("del a: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("del a acknowledged after %s: the drain held the Ack", d)
	}
	waitFor(t, "a removed", func() bool { return !slices.Contains(sink.Pods(), "a") })
	close(sink.release)

	// Agent restart: its set is b (no netns: Keep) and d (new). c is gone
	// while no agent ran, so the new snapshot drops it; b stays as it was.
	stopAgent()
	_, _ = startAgent(t, path, workload(t, "b", "pod-b", false), workload(t, "d", "pod-d", true))
	waitFor(t, "second snapshot applied", func() bool { return synced.Load() == 2 })
	waitFor(t, "pods after the restart are b and d", func() bool { return slices.Equal(sink.Pods(), []string{"b", "d"}) })
	sink.mu.Lock()
	log := slices.Clone(sink.log)
	sink.mu.Unlock()
	want := []string{"add a", "add b", "add c", "del a", "add d", "del c"}
	slices.Sort(log)
	slices.Sort(want)
	if !slices.Equal(log, want) {
		t.Errorf("sink calls = %v, want (in any order) %v", log, want)
	}
}

// TestZDSFeedPartialSnapshot: a pod added by a snapshot that broke off is not
// kept by the next connection's snapshot unless it names the pod.
func TestZDSFeedPartialSnapshot(t *testing.T) {
	sink := newFakeSink()
	var synced atomic.Int32
	f := newPodFeed(context.Background(), sink, func() { synced.Add(1) }, zaptest.NewLogger(t))
	f.Connected()
	if err := f.AddWorkload("x", &zdsapi.WorkloadInfo{Name: "x"}, fakeNetns(t)); err != nil {
		t.Fatal(err)
	}
	// The connection breaks before SnapshotSent; the next one names only y.
	f.Connected()
	if err := f.AddWorkload("y", &zdsapi.WorkloadInfo{Name: "y"}, fakeNetns(t)); err != nil {
		t.Fatal(err)
	}
	if err := f.SnapshotSent(); err != nil {
		t.Fatal(err)
	}
	f.wg.Wait()
	if got := sink.Pods(); !slices.Equal(got, []string{"y"}) || synced.Load() != 1 {
		t.Errorf("pods = %v (synced %d), want [y] (1)", got, synced.Load())
	}
	// After the snapshot, adds are incremental and a later delete of an
	// unknown pod is harmless.
	if err := f.AddWorkload("z", &zdsapi.WorkloadInfo{Name: "z"}, fakeNetns(t)); err != nil {
		t.Fatal(err)
	}
	if err := f.DelWorkload("nope"); err != nil {
		t.Fatal(err)
	}
	f.wg.Wait()
	if got := sink.Pods(); !slices.Equal(got, []string{"y", "z"}) {
		t.Errorf("pods = %v, want [y z]", got)
	}
}
