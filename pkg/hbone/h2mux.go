package hbone

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file is the HTTP/2 engine HBONE runs on: CONNECT streams only, both
// roles, written for the tunnel's access pattern rather than for general
// HTTP. Compared with a general-purpose HTTP/2 stack it
//
//   - writes DATA frames from the caller's goroutine straight into the TLS
//     connection (no hand-off to a per-connection writer goroutine);
//   - reads each DATA payload once, from TLS into a pooled chunk that the
//     stream's reader consumes or writes straight to its destination
//     (WriteTo), and reads from a source straight into a frame buffer with
//     room for the frame header in front of the payload (ReadFrom);
//   - gathers the small DATA frames that streams write at about the same
//     time into one TLS record and one system call (writeData);
//   - half-closes each direction independently (END_STREAM one way while
//     the other keeps flowing), and gives streams ordinary, non-terminal
//     net.Conn deadlines.
//
// Framing is RFC 9113 with HPACK from golang.org/x/net/http2/hpack.
//
// Concurrency: one reader goroutine per connection parses frames and never
// writes to the connection; control frames it owes (SETTINGS and PING
// acknowledgements, WINDOW_UPDATE, RST_STREAM) are queued for the
// connection's control goroutine, which also sends keepalive PINGs. So a
// writer blocked on TCP back-pressure can never stop the reader, and the
// reader keeps draining the peer's frames (the classic HTTP/2 deadlock).
// wmu serialises every write to the connection and owns the HPACK encoder
// and the next client stream ID; mu guards everything else (streams, flow
// control windows, connection state). Lock order: wmu before mu.

const (
	frameHeaderLen = 9
	// maxSendFrame caps the DATA frames we send, whatever the peer accepts,
	// so one stream cannot hold the connection for long.
	maxSendFrame = 256 << 10
	// inlineCopy: payloads up to this size are copied behind their frame
	// header and sent in one TLS record; larger ones go as two writes.
	inlineCopy = 32 << 10
	// readerBuf is the connection's read buffer (frame headers and small
	// frames come out of it without a TLS read each).
	readerBuf = 32 << 10
	// directMax is the largest payload the reader writes to a WriteTo
	// destination itself.
	directMax = 64 << 10
	// maxHeaderBlock bounds a HEADERS+CONTINUATION block on the wire; a peer
	// that sends more is flooding and gets GOAWAY PROTOCOL_ERROR.
	maxHeaderBlock = 80 << 10
	defaultWindow  = 65535
)

// Frame types and flags (RFC 9113 §6).
const (
	frData         = 0x0
	frHeaders      = 0x1
	frPriority     = 0x2
	frRSTStream    = 0x3
	frSettings     = 0x4
	frPushPromise  = 0x5
	frPing         = 0x6
	frGoAway       = 0x7
	frWindowUpdate = 0x8
	frContinuation = 0x9

	flEndStream  = 0x1
	flAck        = 0x1
	flEndHeaders = 0x4
	flPadded     = 0x8
	flPriority   = 0x20
)

// StreamError is a stream reset, by the peer or by us.
type StreamError struct {
	Code   http2.ErrCode
	Remote bool // the peer reset the stream
}

func (e *StreamError) Error() string {
	if e.Remote {
		return "stream reset by peer: " + e.Code.String()
	}
	return "stream reset: " + e.Code.String()
}

// connError ends the whole connection with a GOAWAY carrying Code.
type connError struct {
	Code   http2.ErrCode
	Reason string
}

func (e *connError) Error() string { return "http2 " + e.Code.String() + ": " + e.Reason }

// errGoAway fails streams the peer's GOAWAY said it will not process.
var errGoAway = errors.New("connection is going away")

// muxSettings are what one side advertises.
type muxSettings struct {
	maxFrame     uint32 // SETTINGS_MAX_FRAME_SIZE
	streamWindow uint32 // SETTINGS_INITIAL_WINDOW_SIZE
	connWindow   uint32 // connection receive window (sent as WINDOW_UPDATE)
	maxStreams   uint32 // SETTINGS_MAX_CONCURRENT_STREAMS (0: do not send)
	headerList   uint32 // SETTINGS_MAX_HEADER_LIST_SIZE: decoded header bytes we accept
	noCoalesce   bool   // send each DATA frame in its own write (writeData)
	pingInterval time.Duration
	pingTimeout  time.Duration
}

