package waypoint

import (
	"context"
	"sync"
	"time"
)

// reqCtx is the context of one request of serveH1's loop: done when the
// request is (serve cancels it) or its HBONE stream is (one hook per
// stream, streamRequests.streamEnded, cancels the request in flight).
//
// Why not context.WithCancel of the stream's context: that registers each
// request's context with the stream's and unregisters it after (a lock
// and a map insert and delete on the parent), and the upstream pool's
// hook on it (context.AfterFunc, armed around every read of an answer)
// costs four allocations more; the context machinery was about a tenth of
// the waypoint's CPU at its maximum rate. Here the pool's hook is a slot
// (armSlot), and the rest of the context package sees an ordinary
// context that implements AfterFunc, which it uses for derived contexts
// (timeouts) and context.AfterFunc.
//
// Its values are the stream's (the vals context has them, without the
// stream's cancellation, so that context.Cause of the request's context
// is its own Err, not the stream's); it has no deadline.
type reqCtx struct {
	vals context.Context

	mu    sync.Mutex
	err   error
	done  chan struct{} // made by the first Done
	hooks []*hook       // context.AfterFunc's, until the context ends
	slot  *hook         // the upstream connection's close hook (armSlot)

	// x is the exchange allocated with the request (parsedRequest), for
	// serveHTTP to take once (takeExchange); the handler's goroutine's.
	x *exchange
}

// hook is a function to run when a reqCtx ends; its address tells it
// from the others.
type hook struct{ f func() }

func newReqCtx(vals context.Context) *reqCtx { return &reqCtx{vals: vals} }

func (c *reqCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *reqCtx) Value(key any) any           { return c.vals.Value(key) }

func (c *reqCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *reqCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AfterFunc is the context package's afterFuncer: f runs in its own
// goroutine once the context ends; stop unregisters it, false once it
// started (or was stopped).
func (c *reqCtx) AfterFunc(f func()) (stop func() bool) {
	h := &hook{f: f}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.hooks = append(c.hooks, h)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.hooks {
			if x == h {
				c.hooks = append(c.hooks[:i], c.hooks[i+1:]...)
				return true
			}
		}
		return false
	}
}

// armSlot sets h, the one upstream connection hook a request has at a
// time, to run (in its own goroutine) when the context ends. taken:
// another hook has the slot (h is not set); ended: the context has ended
// already (h is not set, nor run).
func (c *reqCtx) armSlot(h *hook) (taken, ended bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return false, true
	case c.slot != nil && c.slot != h:
		return true, false
	}
	c.slot = h
	return false, false
}

// disarmSlot undoes armSlot(h); false: the context ended and h runs (or
// was never set because it had ended).
func (c *reqCtx) disarmSlot(h *hook) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slot == h {
		c.slot = nil
		return true
	}
	return c.err == nil
}

// cancel ends the context with err, once.
func (c *reqCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	hooks, slot := c.hooks, c.slot
	c.hooks, c.slot = nil, nil
	c.mu.Unlock()
	for _, h := range hooks {
		go h.f()
	}
	if slot != nil {
		go slot.f()
	}
}

// streamRequests is what serveH1 keeps of the request in flight, for the
// stream's end to cancel it.
type streamRequests struct {
	mu  sync.Mutex
	cur *reqCtx
}

// start makes rc the request in flight; it is cancelled at once if the
// stream (ctx) has ended.
func (s *streamRequests) start(ctx context.Context, rc *reqCtx) {
	s.mu.Lock()
	s.cur = rc
	s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		rc.cancel(err)
	}
}

// end ends rc, the request in flight.
func (s *streamRequests) end(rc *reqCtx) {
	s.mu.Lock()
	if s.cur == rc {
		s.cur = nil
	}
	s.mu.Unlock()
	rc.cancel(context.Canceled)
}

// streamEnded cancels the request in flight with the stream's error.
func (s *streamRequests) streamEnded(ctx context.Context) {
	s.mu.Lock()
	rc := s.cur
	s.mu.Unlock()
	if rc != nil {
		rc.cancel(ctx.Err())
	}
}
