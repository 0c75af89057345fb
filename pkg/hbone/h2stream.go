package hbone

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// chunk is one received DATA payload, from a size-class pool.
type chunk struct {
	b     []byte // payload (unread part starts at off)
	off   int
	class int
}

// Size classes 1 KiB .. 16 MiB (the largest frame a peer may send).
const minClass = 10

var chunkPools [15]sync.Pool

func getChunk(n int) *chunk {
	c := max(minClass, bits.Len(uint(n-1)))
	i := c - minClass
	if v, _ := chunkPools[i].Get().(*chunk); v != nil {
		v.b = v.b[:n]
		v.off = 0
		return v
	}
	return &chunk{b: make([]byte, n, 1<<c), class: i}
}

func (c *chunk) free() {
	if c == nil {
		return
	}
	c.b = c.b[:0]
	chunkPools[c.class].Put(c)
}

// ReadFrom's frame buffers, with a frame header's worth of room in front of
// each payload: a small one while the source trickles (an idle stream
// blocked in a read holds only that), a large one once a read fills it.
var (
	smallSendPool = sync.Pool{New: func() any { b := make([]byte, frameHeaderLen+smallBuf); return &b }}
	largeSendPool = sync.Pool{New: func() any { b := make([]byte, frameHeaderLen+maxSendFrame); return &b }}
)

// h2stream is one CONNECT stream. Fields after m are guarded by m.mu.
type h2stream struct {
	m  *mux
	id uint32

	rcond        *sync.Cond // receive side changed (data, end, reset, deadline)
	chunks       []*chunk
	chunks0      [2]*chunk // chunks' room while few are queued (no allocation per frame)
	sink         TryWriter // WriteTo's destination, while it runs and can take direct writes
	sinkBusy     bool      // someone (WriteTo or the reader) is writing to the destination
	direct       int64     // bytes the reader wrote to sink, not yet counted by WriteTo
	sinkStopping bool      // WriteTo waits for the reader's direct write to end
	buffered     int
	recvWin      int64 // what the peer may still send
	unacked      int   // consumed, not yet returned by WINDOW_UPDATE
	recvEnd      bool  // END_STREAM received
	sendWin      int64 // what we may still send
	sendEnd      bool  // END_STREAM sent
	reset        error // *StreamError or a connection error; terminal
	removed      bool
	rDead        time.Time
	wDead        time.Time
	rTimer       *time.Timer
	wTimer       *time.Timer
	rFire, wFire time.Time // when the timer is due to fire; zero: not pending

	gotHeaders bool
	respReady  chan struct{} // client: closed when the response headers arrived
	resp       *muxHeaders
	cancel     func() // server: ends the stream's context once it is over
}

// newStreamLocked registers stream id. Caller holds m.mu.
func (m *mux) newStreamLocked(id uint32) *h2stream {
	s := &h2stream{
		m:         m,
		id:        id,
		recvWin:   int64(m.local.streamWindow),
		sendWin:   m.peerWindow,
		respReady: make(chan struct{}),
	}
	s.chunks = s.chunks0[:0]
	s.rcond = sync.NewCond(&m.mu)
	m.streams[id] = s
	m.lastUsed = time.Now()
	return s
}

// removeLocked drops the stream from the connection once it is over.
func (s *h2stream) removeLocked() {
	if s.removed {
		return
	}
	s.removed = true
	// No deadline matters once the stream is gone (reads return its
	// error or what is buffered): the timers, perhaps an hour ahead,
	// would keep it in memory.
	for _, tm := range []*time.Timer{s.rTimer, s.wTimer} {
		if tm != nil {
			tm.Stop()
		}
	}
	if s.m.streams[s.id] == s {
		delete(s.m.streams, s.id)
	}
	s.m.lastUsed = time.Now()
	if s.cancel != nil {
		s.cancel()
	}
	if !s.gotHeaders {
		// Over before any answer (reset, refused, connection gone): the
		// opener waiting for the response sees why.
		s.gotHeaders = true
		close(s.respReady)
	}
	s.m.wakeIdleLocked()
}

// maybeDoneLocked removes the stream once both directions ended cleanly.
func (s *h2stream) maybeDoneLocked() {
	if s.sendEnd && s.recvEnd && s.buffered == 0 {
		s.removeLocked()
	}
}

