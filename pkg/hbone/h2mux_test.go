package hbone

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func testSettings(ping, timeout time.Duration) muxSettings {
	return muxSettings{maxFrame: 1 << 20, streamWindow: StreamWindow, connWindow: ConnectionWindow, maxStreams: 10,
		headerList: 16 << 10, pingInterval: ping, pingTimeout: timeout}
}

// muxPair starts a client and a server engine over a net.Pipe; both are
// closed when the test ends.
func muxPair(t *testing.T, set muxSettings, onStream func(*h2stream, *muxHeaders)) (cl, sv *mux) {
	t.Helper()
	return muxPairOver(t, set, onStream, nil)
}

// muxPairOver is muxPair with the client's end of the pipe wrapped by
// wrap, if set.
func muxPairOver(t *testing.T, set muxSettings, onStream func(*h2stream, *muxHeaders), wrap func(net.Conn) net.Conn) (cl, sv *mux) {
	t.Helper()
	a, b := net.Pipe()
	if wrap != nil {
		a = wrap(a)
	}
	cl = newMux(a, nil, false, set, zap.NewNop())
	sv = newMux(b, nil, true, set, zap.NewNop())
	sv.onStream = onStream
	errc := make(chan error, 1)
	go func() { errc <- sv.start() }()
	if err := cl.start(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cl.closeWith(net.ErrClosed)
		sv.closeWith(net.ErrClosed)
	})
	return cl, sv
}

// TestKeepalivePingTimeout: a peer that goes silent (reads, never
// answers) is declared dead after the ping interval plus the ping timeout.
func TestKeepalivePingTimeout(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }() // a black hole
	m := newMux(a, nil, false, testSettings(50*time.Millisecond, 150*time.Millisecond), zap.NewNop())
	start := time.Now()
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection to a silent peer still open after 5 s")
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("closed after %s, before the ping timeout", d)
	}
	m.mu.Lock()
	err := m.closeErr
	m.mu.Unlock()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("close cause = %v, want a ping deadline", err)
	}
}

// TestKeepaliveAnswered: two idle engines that answer each other's pings
// stay connected well past several ping timeouts.
func TestKeepaliveAnswered(t *testing.T) {
	cl, sv := muxPair(t, testSettings(20*time.Millisecond, 60*time.Millisecond), func(s *h2stream, h *muxHeaders) { _ = s.respond(200, nil) })
	time.Sleep(400 * time.Millisecond)
	select {
	case <-cl.done:
		t.Fatalf("client closed: %v", cl.closeErr)
	case <-sv.done:
		t.Fatalf("server closed: %v", sv.closeErr)
	default:
	}
	// And a stream still opens.
	s, err := cl.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.respReady:
	case <-time.After(5 * time.Second):
		t.Fatal("no response on a kept-alive connection")
	}
	if s.resp == nil || s.resp.status != "200" {
		t.Errorf("response %+v", s.resp)
	}
}

// TestFlowControlViolation: a peer that sends more than the connection
// window gets GOAWAY FLOW_CONTROL_ERROR.
func TestFlowControlViolation(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	set := testSettings(time.Minute, time.Minute)
	set.connWindow = defaultWindow // no extra connection window
	sv := newMux(a, nil, true, set, zap.NewNop())
	sv.onStream = func(s *h2stream, h *muxHeaders) { _ = s.respond(200, nil) } // never reads
	go func() { _ = sv.start() }()
	if _, err := io.WriteString(b, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(b, b)
	goaway := make(chan http2.ErrCode, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goaway <- g.ErrCode
				return
			}
		}
	}()
	_ = fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	_ = enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	block := hb.Bytes()
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 16<<10)
	for range 5 { // 80 KiB > the 64 KiB connection window
		if err := fr.WriteData(1, false, chunk); err != nil {
			break
		}
	}
	select {
	case code := <-goaway:
		if code != http2.ErrCodeFlowControl {
			t.Errorf("GOAWAY %v, want FLOW_CONTROL_ERROR", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no GOAWAY after overrunning the connection window")
	}
}

// TestRefusedStream: a stream over the server's concurrency limit is
// reset with REFUSED_STREAM before any answer, and the opener learns it
// at once instead of waiting for a response.
func TestRefusedStream(t *testing.T) {
	set := testSettings(time.Minute, time.Minute)
	set.maxStreams = 1
	hold := make(chan struct{})
	cl, _ := muxPair(t, set, func(s *h2stream, h *muxHeaders) {
		_ = s.respond(200, nil)
		<-hold
		_ = s.Close()
	})
	defer close(hold)
	first, err := cl.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-first.respReady
	second, err := cl.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.respReady:
	case <-time.After(5 * time.Second):
		t.Fatal("refused stream: opener still waiting after 5 s")
	}
	cl.mu.Lock()
	resp, reset := second.resp, second.reset
	cl.mu.Unlock()
	var se *StreamError
	if resp != nil || !errors.As(reset, &se) || se.Code != http2.ErrCodeRefusedStream || !se.Remote {
		t.Errorf("second stream: response %+v, reset %v; want REFUSED_STREAM from the peer", resp, reset)
	}
}