// muxHeaders is one decoded header block.
type muxHeaders struct {
	method, authority, scheme, path, protocol, status string
	header                                            http.Header
	endStream                                         bool
	tooLarge                                          bool // decoded size passed the limit
}

// mux is one HTTP/2 connection, client or server side.
type mux struct {
	c      net.Conn // the TLS connection
	tls    *tls.ConnectionState
	server bool
	log    *zap.Logger
	local  muxSettings
	// onStream (server) runs each new stream in its own goroutine.
	onStream func(s *h2stream, h *muxHeaders)

	wmu    sync.Mutex
	henc   *hpack.Encoder
	hbuf   bytes.Buffer
	wbuf   []byte
	nextID uint32 // client: next stream ID
	werr   error  // first write error; every later write fails with it
	// pend holds DATA frames written but not yet sent, and flushing
	// tells that a writer will send them (writeData).
	pend     []byte
	flushing bool
	coalesce bool

	mu             sync.Mutex
	streams        map[uint32]*h2stream
	reserved       int // client: slots taken by reserve, not yet opened
	lastPeerID     uint32
	peerMaxStr     uint32
	peerWindow     int64 // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame      uint32
	peerHeaderList uint32 // 0: no limit announced
	connSend       int64  // our send window on the connection
	connUnacked    int64  // consumed bytes not yet returned by WINDOW_UPDATE
	directBytes    int64  // payload bytes the reader wrote straight to a WriteTo destination
	connRecv       int64  // receive window the peer may still use
	sendCond       *sync.Cond
	goneAway       bool   // GOAWAY received (client: take no new streams)
	goAwaySent     bool   // GOAWAY sent (server: drain)
	lastOK         uint32 // from the peer's GOAWAY
	closed         bool
	closeErr       error
	lastUsed       time.Time
	ctrl           []byte // queued control frames
	ctrlWake       chan struct{}
	pingSent       time.Time
	lastRead       atomic.Int64 // unix nanos of the last frame read
	done           chan struct{}
	idleWaiters    []chan struct{}
	handlers       sync.WaitGroup // server: running stream handlers

	br   *bufio.Reader
	hdec *hpack.Decoder
}

func newMux(c net.Conn, state *tls.ConnectionState, server bool, local muxSettings, log *zap.Logger) *mux {
	m := &mux{
		c:          c,
		tls:        state,
		server:     server,
		log:        log,
		local:      local,
		nextID:     1,
		streams:    map[uint32]*h2stream{},
		peerMaxStr: 1<<31 - 1,
		peerWindow: defaultWindow,
		peerFrame:  16 << 10,
		connSend:   defaultWindow,
		connRecv:   int64(local.connWindow),
		ctrlWake:   make(chan struct{}, 1),
		done:       make(chan struct{}),
		lastUsed:   time.Now(),
		br:         bufio.NewReaderSize(c, readerBuf),
		coalesce:   !local.noCoalesce,
	}
	m.sendCond = sync.NewCond(&m.mu)
	m.henc = hpack.NewEncoder(&m.hbuf)
	// CONNECT header blocks are small and rarely repeat exactly: encode
	// every field literally, which also makes the peer's
	// SETTINGS_HEADER_TABLE_SIZE irrelevant.
	m.henc.SetMaxDynamicTableSizeLimit(0)
	m.hdec = hpack.NewDecoder(4096, nil)
	m.hdec.SetMaxStringLength(int(local.headerList))
	m.lastRead.Store(time.Now().UnixNano())
	return m
}

