package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/testenv"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"istio.io/istio/pkg/zdsapi"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newNetns creates an unnamed network namespace and returns it open; the
// calling goroutine's thread never leaves its own netns for long.
func newNetns(t *testing.T) *os.File {
	t.Helper()
	testenv.RequireRoot(t)
	ch := make(chan any)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		h, err := netns.New()
		if err != nil {
			ch <- err
			return
		}
		if err := netns.Set(orig); err != nil {
			ch <- err // the thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		ch <- os.NewFile(uintptr(h), "netns")
	}()
	switch v := (<-ch).(type) {
	case error:
		t.Fatalf("create netns: %v", v)
	case *os.File:
		t.Cleanup(func() { v.Close() })
		return v
	}
	return nil
}

// inode identifies a namespace: two fds name the same netns when their
// inodes (and devices) match.
func inode(t *testing.T, f *os.File) [2]uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatalf("fstat: %v", err)
	}
	return [2]uint64{st.Dev, st.Ino}
}

// event is one call the fake handler received.
type event struct {
	op    string
	uid   string
	info  *zdsapi.WorkloadInfo
	netns [2]uint64
}

// fakeHandler records calls and refuses the UIDs in refuse.
type fakeHandler struct {
	t      *testing.T
	events chan event
	mu     sync.Mutex
	refuse map[string]bool
}

func (h *fakeHandler) setRefuse(uid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.refuse[uid] = true
}

func newFakeHandler(t *testing.T) *fakeHandler {
	return &fakeHandler{t: t, events: make(chan event, 100), refuse: map[string]bool{}}
}

func (h *fakeHandler) AddWorkload(uid string, info *zdsapi.WorkloadInfo, ns *os.File) error {
	defer ns.Close()
	h.events <- event{op: "add", uid: uid, info: info, netns: inode(h.t, ns)}
	h.mu.Lock()
	refuse := h.refuse[uid]
	h.mu.Unlock()
	if refuse {
		return errors.New("listeners failed")
	}
	return nil
}
func (h *fakeHandler) KeepWorkload(uid string) error {
	h.events <- event{op: "keep", uid: uid}
	return nil
}
func (h *fakeHandler) DelWorkload(uid string) error {
	h.events <- event{op: "del", uid: uid}
	return nil
}
func (h *fakeHandler) SnapshotSent() error {
	h.events <- event{op: "snapshot"}
	return nil
}

func (h *fakeHandler) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(MessageTimeout):
		t.Fatal("no event from the client")
	case <-t.Context().Done():
	}
	return event{}
}

// harness runs a Server; synced receives each OnSynced call.
type harness struct {
	srv    *Server
	path   string
	synced chan []string
}