// TestWriteToDirect: with a TCP destination, the reader writes a quiet
// stream's payloads to it itself, queues what a full socket does not take,
// and the destination gets every byte in order with WriteTo counting all
// of them, whichever goroutine wrote them.
func TestWriteToDirect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	far, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	// A small send buffer fills during the large writes, so that part
	// of them is queued for WriteTo.
	_ = dst.(*net.TCPConn).SetWriteBuffer(16 << 10)

	type result struct {
		n   int64
		err error
	}
	res := make(chan result, 1)
	cl, sv := muxPair(t, testSettings(time.Minute, time.Minute), func(s *h2stream, h *muxHeaders) {
		_ = s.respond(200, nil)
		n, err := s.WriteTo(dst)
		res <- result{n, err}
		_ = dst.(*net.TCPConn).CloseWrite()
	})
	str, err := cl.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-str.respReady

	var sent bytes.Buffer
	got := make(chan []byte, 1)
	release := make(chan struct{})
	go func() {
		<-release // the far end reads only once the large writes are under way
		b, _ := io.ReadAll(far)
		got <- b
	}()
	piece := func(i, n int) []byte {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i*131 + j*7)
		}
		return b
	}
	// Quiet: one small payload at a time, each written before the next.
	for i := range 50 {
		p := piece(i, 1000+i)
		sent.Write(p)
		if _, err := str.Write(p); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	// Busy: large payloads against a reader that is not reading.
	go func() { time.Sleep(200 * time.Millisecond); close(release) }()
	for i := range 8 {
		p := piece(100+i, 512<<10)
		sent.Write(p)
		if _, err := str.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := str.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-res:
	case <-time.After(10 * time.Second):
		t.Fatal("WriteTo did not return after the peer half-closed")
	}
	b := <-got
	if r.err != nil || r.n != int64(sent.Len()) {
		t.Errorf("WriteTo = %d, %v; want %d, nil", r.n, r.err, sent.Len())
	}
	if !bytes.Equal(b, sent.Bytes()) {
		t.Fatalf("destination got %d bytes, not the %d sent in order", len(b), sent.Len())
	}
	sv.mu.Lock()
	direct := sv.directBytes
	sv.mu.Unlock()
	if direct <= 0 || direct >= int64(sent.Len()) {
		t.Errorf("reader wrote %d of %d bytes itself; want some (the quiet part) but not all (the socket filled)", direct, sent.Len())
	}
	t.Logf("reader wrote %d of %d bytes straight to the destination", direct, sent.Len())
}