// start writes our preface (client magic, SETTINGS, connection window)
// and runs the reader and control goroutines. The server reads the
// client's magic first.
func (m *mux) start() error {
	if m.server {
		magic := make([]byte, len(http2.ClientPreface))
		_ = m.c.SetReadDeadline(time.Now().Add(DefaultHandshake))
		if _, err := io.ReadFull(m.br, magic); err != nil {
			return fmt.Errorf("read client preface: %w", err)
		}
		_ = m.c.SetReadDeadline(time.Time{})
		if string(magic) != http2.ClientPreface {
			return &connError{http2.ErrCodeProtocol, "bad client preface"}
		}
	}
	var b []byte
	if !m.server {
		b = append(b, http2.ClientPreface...)
	}
	var set []byte
	put := func(id http2.SettingID, v uint32) {
		set = binary.BigEndian.AppendUint16(set, uint16(id))
		set = binary.BigEndian.AppendUint32(set, v)
	}
	if !m.server {
		put(http2.SettingEnablePush, 0)
	}
	if m.local.maxStreams > 0 {
		put(http2.SettingMaxConcurrentStreams, m.local.maxStreams)
	}
	put(http2.SettingInitialWindowSize, m.local.streamWindow)
	put(http2.SettingMaxFrameSize, m.local.maxFrame)
	put(http2.SettingMaxHeaderListSize, m.local.headerList)
	b = appendFrame(b, frSettings, 0, 0, set)
	if inc := m.local.connWindow - defaultWindow; inc > 0 {
		b = appendWindowUpdate(b, 0, inc)
	}
	if _, err := m.c.Write(b); err != nil {
		return fmt.Errorf("write preface: %w", err)
	}
	go m.readLoop()
	go m.controlLoop()
	return nil
}

func appendFrame(b []byte, typ, flags byte, id uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, id&(1<<31-1))
	return append(b, payload...)
}

func putFrameHeader(b []byte, n int, typ, flags byte, id uint32) {
	b[0], b[1], b[2], b[3], b[4] = byte(n>>16), byte(n>>8), byte(n), typ, flags
	binary.BigEndian.PutUint32(b[5:], id&(1<<31-1))
}

func appendWindowUpdate(b []byte, id, inc uint32) []byte {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], inc)
	return appendFrame(b, frWindowUpdate, 0, id, p[:])
}

func appendRST(b []byte, id uint32, code http2.ErrCode) []byte {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], uint32(code))
	return appendFrame(b, frRSTStream, 0, id, p[:])
}

func appendGoAway(b []byte, last uint32, code http2.ErrCode) []byte {
	var p [8]byte
	binary.BigEndian.PutUint32(p[:4], last)
	binary.BigEndian.PutUint32(p[4:], uint32(code))
	return appendFrame(b, frGoAway, 0, 0, p[:])
}

// queue adds control frames for the control goroutine. Caller holds mu.
func (m *mux) queueLocked(f []byte) {
	if m.closed {
		return
	}
	m.ctrl = append(m.ctrl, f...)
	select {
	case m.ctrlWake <- struct{}{}:
	default:
	}
}

// writeLocked writes b, first sending the pending DATA frames and any
// queued control frames, in one TLS record when they fit. Caller holds
// wmu.
func (m *mux) writeLocked(b ...[]byte) error {
	if m.werr != nil {
		return m.werr
	}
	m.mu.Lock()
	ctrl := m.ctrl
	m.ctrl = nil
	m.mu.Unlock()
	if len(m.pend) == 0 && len(ctrl) == 0 && len(b) == 1 {
		if _, err := m.c.Write(b[0]); err != nil {
			return m.writeFailed(err)
		}
		return nil
	}
	// The pending frames first: they were written before b; control
	// frames (an RST_STREAM after a stream's last DATA) after them.
	out := m.pend
	if len(ctrl) > 0 {
		out = append(out, ctrl...)
	}
	i := 0
	for ; i < len(b) && len(out)+len(b[i]) <= coalesceMax; i++ {
		out = append(out, b[i]...)
	}
	if len(out) > 0 {
		_, err := m.c.Write(out)
		m.pend = out[:0]
		if cap(m.pend) > 4*coalesceMax {
			m.pend = nil
		}
		if err != nil {
			return m.writeFailed(err)
		}
	}
	for _, p := range b[i:] {
		if len(p) == 0 {
			continue
		}
		if _, err := m.c.Write(p); err != nil {
			return m.writeFailed(err)
		}
	}
	return nil
}