func startServer(t *testing.T) *harness {
	t.Helper()
	h := &harness{path: filepath.Join(t.TempDir(), "zds.sock"), synced: make(chan []string, 10)}
	h.srv = NewServer(h.path, ServerOptions{OnSynced: func(a []string) { h.synced <- a }})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	ln, err := h.srv.listen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- h.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

// startClient runs a Client until the returned stop is called.
func startClient(t *testing.T, path string, hd Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	c := &Client{Path: path, Handler: hd, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	go func() { done <- c.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Client.Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitSynced(t *testing.T, h *harness) []string {
	t.Helper()
	select {
	case a := <-h.synced:
		return a
	case <-time.After(2 * MessageTimeout):
		t.Fatal("server never synced a ztunnel")
	}
	return nil
}

func info(name string) *zdsapi.WorkloadInfo {
	return &zdsapi.WorkloadInfo{Name: name, Namespace: "demo", ServiceAccount: "default"}
}

func TestAddBeforeConnectIsInSnapshot(t *testing.T) {
	h := startServer(t)
	ns := newNetns(t)
	if err := h.srv.Add(Workload{UID: "uid-a", Info: info("a"), Netns: ns}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Add with no ztunnel: got %v, want ErrNotConnected", err)
	}
	if err := h.srv.Add(Workload{UID: "uid-b", Info: info("b")}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Add with no ztunnel: got %v, want ErrNotConnected", err)
	}
	fh := newFakeHandler(t)
	startClient(t, h.path, fh)

	got := map[string]event{}
	for range 2 {
		e := fh.next(t)
		got[e.uid] = e
	}
	if e := got["uid-a"]; e.op != "add" || e.info.GetName() != "a" || e.netns != inode(t, ns) {
		t.Errorf("snapshot entry for uid-a: got %+v, want add of pod a with netns %v", e, inode(t, ns))
	}
	if e := got["uid-b"]; e.op != "keep" {
		t.Errorf("snapshot entry for uid-b (no netns): got %+v, want keep", e)
	}
	if e := fh.next(t); e.op != "snapshot" {
		t.Fatalf("after the pods: got %+v, want snapshot", e)
	}
	if acked := waitSynced(t, h); len(acked) != 1 || acked[0] != "uid-a" {
		t.Errorf("OnSynced: got %v, want [uid-a]", acked)
	}
	if !h.srv.Connected() {
		t.Error("Connected() = false after sync")
	}
}

func TestIncrementalAddDelAndRefusal(t *testing.T) {
	h := startServer(t)
	fh := newFakeHandler(t)
	startClient(t, h.path, fh)
	if e := fh.next(t); e.op != "snapshot" {
		t.Fatalf("empty snapshot: got %+v", e)
	}
	waitSynced(t, h)

	ns1, ns2 := newNetns(t), newNetns(t)
	if err := h.srv.Add(Workload{UID: "u1", Info: info("p1"), Netns: ns1}); err != nil {
		t.Fatalf("Add u1: %v", err)
	}
	if e := fh.next(t); e.op != "add" || e.uid != "u1" || e.netns != inode(t, ns1) {
		t.Errorf("got %+v, want add u1 in netns %v", e, inode(t, ns1))
	}
	if inode(t, ns1) == inode(t, ns2) {
		t.Fatal("two new netns share an inode: the test cannot tell them apart")
	}
	fh.setRefuse("u2")
	err := h.srv.Add(Workload{UID: "u2", Info: info("p2"), Netns: ns2})
	var ack *AckError
	if !errors.As(err, &ack) || ack.UID != "u2" || ack.Msg != "listeners failed" {
		t.Errorf("Add refused by ztunnel: got %v, want *AckError for u2", err)
	}
	if e := fh.next(t); e.op != "add" || e.netns != inode(t, ns2) {
		t.Errorf("got %+v, want add u2", e)
	}
	if !h.srv.Connected() {
		t.Error("a refusal must not drop the connection")
	}
	if err := h.srv.Del("u1"); err != nil {
		t.Fatalf("Del u1: %v", err)
	}
	if e := fh.next(t); e.op != "del" || e.uid != "u1" {
		t.Errorf("got %+v, want del u1", e)
	}
	if n := h.srv.Len(); n != 1 {
		t.Errorf("Len after del: got %d, want 1 (u2 stays until the agent deletes it)", n)
	}
}

// TestReplayOnReconnect is the ztunnel restart: the new connection gets the
// whole set again, with the same namespaces, and only what is still there.
func TestReplayOnReconnect(t *testing.T) {
	h := startServer(t)
	nss := map[string]*os.File{}
	for i := range 3 {
		uid := fmt.Sprintf("u%d", i)
		nss[uid] = newNetns(t)
		h.srv.Add(Workload{UID: uid, Info: info(uid), Netns: nss[uid]})
	}
	fh := newFakeHandler(t)
	stop := startClient(t, h.path, fh)
	for range 4 {
		fh.next(t)
	}
	waitSynced(t, h)
	stop()

	if err := h.srv.Del("u1"); err != nil {
		t.Fatalf("Del while ztunnel is away: %v", err)
	}
	fh2 := newFakeHandler(t)
	startClient(t, h.path, fh2)
	got := map[string][2]uint64{}
	for {
		e := fh2.next(t)
		if e.op == "snapshot" {
			break
		}
		if e.op != "add" {
			t.Fatalf("replay: got %+v, want add", e)
		}
		got[e.uid] = e.netns
	}
	want := map[string][2]uint64{"u0": inode(t, nss["u0"]), "u2": inode(t, nss["u2"])}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replayed set: got %v, want %v", got, want)
	}
	if acked := waitSynced(t, h); len(acked) != 2 {
		t.Errorf("OnSynced after replay: got %v, want 2 uids", acked)
	}
}

// TestBadHello: a peer that does not speak V1 is dropped and never synced.
func TestBadHello(t *testing.T) {
	h := startServer(t)
	c, err := net.Dial("unixpacket", h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0x08, 0x07}); err != nil { // version = 7
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(MessageTimeout))
	if _, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatal("server answered a bad hello instead of closing")
	}
	if h.srv.Connected() {
		t.Error("Connected() after a bad hello")
	}
}