// countingConn counts the writes that reach the connection.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestCoalescedWrites: small DATA frames that streams write at the same
// time leave in one write to the connection (one TLS record, one system
// call), and each stream still gets exactly its own bytes; with
// coalescing off, each frame is its own write.
func TestCoalescedWrites(t *testing.T) {
	const streams = 8
	for _, coalesce := range []bool{true, false} {
		t.Run(map[bool]string{true: "coalesced", false: "one write per frame"}[coalesce], func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			set := testSettings(time.Minute, time.Minute)
			set.noCoalesce = !coalesce
			var ca *countingConn
			got := make(chan string, streams)
			cl, _ := muxPairOver(t, set, func(s *h2stream, h *muxHeaders) {
				_ = s.respond(200, nil)
				buf := make([]byte, 100)
				if _, err := io.ReadFull(s, buf); err != nil {
					got <- "error: " + err.Error()
					return
				}
				got <- h.authority + " " + string(bytes.TrimRight(buf, "."))
			}, func(c net.Conn) net.Conn { ca = &countingConn{Conn: c}; return ca })
			var ss []*h2stream
			for i := range streams {
				s, err := cl.openStream(fmt.Sprintf("10.0.0.%d:80", i), nil)
				if err != nil {
					t.Fatal(err)
				}
				<-s.respReady
				ss = append(ss, s)
			}
			time.Sleep(20 * time.Millisecond) // settings and window updates settle
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i, s := range ss {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					p := []byte(fmt.Sprintf("payload of stream %d", i))
					p = append(p, bytes.Repeat([]byte("."), 100-len(p))...)
					if _, err := s.Write(p); err != nil {
						t.Error(err)
					}
				}()
			}
			time.Sleep(20 * time.Millisecond) // all writers wait on start
			before := ca.writes.Load()
			close(start)
			wg.Wait()
			want := map[string]bool{}
			for i := range streams {
				want[fmt.Sprintf("10.0.0.%d:80 payload of stream %d", i, i)] = true
			}
			for range streams {
				select {
				case g := <-got:
					if !want[g] {
						t.Errorf("server read %q", g)
					}
					delete(want, g)
				case <-time.After(5 * time.Second):
					t.Fatalf("server still waits for %v", want)
				}
			}
			n := ca.writes.Load() - before
			if coalesce && n > 2 {
				t.Errorf("%d frames written at once took %d writes, want them gathered into 1 or 2", streams, n)
			}
			if !coalesce && n != streams {
				t.Errorf("%d frames took %d writes with coalescing off, want %d", streams, n, streams)
			}
			t.Logf("%d frames, %d writes", streams, n)
		})
	}
}

// TestLazyDeadlines: read deadlines moved lazily (see setDeadline) keep
// net.Conn's meaning: a deadline cleared before it passes fails nothing,
// one moved later fails at the later time (not at the timer's first due
// time), one moved earlier than the pending timer at the earlier time,
// and a cleared stream gets its data.
func TestLazyDeadlines(t *testing.T) {
	served := make(chan *h2stream, 1)
	cl, _ := muxPair(t, testSettings(0, 0), func(s *h2stream, h *muxHeaders) { _ = s.respond(200, nil); served <- s })
	s, err := cl.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-s.respReady
	sv := <-served
	read := func() (time.Duration, error) {
		start := time.Now()
		_, err := s.Read(make([]byte, 8))
		return time.Since(start), err
	}

	// Later: due at 100 ms, moved to 400 ms before it fires.
	start := time.Now()
	_ = s.SetReadDeadline(start.Add(100 * time.Millisecond))
	_ = s.SetReadDeadline(start.Add(400 * time.Millisecond))
	if _, err := read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with a deadline: %v, want a deadline error", err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("deadline moved to 400 ms failed the read after %s", d)
	}

	// Earlier than the pending timer: an hour, then 100 ms.
	_ = s.SetReadDeadline(time.Now().Add(time.Hour))
	_ = s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if d, err := read(); !errors.Is(err, os.ErrDeadlineExceeded) || d > 5*time.Second {
		t.Fatalf("deadline moved from an hour to 100 ms: %v after %s, want a deadline error at once", err, d)
	}

	// Cleared: the pending 100 ms timer fires and fails nothing; the data
	// written at 300 ms arrives.
	_ = s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_ = s.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = sv.Write([]byte("late"))
	}()
	if d, err := read(); err != nil || d < 250*time.Millisecond {
		t.Fatalf("read after the deadline was cleared: %v after %s, want the data written at 300 ms", err, d)
	}
}
