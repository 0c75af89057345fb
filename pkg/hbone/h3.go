package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
)

// HTTP/3 error codes used to reset streams.
const (
	h3NoError        = quic.StreamErrorCode(http3.ErrCodeNoError)
	h3RequestCancel  = quic.StreamErrorCode(http3.ErrCodeRequestCanceled)
	h3ConnectError   = quic.StreamErrorCode(http3.ErrCodeConnectError)
	h3AppErrNoError  = quic.ApplicationErrorCode(http3.ErrCodeNoError)
	quicIdleTimeout  = PingInterval + PingTimeout
	quicInitialSWind = 512 << 10
)

// quicConfig mirrors the HTTP/2 settings: 4 MiB stream and 16 MiB
// connection windows (auto-tuned up from 512 KiB), keepalive every 10 s.
func quicConfig(incoming int64) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           DefaultHandshake,
		MaxIdleTimeout:                 quicIdleTimeout,
		KeepAlivePeriod:                PingInterval,
		InitialStreamReceiveWindow:     quicInitialSWind,
		MaxStreamReceiveWindow:         StreamWindow,
		InitialConnectionReceiveWindow: 2 * quicInitialSWind,
		MaxConnectionReceiveWindow:     ConnectionWindow,
		MaxIncomingStreams:             incoming,
		MaxIncomingUniStreams:          8,
	}
}

// ServeH3 accepts HBONE over HTTP/3 on pc (a UDP socket) until ctx ends,
// then sends GOAWAY, waits up to DrainTimeout for open streams and closes
// the rest. CONNECT semantics, hooks and statuses are those of Serve; both
// directions half-close (FIN).
func (s *Server) ServeH3(ctx context.Context, pc net.PacketConn) error {
	force, cancelForce := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelForce()
	var streams sync.WaitGroup
	h3 := &http3.Server{
		TLSConfig:      ServerTLSConfig(s.cfg.SVID, s.cfg.Bundle, s.td, ALPNH3),
		QUICConfig:     quicConfig(MaxConcurrentIn),
		MaxHeaderBytes: ServerHeaderLimit,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			streams.Add(1)
			defer streams.Done()
			s.handleH3(w, r, force)
		}),
	}
	served := make(chan error, 1)
	go func() { served <- h3.Serve(pc) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		served <- err
	}
	s.log.Info("draining", zap.String("protocol", "h3"))
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	if serr := h3.Shutdown(dctx); serr != nil {
		s.log.Warn("drain deadline passed, closing connections", zap.String("protocol", "h3"), zap.Error(serr))
	}
	cancelForce()
	_ = h3.Close()
	streams.Wait()
	if serr := <-served; err == nil && serr != nil && !errors.Is(serr, http.ErrServerClosed) && !errors.Is(serr, quic.ErrServerClosed) {
		err = serr
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) {
		return &Error{Op: "serve h3", Peer: pc.LocalAddr().String(), Err: err}
	}
	return nil
}

func (s *Server) handleH3(w http.ResponseWriter, r *http.Request, force context.Context) {
	in, err := parseInbound(r.Method, r.Host, r.Header, r.TLS)
	if err != nil {
		w.WriteHeader(s.rejected(err, in))
		return
	}
	in.Protocol = H3
	in.LocalAddr, _ = r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	in.RemoteAddr, _ = r.Context().Value(http3.RemoteAddrContextKey).(net.Addr)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopForce := context.AfterFunc(force, cancel)
	defer stopForce()
	if err := s.authorize(ctx, in); err != nil {
		w.WriteHeader(s.rejected(err, in))
		return
	}
	up, err := s.dialUpstream(ctx, in)
	if err != nil {
		w.WriteHeader(s.rejected(err, in))
		return
	}
	defer up.Close()
	for k, v := range in.ResponseHeader {
		w.Header()[k] = v
	}
	w.WriteHeader(http.StatusOK)
	str, err := w.(http3.HTTPStreamer).HTTPStream()
	if err != nil {
		s.log.Debug("http3 stream takeover failed", zap.String("target", in.Target), zap.Error(err))
		return
	}
	// Not ctx: the request context ends as soon as our write side closes
	// (FIN), which must not reset the other direction. Only a forced
	// shutdown aborts an established stream.
	stop := context.AfterFunc(force, func() {
		str.CancelRead(h3ConnectError)
		str.CancelWrite(h3ConnectError)
		_ = up.Close()
	})
	defer stop()
	done := make(chan error, 1)
	go func() {
		_, err := copyHalf(up, str, nil, closeWriter(up))
		if err != nil {
			// Stream reset or connection lost: end the other direction too.
			_ = up.Close()
		}
		done <- err
	}()
	_, werr := copyHalf(str, up, nil, str.Close)
	if werr != nil && !isClosedErr(werr) {
		str.CancelWrite(h3ConnectError)
		str.CancelRead(h3ConnectError)
		_ = up.Close()
	}
	rerr := <-done
	if rerr != nil && !isClosedErr(rerr) {
		str.CancelWrite(h3ConnectError)
	}
	// Both directions are done: stop reading in case the peer keeps sending.
	str.CancelRead(h3NoError)
}