// coalesceMax is the most a write gathers from several frames: one TLS
// record's payload.
const coalesceMax = 16 << 10

// writeData sends a DATA frame of stream id without flags (a payload of
// at most inlineCopy bytes, copied behind its header), gathering it with
// the frames other streams write at about the same time into one TLS
// record and one system call.
//
// A frame that does not fit the pending buffer (coalesceMax) is sent at
// once, after what is pending. Otherwise it is copied to that buffer. If no writer has yet
// promised to send that buffer, this one does: it yields the processor
// once, so that the goroutines ready to run (under load, the other
// streams' handlers woken by the same read) add their frames, then sends
// them all. Other writers return as soon as their frame is pending, like
// a write into a socket buffer; a failure to send it fails the connection
// and every later write. With nothing else ready to run, the yield
// returns at once.
func (m *mux) writeData(id uint32, payload []byte) error {
	m.wmu.Lock()
	if m.werr != nil {
		err := m.werr
		m.wmu.Unlock()
		return err
	}
	if !m.coalesce || len(m.pend)+frameHeaderLen+len(payload) > coalesceMax {
		m.wbuf = appendFrame(m.wbuf[:0], frData, 0, id, payload)
		err := m.writeLocked(m.wbuf)
		m.wmu.Unlock()
		return err
	}
	m.pend = appendFrame(m.pend, frData, 0, id, payload)
	if m.flushing {
		m.wmu.Unlock()
		return nil
	}
	m.flushing = true
	m.wmu.Unlock()
	runtime.Gosched()
	m.wmu.Lock()
	m.flushing = false
	err := m.writeLocked()
	m.wmu.Unlock()
	return err
}

func (m *mux) writeFailed(err error) error {
	m.werr = fmt.Errorf("write to tunnel connection: %w", err)
	go m.closeWith(m.werr)
	return m.werr
}

// controlLoop sends queued control frames and keepalive PINGs: a PING
// after pingInterval without a frame from the peer, and the connection
// closed when nothing arrives for pingTimeout after that.
func (m *mux) controlLoop() {
	t := time.NewTimer(m.local.pingInterval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-m.ctrlWake:
			m.wmu.Lock()
			err := m.writeLocked()
			m.wmu.Unlock()
			if err != nil {
				return
			}
		case now := <-t.C:
			last := time.Unix(0, m.lastRead.Load())
			m.mu.Lock()
			pinged := m.pingSent
			switch {
			case !pinged.IsZero() && pinged.After(last) && now.Sub(pinged) >= m.local.pingTimeout:
				m.mu.Unlock()
				m.closeWith(fmt.Errorf("no frame from the peer for %s after a PING: %w", m.local.pingTimeout, os.ErrDeadlineExceeded))
				return
			case now.Sub(last) >= m.local.pingInterval && (pinged.IsZero() || !pinged.After(last)):
				m.pingSent = now
				var p [8]byte
				binary.BigEndian.PutUint64(p[:], uint64(now.UnixNano()))
				m.queueLocked(appendFrame(nil, frPing, 0, 0, p[:]))
			}
			next := m.local.pingInterval
			if !m.pingSent.IsZero() && m.pingSent.After(last) {
				next = min(next, m.local.pingTimeout-now.Sub(m.pingSent))
			} else {
				next -= now.Sub(last)
			}
			m.mu.Unlock()
			t.Reset(max(next, 10*time.Millisecond))
		}
	}
}

// closeWith tears the connection down: every stream fails with err.
func (m *mux) closeWith(err error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	m.closeErr = err
	streams := m.streams
	m.streams = map[uint32]*h2stream{}
	close(m.done)
	for _, s := range streams {
		s.failLocked(err)
	}
	m.wakeIdleLocked()
	m.sendCond.Broadcast()
	m.mu.Unlock()
	_ = m.c.Close()
}