// failLocked ends the stream with a connection-level error. Bytes already
// received stay readable (reads return the error after them).
func (s *h2stream) failLocked(err error) {
	if s.reset == nil {
		s.reset = err
	}
	s.removeLocked()
	s.rcond.Broadcast()
}

// dropBufferLocked frees unread bytes and gives them back to the
// connection window.
func (s *h2stream) dropBufferLocked() {
	s.m.returnConnLocked(int64(s.buffered))
	for _, c := range s.chunks {
		c.free()
	}
	s.chunks = nil
	s.buffered = 0
}

// resetLocked resets the stream from our side with code.
func (s *h2stream) resetLocked(code http2.ErrCode) {
	if s.reset != nil {
		return
	}
	s.reset = &StreamError{Code: code}
	if !s.removed {
		s.m.queueLocked(appendRST(nil, s.id, code))
	}
	s.unacked = 0
	s.dropBufferLocked()
	s.removeLocked()
	s.rcond.Broadcast()
	s.m.sendCond.Broadcast()
}

// Reset resets the stream (RST_STREAM CANCEL) and fails pending calls.
func (s *h2stream) Reset() {
	s.m.mu.Lock()
	s.resetLocked(http2.ErrCodeCancel)
	s.m.mu.Unlock()
}

// consumedLocked records n bytes read by the application and returns
// window to the peer in batches of a quarter window.
func (s *h2stream) consumedLocked(n int) {
	s.unacked += n
	s.m.returnConnLocked(int64(n))
	if s.recvEnd || s.reset != nil {
		s.unacked = 0
		return
	}
	if s.unacked >= int(s.m.local.streamWindow)/4 {
		s.recvWin += int64(s.unacked)
		s.m.queueLocked(appendWindowUpdate(nil, s.id, uint32(s.unacked)))
		s.unacked = 0
	}
}

