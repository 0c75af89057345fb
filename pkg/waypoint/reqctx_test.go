package waypoint

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
)

// TestReqCtx holds reqCtx to the context package's contract: values of
// its parent, Done/Err/Cause once cancelled, context.AfterFunc and derived
// contexts through its AfterFunc, and the upstream hook's slot.
func TestReqCtx(t *testing.T) {
	type key struct{}
	stream, endStream := context.WithCancel(context.WithValue(t.Context(), key{}, "v"))
	defer endStream()
	vals := context.WithoutCancel(stream)

	rc := newReqCtx(vals)
	if rc.Value(key{}) != "v" {
		t.Errorf("Value = %v, want the parent's", rc.Value(key{}))
	}
	if _, ok := rc.Deadline(); ok {
		t.Error("a request context with a deadline")
	}
	done := rc.Done()
	ran := make(chan struct{})
	stopped := false
	stop1 := context.AfterFunc(rc, func() { close(ran) })
	stop2 := context.AfterFunc(rc, func() { stopped = true })
	if !stop2() {
		t.Error("stopping a pending AfterFunc said it had run")
	}
	child, cancelChild := context.WithTimeout(rc, time.Hour)
	defer cancelChild()
	h := &hook{}
	slotRan := make(chan struct{})
	h.f = func() { close(slotRan) }
	if taken, ended := rc.armSlot(h); taken || ended {
		t.Fatalf("armSlot = %v, %v on a live context", taken, ended)
	}
	if taken, _ := rc.armSlot(&hook{}); !taken {
		t.Error("a second hook took the slot")
	}
	select {
	case <-done:
		t.Fatal("done before cancel")
	default:
	}

	rc.cancel(context.Canceled)
	rc.cancel(errors.New("second")) // no effect
	for name, ch := range map[string]<-chan struct{}{"Done": done, "AfterFunc": ran, "derived context": child.Done(), "slot hook": slotRan} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not done 5 s after cancel", name)
		}
	}
	if rc.Err() != context.Canceled || context.Cause(rc) != context.Canceled || child.Err() != context.Canceled {
		t.Errorf("Err %v, Cause %v, derived Err %v; want context.Canceled", rc.Err(), context.Cause(rc), child.Err())
	}
	if stop1() {
		t.Error("stopping an AfterFunc that ran said it had not")
	}
	if stopped {
		t.Error("a stopped AfterFunc ran")
	}
	if rc.disarmSlot(h) {
		t.Error("disarmSlot after the context ended said the hook had not run")
	}
	if _, ended := rc.armSlot(h); !ended {
		t.Error("armSlot on an ended context")
	}
	afterEnd := make(chan struct{})
	context.AfterFunc(rc, func() { close(afterEnd) })
	select {
	case <-afterEnd:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc on an ended context did not run")
	}

	// The stream's end cancels the request in flight, and a request
	// started on an ended stream at once.
	var reqs streamRequests
	rc2 := newReqCtx(vals)
	reqs.start(stream, rc2)
	h2 := &hook{f: func() {}}
	rc2.armSlot(h2)
	if !rc2.disarmSlot(h2) {
		t.Error("disarmSlot on a live context said the hook ran")
	}
	endStream()
	reqs.streamEnded(stream)
	if rc2.Err() != context.Canceled {
		t.Errorf("request in flight at the stream's end: Err %v", rc2.Err())
	}
	reqs.end(rc2)
	rc3 := newReqCtx(vals)
	reqs.start(stream, rc3)
	if rc3.Err() == nil {
		t.Error("a request started on an ended stream is live")
	}
}

// TestTakeExchange: a request made by serveH1's parser brings its
// exchange, which serveHTTP takes once; any other request gets a new one.
func TestTakeExchange(t *testing.T) {
	pr := parseRequest("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
	if pr == nil || pr.ctx.x != &pr.x {
		t.Fatal("parseRequest: no exchange with the request")
	}
	pr.ctx.vals = context.Background()
	req := pr.req.WithContext(&pr.ctx)
	if x := takeExchange(req); x != &pr.x {
		t.Error("first take: not the request's own exchange")
	}
	if x := takeExchange(req); x == &pr.x || x == nil {
		t.Error("second take: the same exchange again, or none")
	}
	other, _ := http.NewRequest(http.MethodGet, "http://reviews/", nil)
	if x := takeExchange(other); x == nil {
		t.Error("a request of net/http's: no exchange")
	}
}
