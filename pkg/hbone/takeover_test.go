package hbone_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/hbone"
)

// TestTakeover: the Takeover hook gets the stream itself, with ordinary
// (non-terminal) deadlines and half-close; nil falls back to DialUpstream;
// an error answers its status.
func TestTakeover(t *testing.T) {
	leakCheck(t)
	m := newMesh(t)
	up := startEcho(t)
	deadlineOK := make(chan error, 1)
	checked := make(chan struct{}) // the deadline check is done: the client may write
	s := startServer(t, m, hbone.Hooks{
		Takeover: func(ctx context.Context, in *hbone.Inbound) (func(context.Context, net.Conn), error) {
			switch in.Port {
			case 81: // fall back to DialUpstream (the echo)
				return nil, nil
			case 82:
				return nil, &hbone.Error{Status: http.StatusServiceUnavailable, Err: errors.New("no such service")}
			}
			return func(ctx context.Context, c net.Conn) {
				// A past read deadline fails the pending read without
				// ending the stream (net/http relies on this).
				_ = c.SetReadDeadline(time.Now().Add(-time.Second))
				_, err := c.Read(make([]byte, 1))
				close(checked)
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					deadlineOK <- fmt.Errorf("read past the deadline: %v, want %v", err, os.ErrDeadlineExceeded)
					return
				}
				_ = c.SetReadDeadline(time.Time{})
				b, err := io.ReadAll(c) // to the client's half-close
				if err != nil {
					deadlineOK <- err
					return
				}
				deadlineOK <- nil
				_, _ = c.Write(append([]byte("took over: "), b...))
			}, nil
		},
		DialUpstream: func(ctx context.Context, in *hbone.Inbound) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", up.addr)
		},
	})
	c := newClient(t, m)

	conn, err := c.Dial(t.Context(), request(m, s, "10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	<-checked
	if _, err := io.WriteString(conn, "hello"); err != nil {
		t.Fatal(err)
	}
	_ = conn.CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "took over: hello" {
		t.Errorf("takeover answer = %q, %v", got, err)
	}
	if err := <-deadlineOK; err != nil {
		t.Errorf("deadline on the taken-over stream: %v", err)
	}
	_ = conn.Close()

	conn, err = c.Dial(t.Context(), request(m, s, "10.0.0.1:81"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "echo me")
	_ = conn.CloseWrite()
	if got, err := io.ReadAll(conn); err != nil || string(got) != "echo me" {
		t.Errorf("fallback to DialUpstream = %q, %v", got, err)
	}
	_ = conn.Close()

	if conn, err := c.Dial(t.Context(), request(m, s, "10.0.0.1:82")); err == nil || !isStatus(err, http.StatusServiceUnavailable) {
		if conn != nil {
			_ = conn.Close()
		}
		t.Errorf("takeover error: Dial = %v, want status 503", err)
	}
}