// goAway sends GOAWAY with code and, for an error, closes the connection.
func (m *mux) goAway(code http2.ErrCode, reason string) {
	m.mu.Lock()
	last := m.lastPeerID
	m.goAwaySent = true
	m.mu.Unlock()
	if code != http2.ErrCodeNo {
		// The connection ends anyway: do not wait long on a peer that
		// stopped reading.
		_ = m.c.SetWriteDeadline(time.Now().Add(time.Second))
	}
	m.wmu.Lock()
	_ = m.writeLocked(appendGoAway(nil, last, code))
	m.wmu.Unlock()
	if code != http2.ErrCodeNo {
		m.closeWith(&connError{code, reason})
	}
}

// close ends the connection gracefully: GOAWAY NO_ERROR, then the TLS
// close_notify (our write side ends), and the socket is closed once the
// peer closes its side or after a second. Closing the socket at once could
// make the kernel answer the peer's in-flight frames with a TCP RST that
// destroys the last bytes we sent before the peer read them.
func (m *mux) close() error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil
	}
	// Best effort: the writes may block on a dead peer, so bound them.
	_ = m.c.SetWriteDeadline(time.Now().Add(time.Second))
	m.goAway(http2.ErrCodeNo, "")
	m.wmu.Lock()
	if m.werr == nil {
		m.werr = fmt.Errorf("write to tunnel connection: %w", net.ErrClosed)
		if cw, ok := m.c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	m.wmu.Unlock()
	go func() {
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-m.done:
		case <-t.C:
		}
		m.closeWith(net.ErrClosed)
	}()
	return nil
}

// active is the number of open streams plus reserved slots.
func (m *mux) active() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.streams) + m.reserved
}

func (m *mux) wakeIdleLocked() {
	if len(m.streams) == 0 || m.closed {
		for _, c := range m.idleWaiters {
			close(c)
		}
		m.idleWaiters = nil
	}
}

// idle returns a channel closed once no stream is open (or the connection closed).
func (m *mux) idle() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := make(chan struct{})
	if len(m.streams) == 0 || m.closed {
		close(c)
		return c
	}
	m.idleWaiters = append(m.idleWaiters, c)
	return c
}