// readErrLocked is the error a read returns when nothing is buffered,
// or nil to wait.
func (s *h2stream) readErrLocked() error {
	if s.buffered > 0 {
		return nil
	}
	if s.recvEnd {
		return io.EOF
	}
	if s.reset != nil {
		var se *StreamError
		if errors.As(s.reset, &se) && se.Remote && se.Code == http2.ErrCodeNo {
			return io.EOF
		}
		return s.reset
	}
	if !s.rDead.IsZero() && !time.Now().Before(s.rDead) {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// waitReadLocked blocks until data is buffered or the read side ended.
func (s *h2stream) waitReadLocked() error {
	for s.buffered == 0 {
		if err := s.readErrLocked(); err != nil {
			return err
		}
		s.rcond.Wait()
	}
	return nil
}

// readable tells whether Read would return without waiting.
func (s *h2stream) readable() bool {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	return s.buffered > 0 || s.readErrLocked() != nil || m.closed
}

func (s *h2stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := s.waitReadLocked(); err != nil {
		if err == io.EOF {
			s.maybeDoneLocked()
		}
		return 0, err
	}
	n := 0
	for n < len(p) && len(s.chunks) > 0 {
		c := s.chunks[0]
		k := copy(p[n:], c.b[c.off:])
		n += k
		c.off += k
		if c.off == len(c.b) {
			c.free()
			s.chunks[0] = nil
			s.chunks = s.chunks[1:]
		}
	}
	if len(s.chunks) == 0 {
		s.chunks = s.chunks0[:0]
	}
	s.buffered -= n
	s.consumedLocked(n)
	return n, nil
}

// WriteTo writes received chunks straight to w until the peer ends the
// stream (returning nil) or it is reset.
//
// When w can take a write without waiting (a *net.TCPConn, or a
// [TryWriter]), the connection's reader writes a DATA payload that finds
// nothing queued to w itself, once, without blocking, and queues only
// what w did not take. A request and its answer then wake no goroutine
// besides the readers: on a quiet stream, each payload used to wake this
// one to write it.
func (s *h2stream) WriteTo(w io.Writer) (int64, error) {
	m := s.m
	var total int64
	sink := trySink(w)
	m.mu.Lock()
	s.sink = sink
	// stop ends direct writes (waiting for one under way) and counts
	// them. Caller holds m.mu.
	stop := func() {
		for s.sinkBusy {
			s.sinkStopping = true
			s.rcond.Wait()
		}
		s.sinkStopping = false
		s.sink = nil
		total += s.direct
		s.direct = 0
	}
	for {
		if err := s.waitReadLocked(); err != nil {
			if err == io.EOF {
				s.maybeDoneLocked()
				err = nil
			}
			stop()
			m.mu.Unlock()
			return total, err
		}
		c := s.chunks[0]
		s.chunks[0] = nil
		s.chunks = s.chunks[1:]
		if len(s.chunks) == 0 {
			s.chunks = s.chunks0[:0]
		}
		k := len(c.b) - c.off
		s.buffered -= k
		s.sinkBusy = true
		m.mu.Unlock()
		n, err := w.Write(c.b[c.off:])
		c.free()
		total += int64(n)
		m.mu.Lock()
		s.sinkBusy = false
		s.consumedLocked(k)
		if err != nil {
			stop()
			m.mu.Unlock()
			return total, err
		}
	}
}

// TryWriter is a destination that [Conn.WriteTo] may write to from the
// connection's reader: TryWrite writes as much of p as it takes at once,
// never waiting, and returns how much.
type TryWriter interface {
	TryWrite(p []byte) (int, error)
}

// trySink is w as a TryWriter, or nil.
func trySink(w io.Writer) TryWriter {
	switch w := w.(type) {
	case TryWriter:
		return w
	case *net.TCPConn:
		if rc, err := w.SyscallConn(); err == nil {
			return rawTryWriter{rc}
		}
	}
	return nil
}

type rawTryWriter struct{ rc syscall.RawConn }

func (r rawTryWriter) TryWrite(p []byte) (int, error) { return TryWrite(r.rc, p) }

// TryWrite makes one non-blocking write of p to rc (a socket in Go's
// poller, so non-blocking): it returns 0 and no error when the socket's
// buffer is full.
func TryWrite(rc syscall.RawConn, p []byte) (n int, err error) {
	werr := rc.Write(func(fd uintptr) bool {
		for {
			n, err = syscall.Write(int(fd), p)
			if err != syscall.EINTR {
				return true
			}
		}
	})
	if werr != nil {
		return 0, werr
	}
	if err == syscall.EAGAIN {
		return 0, nil
	}
	return max(n, 0), err
}

// writeDirectLocked offers c to the stream's WriteTo destination, from the
// reader, when nothing is queued before it. It returns what is left to
// queue (nil when the destination took all of it). Caller holds m.mu,
// which is released during the write.
func (s *h2stream) writeDirectLocked(c *chunk) *chunk {
	if s.sink == nil || s.sinkBusy || len(s.chunks) > 0 {
		return c
	}
	m := s.m
	sink := s.sink
	s.sinkBusy = true
	m.mu.Unlock()
	n, err := sink.TryWrite(c.b)
	m.mu.Lock()
	s.sinkBusy = false
	if s.sinkStopping {
		s.rcond.Broadcast()
	}
	if err != nil {
		n = 0 // WriteTo's own write meets the error and returns it
	}
	if n > 0 {
		s.direct += int64(n)
		m.directBytes += int64(n)
		s.consumedLocked(n)
	}
	if n == len(c.b) {
		c.free()
		return nil
	}
	c.off = n
	return c
}

// awaitSend waits until n > 0 bytes may be sent (flow control) and takes
// them from both windows; it returns at most want and the peer's frame size.
func (s *h2stream) awaitSend(want int) (int, error) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		switch {
		case s.reset != nil:
			return 0, s.writeErr()
		case s.sendEnd:
			return 0, fmt.Errorf("write after CloseWrite: %w", net.ErrClosed)
		case m.closed:
			return 0, m.closeErr
		case !s.wDead.IsZero() && !time.Now().Before(s.wDead):
			return 0, os.ErrDeadlineExceeded
		}
		if n := min(int64(want), s.sendWin, m.connSend, int64(m.peerFrame), maxSendFrame); n > 0 {
			s.sendWin -= n
			m.connSend -= n
			return int(n), nil
		}
		m.sendCond.Wait()
	}
}

func (s *h2stream) writeErr() error {
	var se *StreamError
	if errors.As(s.reset, &se) {
		return fmt.Errorf("write: %w", s.reset)
	}
	return s.reset
}

