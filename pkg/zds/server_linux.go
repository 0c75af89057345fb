package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// Server is the node agent's side: it listens on a unix SEQPACKET socket,
// keeps the set of captured pods, sends the whole set to each ztunnel that
// connects, then every change to the latest one.
//
// Concurrency: mu guards workloads, active and conns, and is held for the
// whole of every exchange with a ztunnel (a snapshot, or one Add or Del and
// its Ack), so messages never interleave and a pod added during a snapshot is
// either in it or sent after it. Each exchange is bounded by MessageTimeout
// per message. Only the newest connection (active) receives changes; an older
// one (a ztunnel being replaced during an upgrade) keeps what it had, as in
// Istio. When the active connection ends, the older ones are closed, so their
// ztunnels reconnect and get a snapshot of what they missed.
type Server struct {
	path     string
	log      *zap.Logger
	onSynced func(acked []string)

	mu        sync.Mutex
	workloads map[string]Workload
	active    *serverConn
	conns     map[*serverConn]struct{}
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Log receives connection events; nil discards.
	Log *zap.Logger
	// OnSynced, if set, is called (without locks held) after a ztunnel
	// acknowledged a whole snapshot, with the UIDs it acknowledged as added:
	// the agent marks those pods' redirection enabled.
	OnSynced func(acked []string)
}

// NewServer returns a Server that will listen on path.
func NewServer(path string, o ServerOptions) *Server {
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Server{
		path:      path,
		log:       log.Named("zds"),
		onSynced:  o.OnSynced,
		workloads: map[string]Workload{},
		conns:     map[*serverConn]struct{}{},
	}
}

// serverConn is one ztunnel connection. Its reader goroutine owns reads: it
// forwards each Ack on acks and closes done (after setting err) when the
// connection fails.
type serverConn struct {
	c    *net.UnixConn
	acks chan *zdsapi.WorkloadResponse
	done chan struct{}
	err  error
}

// Start listens on the socket path (replacing a stale socket file) and serves
// ztunnels until ctx is done; it then closes the listener and every
// connection. It returns nil on a clean stop.
func (s *Server) Start(ctx context.Context) error {
	ln, err := s.listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

func (s *Server) listen() (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return nil, fmt.Errorf("zds: create socket dir: %w", err)
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("zds: remove stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: s.path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("zds: listen on %s: %w", s.path, err)
	}
	return ln, nil
}

// Serve is Start on a listener the caller opened (tests, socket activation).
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.log.Info("listening", zap.String("path", ln.Addr().String()))
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			for sc := range s.conns {
				sc.c.Close()
			}
			s.mu.Unlock()
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("zds: accept: %w", err)
		}
		wg.Go(func() { s.handle(ctx, c) })
	}
}

// Connected reports whether a ztunnel is connected and has its snapshot.
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active != nil
}

// Len returns the number of pods in the set.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.workloads)
}

// Add puts w in the set (replacing a pod with the same UID) and, if a ztunnel
// is connected, sends it and waits for the Ack. It returns nil once ztunnel
// accepted the pod, an *AckError if ztunnel refused it, and an error wrapping
// ErrNotConnected if no ztunnel got it; in every case w stays in the set and
// is in the next snapshot.
func (s *Server) Add(w Workload) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.workloads[w.UID] = w
	if s.active == nil {
		return ErrNotConnected
	}
	return s.sendActive(addRequest(w))
}

// Del removes the pod from the set and, if a ztunnel is connected, tells it
// and waits for the Ack. A pod that is not in the set is still sent (ztunnel
// may have it from an earlier agent). With no ztunnel connected it returns
// nil: the next snapshot will not name the pod, so ztunnel drops it.
func (s *Server) Del(uid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.workloads, uid)
	if s.active == nil {
		return nil
	}
	err := s.sendActive(request{msg: &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}}})
	if errors.Is(err, ErrNotConnected) {
		return nil
	}
	return err
}

// sendActive sends req to the active connection; on a connection failure it
// drops the connection (ztunnel will reconnect and get a snapshot). s.mu is held.
func (s *Server) sendActive(req request) error {
	err := s.send(s.active, req)
	var ack *AckError
	if err != nil && !errors.As(err, &ack) {
		s.log.Warn("ztunnel connection failed", zap.Error(err))
		s.active.c.Close()
		s.active = nil
		return fmt.Errorf("%w: %w", ErrNotConnected, err)
	}
	return err
}

// request is a message and the netns fd to pass with it (nil for none).
type request struct {
	msg   *zdsapi.WorkloadRequest
	netns *os.File
}

func addRequest(w Workload) request {
	if w.Netns == nil {
		return request{msg: &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: w.UID}}}}
	}
	return request{
		msg:   &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: w.UID, WorkloadInfo: w.Info}}},
		netns: w.Netns,
	}
}