// readLoop parses the peer's frames until the connection ends.
func (m *mux) readLoop() {
	var hdr [frameHeaderLen]byte
	// A header block being assembled from HEADERS + CONTINUATION.
	var block []byte
	var blockID uint32
	var blockEnd bool
	maxIn := m.local.maxFrame
	fail := func(err error) {
		var ce *connError
		if errors.As(err, &ce) {
			m.log.Debug("http2 connection error", zap.Stringer("peer", m.c.RemoteAddr()), zap.Error(err))
			m.goAway(ce.Code, ce.Reason)
			return
		}
		m.closeWith(err)
	}
	for {
		if _, err := io.ReadFull(m.br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = fmt.Errorf("tunnel connection closed by peer: %w", io.ErrUnexpectedEOF)
			}
			fail(err)
			return
		}
		m.lastRead.Store(time.Now().UnixNano())
		n := uint32(hdr[0])<<16 | uint32(hdr[1])<<8 | uint32(hdr[2])
		typ, flags := hdr[3], hdr[4]
		id := binary.BigEndian.Uint32(hdr[5:]) & (1<<31 - 1)
		if n > maxIn {
			fail(&connError{http2.ErrCodeFrameSize, fmt.Sprintf("frame of %d bytes exceeds SETTINGS_MAX_FRAME_SIZE %d", n, maxIn)})
			return
		}
		if block != nil && typ != frContinuation {
			fail(&connError{http2.ErrCodeProtocol, "expected CONTINUATION"})
			return
		}
		if typ == frData {
			if err := m.readData(id, flags, int(n)); err != nil {
				fail(err)
				return
			}
			continue
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(m.br, payload); err != nil {
			fail(err)
			return
		}
		var err error
		switch typ {
		case frHeaders:
			if id == 0 {
				err = &connError{http2.ErrCodeProtocol, "HEADERS on stream 0"}
				break
			}
			p := payload
			if flags&flPadded != 0 {
				if len(p) < 1 || int(p[0]) >= len(p) {
					err = &connError{http2.ErrCodeProtocol, "bad HEADERS padding"}
					break
				}
				p = p[1 : len(p)-int(p[0])]
			}
			if flags&flPriority != 0 {
				if len(p) < 5 {
					err = &connError{http2.ErrCodeProtocol, "short HEADERS priority"}
					break
				}
				p = p[5:]
			}
			blockID, blockEnd = id, flags&flEndStream != 0
			block = append(make([]byte, 0, len(p)), p...)
			if flags&flEndHeaders != 0 {
				err = m.onHeaders(blockID, block, blockEnd)
				block = nil
			}
		case frContinuation:
			if block == nil || id != blockID {
				err = &connError{http2.ErrCodeProtocol, "unexpected CONTINUATION"}
				break
			}
			if len(block)+len(payload) > maxHeaderBlock {
				err = &connError{http2.ErrCodeProtocol, fmt.Sprintf("header block over %d bytes", maxHeaderBlock)}
				break
			}
			block = append(block, payload...)
			if flags&flEndHeaders != 0 {
				err = m.onHeaders(blockID, block, blockEnd)
				block = nil
			}
		case frPriority:
		case frRSTStream:
			if len(payload) != 4 || id == 0 {
				err = &connError{http2.ErrCodeProtocol, "bad RST_STREAM"}
				break
			}
			m.onReset(id, http2.ErrCode(binary.BigEndian.Uint32(payload)))
		case frSettings:
			err = m.onSettings(flags, id, payload)
		case frPushPromise:
			err = &connError{http2.ErrCodeProtocol, "PUSH_PROMISE is disabled"}
		case frPing:
			if len(payload) != 8 || id != 0 {
				err = &connError{http2.ErrCodeProtocol, "bad PING"}
				break
			}
			if flags&flAck == 0 {
				m.mu.Lock()
				m.queueLocked(appendFrame(nil, frPing, flAck, 0, payload))
				m.mu.Unlock()
			}
		case frGoAway:
			if len(payload) < 8 || id != 0 {
				err = &connError{http2.ErrCodeProtocol, "bad GOAWAY"}
				break
			}
			m.onGoAway(binary.BigEndian.Uint32(payload)&(1<<31-1), http2.ErrCode(binary.BigEndian.Uint32(payload[4:])))
		case frWindowUpdate:
			if len(payload) != 4 {
				err = &connError{http2.ErrCodeFrameSize, "bad WINDOW_UPDATE"}
				break
			}
			err = m.onWindowUpdate(id, binary.BigEndian.Uint32(payload)&(1<<31-1))
		}
		if err != nil {
			fail(err)
			return
		}
	}
}