func (s *h2stream) Write(p []byte) (int, error) {
	m := s.m
	written := 0
	for len(p) > 0 {
		n, err := s.awaitSend(len(p))
		if err != nil {
			return written, err
		}
		if n <= inlineCopy {
			err = m.writeData(s.id, p[:n])
		} else {
			hdr := make([]byte, frameHeaderLen)
			putFrameHeader(hdr, n, frData, 0, s.id)
			m.wmu.Lock()
			err = m.writeLocked(hdr, p[:n])
			m.wmu.Unlock()
		}
		if err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// ReadFrom reads r straight into frame buffers (the frame header goes in
// front of the payload) until r ends; it does not half-close.
func (s *h2stream) ReadFrom(r io.Reader) (int64, error) {
	small := smallSendPool.Get().(*[]byte)
	buf := *small
	var large *[]byte
	defer func() {
		smallSendPool.Put(small)
		if large != nil {
			largeSendPool.Put(large)
		}
	}()
	m := s.m
	var total int64
	for {
		nr, rerr := r.Read(buf[frameHeaderLen:])
		for off := 0; off < nr; {
			n, err := s.awaitSend(nr - off)
			if err != nil {
				return total, err
			}
			// The header overwrites payload bytes already sent (or the
			// reserved room in front of the first frame).
			f := buf[off : frameHeaderLen+off+n]
			putFrameHeader(f, n, frData, 0, s.id)
			if n <= smallBuf { // bulk transfers' large frames go on their own
				err = m.writeData(s.id, f[frameHeaderLen:])
			} else {
				m.wmu.Lock()
				err = m.writeLocked(f)
				m.wmu.Unlock()
			}
			if err != nil {
				return total, err
			}
			off += n
			total += int64(n)
		}
		if large == nil && nr == smallBuf {
			// A read filled the small buffer: a bulk transfer.
			large = largeSendPool.Get().(*[]byte)
			buf = *large
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

// CloseWrite sends END_STREAM: the peer reads EOF, our reads go on.
func (s *h2stream) CloseWrite() error {
	m := s.m
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.mu.Lock()
	if s.sendEnd {
		m.mu.Unlock()
		return nil
	}
	if s.reset != nil {
		err := s.writeErr()
		m.mu.Unlock()
		return err
	}
	s.sendEnd = true
	s.maybeDoneLocked()
	m.mu.Unlock()
	return m.writeLocked(appendFrame(m.wbuf[:0], frData, flEndStream, s.id, nil))
}

// Close ends the stream like closing a socket: what was written is
// already on the connection; END_STREAM follows it, and if the peer is
// still sending, RST_STREAM CANCEL tells it to stop. Unread bytes are
// dropped.
func (s *h2stream) Close() error {
	m := s.m
	m.mu.Lock()
	sendOpen := !s.sendEnd && s.reset == nil
	m.mu.Unlock()
	if sendOpen {
		_ = s.CloseWrite()
	}
	m.mu.Lock()
	if !s.recvEnd && s.reset == nil {
		s.resetLocked(http2.ErrCodeCancel)
	} else {
		s.dropBufferLocked()
		s.removeLocked()
	}
	m.mu.Unlock()
	return nil
}

// SetReadDeadline and SetWriteDeadline are ordinary net.Conn deadlines:
// a pending call fails with os.ErrDeadlineExceeded, the stream lives on.
func (s *h2stream) SetReadDeadline(t time.Time) error {
	s.setDeadline(&s.rDead, &s.rTimer, &s.rFire, t)
	return nil
}

func (s *h2stream) SetWriteDeadline(t time.Time) error {
	s.setDeadline(&s.wDead, &s.wTimer, &s.wFire, t)
	return nil
}

// setDeadline sets the deadline *d to t with one timer per direction
// (*tm, due at *fire), moved lazily: a deadline cleared or set later than
// the pending timer leaves the timer as it is, and the timer, when it
// fires, looks at the deadline then: none, nothing to do; later, it is due
// again at that time; passed, the waiting calls wake. A server setting an
// idle deadline before each request and clearing it after (the waypoint's
// HTTP/1.1 loop, net/http's) then touches the runtime's timers about once
// per idle period instead of twice per request. Only a deadline earlier
// than the pending timer resets it.
func (s *h2stream) setDeadline(d *time.Time, tm **time.Timer, fire *time.Time, t time.Time) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	*d = t
	if t.IsZero() {
		return // a pending timer will find no deadline
	}
	dur := time.Until(t)
	if dur <= 0 {
		s.rcond.Broadcast()
		m.sendCond.Broadcast()
		return
	}
	if s.removed || (!fire.IsZero() && !fire.After(t)) {
		return // gone, or the pending timer fires first and moves on to t
	}
	*fire = t
	if *tm == nil {
		*tm = time.AfterFunc(dur, func() { s.deadlineTimer(d, tm, fire) })
		return
	}
	(*tm).Reset(dur)
}

// deadlineTimer is a deadline timer firing: see setDeadline.
func (s *h2stream) deadlineTimer(d *time.Time, tm **time.Timer, fire *time.Time) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	*fire = time.Time{}
	if d.IsZero() || s.removed {
		return
	}
	if rest := time.Until(*d); rest > 0 {
		*fire = *d
		(*tm).Reset(rest)
		return
	}
	s.rcond.Broadcast()
	m.sendCond.Broadcast()
}

// writeHeaders sends a header block (HEADERS + CONTINUATION as the peer's
// frame size requires). Caller holds wmu.
func (m *mux) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	m.hbuf.Reset()
	for _, f := range fields {
		if err := m.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := m.hbuf.Bytes()
	m.mu.Lock()
	maxF := int(m.peerFrame)
	m.mu.Unlock()
	var flags byte
	if end {
		flags |= flEndStream
	}
	b := m.wbuf[:0]
	first := min(len(block), maxF)
	if first == len(block) {
		flags |= flEndHeaders
	}
	b = appendFrame(b, frHeaders, flags, id, block[:first])
	for rest := block[first:]; len(rest) > 0; {
		k := min(len(rest), maxF)
		var fl byte
		if k == len(rest) {
			fl = flEndHeaders
		}
		b = appendFrame(b, frContinuation, fl, id, rest[:k])
		rest = rest[k:]
	}
	m.wbuf = b
	return m.writeLocked(b)
}

// headerFields lowercases h's names for HTTP/2, dropping connection-
// specific fields.
func headerFields(fields []hpack.HeaderField, h http.Header) []hpack.HeaderField {
	for k, vs := range h {
		lk := strings.ToLower(k)
		switch lk {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: lk, Value: v})
		}
	}
	return fields
}

func headerListSize(fields []hpack.HeaderField) int {
	n := 0
	for _, f := range fields {
		n += len(f.Name) + len(f.Value) + 32
	}
	return n
}

// openStream (client) sends a CONNECT and returns the stream; the caller
// waits on respReady.
func (m *mux) openStream(authority string, h http.Header) (*h2stream, error) {
	fields := []hpack.HeaderField{{Name: ":method", Value: http.MethodConnect}, {Name: ":authority", Value: authority}}
	fields = headerFields(fields, h)
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.mu.Lock()
	if m.closed {
		err := m.closeErr
		m.mu.Unlock()
		return nil, err
	}
	if m.goneAway {
		m.mu.Unlock()
		return nil, errGoAway
	}
	if lim, size := m.peerHeaderList, headerListSize(fields); lim != 0 && size > int(lim) {
		m.mu.Unlock()
		return nil, fmt.Errorf("CONNECT headers of %d bytes exceed the peer's SETTINGS_MAX_HEADER_LIST_SIZE %d", size, lim)
	}
	if m.nextID > 1<<31-1 {
		m.goneAway = true
		m.mu.Unlock()
		return nil, errGoAway
	}
	id := m.nextID
	m.nextID += 2
	s := m.newStreamLocked(id)
	m.mu.Unlock()
	if err := m.writeHeadersLocked(id, fields, false); err != nil {
		m.mu.Lock()
		s.failLocked(err)
		m.mu.Unlock()
		return nil, err
	}
	return s, nil
}

// respond (server) sends the response headers; a non-200 ends the stream.
func (s *h2stream) respond(status int, h http.Header) error {
	m := s.m
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	fields = headerFields(fields, h)
	end := status != http.StatusOK
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.mu.Lock()
	if s.reset != nil {
		err := s.writeErr()
		m.mu.Unlock()
		return err
	}
	if end {
		s.sendEnd = true
	}
	m.mu.Unlock()
	err := m.writeHeadersLocked(s.id, fields, end)
	if end {
		m.mu.Lock()
		if !s.recvEnd {
			// We will not read the rest of the request.
			s.resetLocked(http2.ErrCodeNo)
		}
		s.dropBufferLocked()
		s.removeLocked()
		m.mu.Unlock()
	}
	return err
}