// h3Conn is a pooled QUIC connection. active counts the streams we opened
// and not yet closed; lastUsed (unix nanos) is for idle release.
type h3Conn struct {
	qc       *quic.Conn
	cc       *http3.ClientConn
	pc       net.PacketConn
	peer     spiffeid.ID
	created  time.Time
	active   atomic.Int64
	lastUsed atomic.Int64
	broken   atomic.Bool
}

func (c *Client) dialH3(ctx context.Context, req *Request) (muxConn, error) {
	lc := net.ListenConfig{Control: c.cfg.Control}
	laddr := ":0"
	if req.SourceIP.IsValid() {
		laddr = net.JoinHostPort(req.SourceIP.String(), "0")
	}
	pc, err := lc.ListenPacket(ctx, "udp", laddr)
	if err != nil {
		return nil, &Error{Op: "listen udp", Peer: laddr, Err: err}
	}
	tlsC := ClientTLSConfig(req.Source, c.cfg.Bundle, req.Destinations, ALPNH3)
	qc, err := quic.Dial(ctx, pc, net.UDPAddrFromAddrPort(req.Address), tlsC, quicConfig(0))
	if err != nil {
		_ = pc.Close()
		return nil, dialError("dial quic", req, err)
	}
	st := qc.ConnectionState().TLS
	if st.NegotiatedProtocol != ALPNH3 {
		_ = qc.CloseWithError(h3AppErrNoError, "alpn")
		_ = pc.Close()
		return nil, &Error{Op: "dial quic", Peer: req.Address.String(), Err: fmt.Errorf("%w: negotiated ALPN %q, want h3", ErrProtocol, st.NegotiatedProtocol)}
	}
	peer, _ := x509svid.IDFromCert(st.PeerCertificates[0])
	h := &h3Conn{qc: qc, cc: (&http3.Transport{MaxResponseHeaderBytes: ClientHeaderLimit}).NewClientConn(qc), pc: pc, peer: peer, created: time.Now()}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-qc.Context().Done():
		case <-c.life.Done():
			_ = qc.CloseWithError(h3AppErrNoError, "client closed")
		}
		_ = pc.Close()
	}()
	return h, nil
}

func (h *h3Conn) usable() bool { return !h.broken.Load() && h.qc.Context().Err() == nil }

func (h *h3Conn) reserve(max int) bool {
	if !h.usable() {
		return false
	}
	for {
		n := h.active.Load()
		if n >= int64(max) {
			return false
		}
		if h.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (h *h3Conn) streams() int { return int(h.active.Load()) }

func (h *h3Conn) idleSince() (time.Time, bool) {
	if h.active.Load() > 0 {
		return time.Time{}, false
	}
	if u := h.lastUsed.Load(); u != 0 {
		return time.Unix(0, u), true
	}
	return h.created, true
}

func (h *h3Conn) close() error {
	return h.qc.CloseWithError(h3AppErrNoError, "")
}

func (h *h3Conn) release() {
	h.lastUsed.Store(time.Now().UnixNano())
	h.active.Add(-1)
}

func (h *h3Conn) open(ctx, life context.Context, req *Request) (*Conn, error) {
	h.lastUsed.Store(time.Now().UnixNano())
	str, err := h.cc.OpenRequestStream(ctx)
	if err != nil {
		h.broken.Store(true)
		h.release()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: err}
	}
	abort := func() {
		str.CancelRead(h3RequestCancel)
		str.CancelWrite(h3RequestCancel)
	}
	stop := context.AfterFunc(ctx, abort)
	hdr := make(http.Header, 3)
	if req.Forwarded != "" {
		hdr["Forwarded"] = []string{req.Forwarded}
	}
	if req.Baggage != "" {
		hdr["Baggage"] = []string{req.Baggage}
	}
	if req.Traceparent != "" {
		hdr["Traceparent"] = []string{req.Traceparent}
	}
	hreq := &http.Request{Method: http.MethodConnect, URL: &url.URL{Host: req.Authority}, Host: req.Authority, Header: hdr} // Proto empty: a set Proto means extended CONNECT (:protocol)
	err = str.SendRequestHeader(hreq)
	var resp *http.Response
	if err == nil {
		resp, err = str.ReadResponse()
	}
	if !stop() {
		abort()
		h.release()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: ctx.Err()}
	}
	if err != nil {
		abort()
		h.release()
		return nil, &Error{Op: "connect", Peer: req.Address.String(), Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		abort()
		h.release()
		return nil, statusError(resp.StatusCode, req)
	}
	var once sync.Once
	done := func() { once.Do(h.release) }
	stopLife := context.AfterFunc(life, abort)
	return &Conn{
		r:          str,
		w:          str,
		closeWrite: str.Close,
		abort: func(error) {
			stopLife()
			abort()
		},
		graceful: func() {
			stopLife()
			_ = str.Close() // FIN after buffered data; QUIC keeps sending it
			str.CancelRead(h3NoError)
		},
		done:   done,
		setRD:  str.SetReadDeadline,
		setWD:  str.SetWriteDeadline,
		PeerID: h.peer,
		Header: resp.Header,
		local:  h.qc.LocalAddr(),
		remote: h.qc.RemoteAddr(),
	}, nil
}

var _ io.ReadWriter = (*http3.RequestStream)(nil)