// readData reads one DATA frame's payload into a pooled chunk and queues
// it on its stream.
func (m *mux) readData(id uint32, flags byte, n int) error {
	if id == 0 {
		return &connError{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	var ch *chunk
	var pad int
	if flags&flPadded != 0 {
		if n < 1 {
			return &connError{http2.ErrCodeProtocol, "bad DATA padding"}
		}
		p, err := m.br.ReadByte()
		if err != nil {
			return err
		}
		pad = int(p)
		if pad >= n {
			return &connError{http2.ErrCodeProtocol, "bad DATA padding"}
		}
	}
	data := n - pad
	if flags&flPadded != 0 {
		data--
	}
	if data > 0 {
		ch = getChunk(data)
		if _, err := io.ReadFull(m.br, ch.b); err != nil {
			ch.free()
			return err
		}
	}
	if pad > 0 {
		if _, err := m.br.Discard(pad); err != nil {
			ch.free()
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.connRecv -= int64(n)
	if m.connRecv < 0 {
		ch.free()
		return &connError{http2.ErrCodeFlowControl, "peer overran the connection window"}
	}
	s := m.streams[id]
	if s == nil || s.recvEnd || s.reset != nil {
		// A stream we already ended: return its bytes to the connection
		// window and tell the peer the stream is gone.
		ch.free()
		m.returnConnLocked(int64(n))
		if s == nil && !m.knownClosedLocked(id) {
			return &connError{http2.ErrCodeProtocol, fmt.Sprintf("DATA on idle stream %d", id)}
		}
		if s != nil && s.recvEnd && s.reset == nil {
			m.queueLocked(appendRST(nil, id, http2.ErrCodeStreamClosed))
		}
		return nil
	}
	s.recvWin -= int64(n)
	if s.recvWin < 0 {
		ch.free()
		s.resetLocked(http2.ErrCodeFlowControl)
		m.returnConnLocked(int64(n))
		return nil
	}
	// Padding counts against the windows but is never read: return it now.
	if extra := n - data; extra > 0 {
		s.consumedLocked(extra)
	}
	// Only a quiet stream's payload is written from here: a small one with
	// nothing more read behind it. On a busy stream the reader goes on
	// decrypting the next frames while WriteTo writes, side by side.
	if ch != nil && len(ch.b) <= directMax && m.br.Buffered() == 0 {
		if ch = s.writeDirectLocked(ch); ch != nil && s.reset != nil {
			// Reset while the lock was released: the buffer is gone.
			m.returnConnLocked(int64(len(ch.b) - ch.off))
			ch.free()
			return nil
		}
	}
	if ch == nil && flags&flEndStream == 0 {
		return nil // all written: nothing for a reader to wake for
	}
	if ch != nil {
		s.chunks = append(s.chunks, ch)
		s.buffered += len(ch.b) - ch.off
	}
	if flags&flEndStream != 0 {
		s.recvEnd = true
	}
	s.rcond.Broadcast()
	return nil
}

// knownClosedLocked: id is a stream that existed (and ended) rather than
// one the peer never opened.
func (m *mux) knownClosedLocked(id uint32) bool {
	if (id%2 == 1) == m.server {
		return id <= m.lastPeerID
	}
	return id < m.nextID
}

// returnConnLocked gives n received bytes back to the connection window,
// in batches.
func (m *mux) returnConnLocked(n int64) {
	m.connUnacked += n
	if m.connUnacked >= int64(m.local.connWindow)/4 {
		m.connRecv += m.connUnacked
		m.queueLocked(appendWindowUpdate(nil, 0, uint32(m.connUnacked)))
		m.connUnacked = 0
	}
}

func (m *mux) onSettings(flags byte, id uint32, p []byte) error {
	if id != 0 || len(p)%6 != 0 {
		return &connError{http2.ErrCodeProtocol, "bad SETTINGS"}
	}
	if flags&flAck != 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for ; len(p) > 0; p = p[6:] {
		v := binary.BigEndian.Uint32(p[2:])
		switch http2.SettingID(binary.BigEndian.Uint16(p)) {
		case http2.SettingMaxHeaderListSize:
			m.peerHeaderList = v
		case http2.SettingMaxConcurrentStreams:
			m.peerMaxStr = v
		case http2.SettingInitialWindowSize:
			if v > 1<<31-1 {
				return &connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE too large"}
			}
			delta := int64(v) - m.peerWindow
			m.peerWindow = int64(v)
			for _, s := range m.streams {
				s.sendWin += delta
			}
			m.sendCond.Broadcast()
		case http2.SettingMaxFrameSize:
			if v < 16<<10 || v > 1<<24-1 {
				return &connError{http2.ErrCodeProtocol, "bad SETTINGS_MAX_FRAME_SIZE"}
			}
			m.peerFrame = v
		case http2.SettingEnablePush:
			if v > 1 {
				return &connError{http2.ErrCodeProtocol, "bad SETTINGS_ENABLE_PUSH"}
			}
		}
	}
	m.queueLocked(appendFrame(nil, frSettings, flAck, 0, nil))
	return nil
}

func (m *mux) onWindowUpdate(id, inc uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id == 0 {
		if inc == 0 {
			return &connError{http2.ErrCodeProtocol, "WINDOW_UPDATE of 0 on the connection"}
		}
		m.connSend += int64(inc)
		if m.connSend > 1<<31-1 {
			return &connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		m.sendCond.Broadcast()
		return nil
	}
	s := m.streams[id]
	if s == nil {
		return nil
	}
	if inc == 0 {
		s.resetLocked(http2.ErrCodeProtocol)
		return nil
	}
	s.sendWin += int64(inc)
	if s.sendWin > 1<<31-1 {
		s.resetLocked(http2.ErrCodeFlowControl)
		return nil
	}
	m.sendCond.Broadcast()
	return nil
}

func (m *mux) onReset(id uint32, code http2.ErrCode) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.streams[id]; s != nil {
		// Buffered bytes stay readable; reads end with the reset after them
		// (cleanly when the peer had finished sending: RST_STREAM NO_ERROR
		// after END_STREAM only asks us to stop sending).
		s.reset = &StreamError{Code: code, Remote: true}
		s.removeLocked()
		s.rcond.Broadcast()
		m.sendCond.Broadcast()
	}
}

func (m *mux) onGoAway(last uint32, code http2.ErrCode) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.goneAway = true
	m.lastOK = last
	for id, s := range m.streams {
		if id > last && (id%2 == 1) != m.server {
			s.failLocked(fmt.Errorf("%w (GOAWAY %v, last stream %d)", errGoAway, code, last))
		}
	}
	if code != http2.ErrCodeNo {
		m.log.Debug("GOAWAY from peer", zap.Stringer("peer", m.c.RemoteAddr()), zap.Stringer("code", code))
	}
	m.wakeIdleLocked()
}

// onHeaders decodes one complete header block and dispatches it.
func (m *mux) onHeaders(id uint32, block []byte, end bool) error {
	h := &muxHeaders{header: http.Header{}, endStream: end}
	size := 0
	m.hdec.SetEmitFunc(func(f hpack.HeaderField) {
		size += len(f.Name) + len(f.Value) + 32
		if size > int(m.local.headerList) {
			h.tooLarge = true
			return
		}
		if strings.HasPrefix(f.Name, ":") {
			switch f.Name {
			case ":method":
				h.method = f.Value
			case ":authority":
				h.authority = f.Value
			case ":scheme":
				h.scheme = f.Value
			case ":path":
				h.path = f.Value
			case ":protocol":
				h.protocol = f.Value
			case ":status":
				h.status = f.Value
			}
			return
		}
		k := http.CanonicalHeaderKey(f.Name)
		h.header[k] = append(h.header[k], f.Value)
	})
	// A decoding error (including one string over the limit) leaves the
	// HPACK state out of step with the peer's: the connection must end.
	if _, err := m.hdec.Write(block); err != nil {
		return &connError{http2.ErrCodeCompression, "bad header block: " + err.Error()}
	}
	if err := m.hdec.Close(); err != nil {
		return &connError{http2.ErrCodeCompression, "bad header block: " + err.Error()}
	}

	m.mu.Lock()
	if s := m.streams[id]; s != nil {
		// Response headers (client), or trailers.
		if h.endStream {
			s.recvEnd = true
			s.rcond.Broadcast()
		}
		if !s.gotHeaders {
			s.gotHeaders = true
			if !m.server && len(h.status) == 3 && h.status[0] == '1' {
				s.gotHeaders = false // informational; the real answer follows
			} else {
				s.resp = h
				close(s.respReady)
			}
		}
		m.mu.Unlock()
		return nil
	}
	if !m.server {
		known := m.knownClosedLocked(id)
		m.mu.Unlock()
		if known {
			return nil
		}
		return &connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on idle stream %d", id)}
	}
	if id%2 == 0 || id <= m.lastPeerID {
		m.mu.Unlock()
		return &connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on stream %d after %d", id, m.lastPeerID)}
	}
	m.lastPeerID = id
	if m.goAwaySent || m.closed || uint32(len(m.streams)) >= m.local.maxStreams {
		m.queueLocked(appendRST(nil, id, http2.ErrCodeRefusedStream))
		m.mu.Unlock()
		return nil
	}
	s := m.newStreamLocked(id)
	if h.endStream {
		s.recvEnd = true
	}
	m.handlers.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.handlers.Done()
		m.onStream(s, h)
	}()
	return nil
}
