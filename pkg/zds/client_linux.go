package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// Handler is ztunnel's side of the handoff. Each method's error is sent back
// as the Ack's error (nil acknowledges). The Client calls one method at a
// time, in the order the agent sent the messages.
type Handler interface {
	// AddWorkload starts serving the pod inside netns (bind the listeners
	// there). The handler owns netns and closes it when done with it.
	AddWorkload(uid string, info *zdsapi.WorkloadInfo, netns *os.File) error
	// KeepWorkload says the pod is still captured but the agent has no
	// netns for it: keep serving it if already known.
	KeepWorkload(uid string) error
	// DelWorkload stops serving the pod.
	DelWorkload(uid string) error
	// SnapshotSent ends the snapshot: drop every pod not added or kept since
	// this connection began.
	SnapshotSent() error
}

// ConnHandler is a Handler that also wants to know when a connection to the
// agent begins (before its snapshot's first message), to tell the pods of
// this connection's snapshot from those of an earlier, broken one.
type ConnHandler interface {
	Handler
	// Connected is called once per connection, after the hello was sent.
	Connected()
}

// Client is ztunnel's side: it connects to the agent's socket, says hello,
// and feeds what it receives to Handler, acknowledging each message. Run
// reconnects with backoff, and each reconnection begins with a new snapshot.
type Client struct {
	// Path is the agent's socket (DefaultSocketPath in a cluster).
	Path    string
	Handler Handler
	// Log receives connection events; nil discards.
	Log *zap.Logger
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (defaults 100 ms and 5 s).
	MinBackoff, MaxBackoff time.Duration
}

// Run serves connections until ctx is done, reconnecting after each failure.
// It returns nil when ctx ends.
func (c *Client) Run(ctx context.Context) error {
	log := c.Log
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("zds")
	minB, maxB := c.MinBackoff, c.MaxBackoff
	if minB <= 0 {
		minB = 100 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(5*time.Second, minB)
	}
	backoff := minB
	for {
		synced, err := c.serveOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if synced {
			backoff = minB
		}
		log.Info("agent connection ended; reconnecting", zap.Error(err), zap.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxB)
	}
}

// serveOnce runs one connection. synced reports whether a snapshot completed.
func (c *Client) serveOnce(ctx context.Context) (synced bool, err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", c.Path)
	if err != nil {
		return false, fmt.Errorf("zds: connect %s: %w", c.Path, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	hello, err := proto.Marshal(&zdsapi.ZdsHello{Version: zdsapi.Version_V1})
	if err != nil {
		return false, err
	}
	if _, err := conn.Write(hello); err != nil {
		return false, fmt.Errorf("zds: send hello: %w", err)
	}
	if ch, ok := c.Handler.(ConnHandler); ok {
		ch.Connected()
	}
	buf := make([]byte, maxMessage)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err == nil && n == 0 {
			err = errors.New("connection closed by agent")
		}
		if err != nil {
			return synced, fmt.Errorf("zds: recvmsg: %w", err)
		}
		files, err := parseRights(oob[:oobn])
		if err != nil {
			return synced, err
		}
		req := &zdsapi.WorkloadRequest{}
		var herr error
		if err := proto.Unmarshal(buf[:n], req); err != nil {
			herr = fmt.Errorf("parse request: %w", err)
		} else {
			herr = c.dispatch(req, files)
			if req.GetSnapshotSent() != nil && herr == nil {
				synced = true
			}
		}
		ack := &zdsapi.Ack{}
		if herr != nil {
			ack.Error = herr.Error()
		}
		b, err := proto.Marshal(&zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: ack}})
		if err != nil {
			return synced, err
		}
		if err := conn.SetWriteDeadline(time.Now().Add(MessageTimeout)); err != nil {
			return synced, err
		}
		if _, err := conn.Write(b); err != nil {
			return synced, fmt.Errorf("zds: send ack: %w", err)
		}
	}
}

// dispatch hands req to the handler. Files not handed over are closed.
func (c *Client) dispatch(req *zdsapi.WorkloadRequest, files []*os.File) error {
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	if add := req.GetAdd(); add != nil {
		if len(files) != 1 {
			closeAll(files)
			return fmt.Errorf("add of pod %s carries %d fds, want 1 (the netns)", add.GetUid(), len(files))
		}
		return c.Handler.AddWorkload(add.GetUid(), add.GetWorkloadInfo(), files[0])
	}
	closeAll(files)
	switch p := req.GetPayload().(type) {
	case *zdsapi.WorkloadRequest_Keep:
		return c.Handler.KeepWorkload(p.Keep.GetUid())
	case *zdsapi.WorkloadRequest_Del:
		return c.Handler.DelWorkload(p.Del.GetUid())
	case *zdsapi.WorkloadRequest_SnapshotSent:
		return c.Handler.SnapshotSent()
	}
	return fmt.Errorf("unknown request %v", req)
}

// parseRights returns the fds passed with SCM_RIGHTS (received close-on-exec:
// Go's recvmsg sets MSG_CMSG_CLOEXEC).
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("zds: parse control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "netns"))
		}
	}
	return files, nil
}