// send writes one request and waits for its Ack. s.mu is held.
func (s *Server) send(sc *serverConn, req request) error {
	op, uid := describe(req.msg)
	b, err := proto.Marshal(req.msg)
	if err != nil {
		return fmt.Errorf("zds: marshal %s: %w", op, err)
	}
	var oob []byte
	if req.netns != nil {
		oob = syscall.UnixRights(int(req.netns.Fd()))
	}
	deadline := time.Now().Add(MessageTimeout)
	if err := sc.c.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("zds: set write deadline: %w", err)
	}
	if _, _, err := sc.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("zds: sendmsg %s: %w", op, err)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case resp := <-sc.acks:
		ack := resp.GetAck()
		if ack == nil {
			return fmt.Errorf("zds: reply to %s is not an ack: %v", op, resp)
		}
		if ack.GetError() != "" {
			return &AckError{Op: op, UID: uid, Msg: ack.GetError()}
		}
		return nil
	case <-sc.done:
		return fmt.Errorf("zds: waiting for ack of %s: %w", op, sc.err)
	case <-t.C:
		return fmt.Errorf("zds: no ack of %s within %s", op, MessageTimeout)
	}
}

func describe(m *zdsapi.WorkloadRequest) (op, uid string) {
	switch p := m.GetPayload().(type) {
	case *zdsapi.WorkloadRequest_Add:
		return "add", p.Add.GetUid()
	case *zdsapi.WorkloadRequest_Keep:
		return "keep", p.Keep.GetUid()
	case *zdsapi.WorkloadRequest_Del:
		return "del", p.Del.GetUid()
	case *zdsapi.WorkloadRequest_SnapshotSent:
		return "snapshot", ""
	}
	return "unknown", ""
}

// handle runs one ztunnel connection: hello, snapshot, then it becomes the
// active connection until it fails or ctx ends.
func (s *Server) handle(ctx context.Context, c *net.UnixConn) {
	log := s.log.With(zap.String("conn", fmt.Sprintf("%p", c)))
	sc := &serverConn{c: c, acks: make(chan *zdsapi.WorkloadResponse, 1), done: make(chan struct{})}
	s.mu.Lock()
	s.conns[sc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, sc)
		if s.active == sc {
			// Older connections missed what was sent here: close them,
			// so their ztunnels reconnect and get a fresh snapshot.
			s.active = nil
			for other := range s.conns {
				other.c.Close()
			}
		}
		s.mu.Unlock()
	}()

	if err := readHello(c); err != nil {
		log.Warn("ztunnel hello failed", zap.Error(err))
		return
	}
	go sc.read()

	s.mu.Lock()
	acked, err := s.snapshot(sc)
	if err == nil {
		if s.active != nil {
			log.Info("newer ztunnel connected; the older one gets no more changes")
		}
		s.active = sc
	}
	s.mu.Unlock()
	if err != nil {
		log.Warn("ztunnel snapshot failed", zap.Error(err))
		return
	}
	log.Info("ztunnel synced", zap.Int("pods", len(acked)))
	if s.onSynced != nil {
		s.onSynced(acked)
	}
	select {
	case <-sc.done:
		log.Info("ztunnel disconnected", zap.Error(sc.err))
	case <-ctx.Done():
	}
}

// snapshot sends every pod, then SnapshotSent. A pod ztunnel refuses stays in
// the set (the agent decides what to do about it); s.mu is held.
func (s *Server) snapshot(sc *serverConn) ([]string, error) {
	var acked []string
	for uid, w := range s.workloads {
		err := s.send(sc, addRequest(w))
		var ackErr *AckError
		switch {
		case errors.As(err, &ackErr):
			s.log.Warn("ztunnel refused pod in snapshot", zap.String("uid", uid), zap.Error(err))
		case err != nil:
			return nil, err
		case w.Netns != nil:
			acked = append(acked, uid)
		}
	}
	err := s.send(sc, request{msg: &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}})
	return acked, err
}

func readHello(c *net.UnixConn) error {
	if err := c.SetReadDeadline(time.Now().Add(MessageTimeout)); err != nil {
		return err
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, maxMessage)
	n, _, _, _, err := c.ReadMsgUnix(buf, nil)
	if err != nil {
		return fmt.Errorf("zds: read hello: %w", err)
	}
	var h zdsapi.ZdsHello
	if err := proto.Unmarshal(buf[:n], &h); err != nil {
		return fmt.Errorf("zds: parse hello: %w", err)
	}
	if h.GetVersion() != zdsapi.Version_V1 {
		return fmt.Errorf("zds: hello with version %v, want V1", h.GetVersion())
	}
	return nil
}

// read forwards Acks until the connection fails. A reply nobody waits for
// (one that arrives after its timeout) is dropped.
func (sc *serverConn) read() {
	buf := make([]byte, maxMessage)
	for {
		n, _, _, _, err := sc.c.ReadMsgUnix(buf, nil)
		if err == nil && n == 0 {
			err = errors.New("connection closed by ztunnel")
		}
		if err != nil {
			sc.err = err
			close(sc.done)
			return
		}
		resp := &zdsapi.WorkloadResponse{}
		if err := proto.Unmarshal(buf[:n], resp); err != nil {
			sc.err = fmt.Errorf("zds: parse response: %w", err)
			close(sc.done)
			return
		}
		select {
		case sc.acks <- resp:
		default:
			select { // drop a stale reply, keep the newest
			case <-sc.acks:
			default:
			}
			sc.acks <- resp
		}
	}
}
