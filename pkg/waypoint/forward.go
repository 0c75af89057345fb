package waypoint

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// forward proxies one request that asks for no protocol upgrade (every
// request but WebSocket and the like, which keep httputil.ReverseProxy)
// through the retrying transport and writes the answer to rec.
//
// It takes the reverse proxy's steps, in its order and with its rules (a
// test holds the two to the same requests and answers), without what our
// use of it never needs and pays for on every request: a deep clone of
// the request, a ProxyRequest, header deletions one name at a time, a
// flush-interval decision by MIME parsing. Outbound: the hop-by-hop
// headers (RFC 9110 §7.6.1, and those the Connection header lists)
// dropped, "TE: trailers" kept, the client's forwarding headers kept as
// they came, unparsable query parameters dropped, no Go User-Agent.
// Inbound: hop-by-hop headers dropped, 1xx answers relayed, trailers
// relayed (announced ones as such, others with http.TrailerPrefix), a
// body of unknown length or an event stream flushed write by write. A
// body that fails midway aborts the response (http.ErrAbortHandler), so
// the client sees it cut rather than complete.
func (p *Proxy) forward(rec *recorder, r *http.Request, x *exchange) {
	c := &x.call
	// The outbound request: a copy of r in x (no allocation; same
	// context). The 1xx relay (x itself) goes to the transport through
	// the call, not a client-trace context (three allocations per
	// request); only a net/http Transport's try builds that trace.
	c.relay = x
	x.out = *r
	out := &x.out
	x.url = *r.URL
	out.URL = &x.url
	if r.ContentLength == 0 {
		out.Body = nil // as the reverse proxy: nil, so the transport may retry
	}
	if out.Body != nil && c.body == nil {
		// The transport closes what it sends; the server owns r.Body
		// (a buffered one is the call's, and Close does nothing to it).
		out.Body = &noClose{Reader: out.Body}
	}
	toOutbound(out.Header)
	out.Close = false
	out.URL.Scheme = "http"
	out.URL.RawQuery = cleanQuery(out.URL.RawQuery)

	res, err := p.roundTrip(out, c)
	x.mu1xx.Lock()
	x.done1xx = true
	x.mu1xx.Unlock()
	if err != nil {
		p.callError(rec, out, c, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		_ = res.Body.Close()
		p.callError(rec, out, c, fmt.Errorf("backend tried to switch protocol %q when %q was requested", upgradeType(res.Header), ""))
		return
	}
	dropHopByHop(res.Header)
	h := rec.Header()
	if len(h) == 0 && rec.adoptHeader(res.Header) {
		h = res.Header // the answer's header is the client's now: no copy
	} else {
		for k, vv := range res.Header {
			if len(vv) == 0 {
				continue
			}
			if have, ok := h[k]; ok {
				h[k] = append(have, vv...)
			} else {
				h[k] = vv
			}
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	flushEach := res.ContentLength == -1 || eventStream(res.Header)
	rec.WriteHeader(res.StatusCode)

	buf := copyBufferPool.Get().(*[]byte) // the pointer back, too: Put(&b) would allocate
	copyErr := p.copyBody(rec, res.Body, *buf, flushEach)
	copyBufferPool.Put(buf)
	if copyErr != nil {
		_ = res.Body.Close()
		panic(http.ErrAbortHandler)
	}
	_ = res.Body.Close() // now, so that res.Trailer is filled in
	if len(res.Trailer) > 0 {
		rec.Flush() // chunked, so the trailers can follow
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			for _, v := range vv {
				h.Add(k, v)
			}
		}
		return
	}
	for k, vv := range res.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

// relay1xx passes the endpoint's informational (1xx) answers on to the
// client: forward's exchange. An interface rather than a func, so that
// handing the exchange to the transport allocates nothing.
type relay1xx interface {
	got1xx(code int, header textproto.MIMEHeader) error
}

// got1xx relays an informational answer of the endpoint, until the round
// trip returned.
func (x *exchange) got1xx(code int, header textproto.MIMEHeader) error {
	x.mu1xx.Lock()
	defer x.mu1xx.Unlock()
	if x.done1xx {
		return nil
	}
	h := x.rec.Header()
	for k, vv := range header {
		for _, v := range vv {
			h.Add(k, v)
		}
	}
	x.rec.WriteHeader(code)
	clear(h) // a 1xx's headers are not the final answer's
	return nil
}

// copyBody copies the answer's body to the client; an error ends it.
func (p *Proxy) copyBody(rec *recorder, body io.Reader, buf []byte, flushEach bool) error {
	for {
		n, rerr := body.Read(buf)
		if rerr != nil && rerr != io.EOF && rerr != context.Canceled {
			p.log.Info("reading the endpoint's body failed", zap.Error(rerr))
		}
		if n > 0 {
			w, werr := rec.Write(buf[:n])
			if werr != nil {
				return werr
			}
			if w != n {
				return io.ErrShortWrite
			}
			if flushEach {
				rec.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// noClose keeps the transport from closing the server's request body.
type noClose struct{ io.Reader }

func (noClose) Close() error { return nil }

// hopByHop are the headers of one connection, never forwarded.
var hopByHop = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// connectionListed appends the canonical names the Connection header
// lists.
func connectionListed(dst []string, h http.Header) []string {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				dst = append(dst, textproto.CanonicalMIMEHeaderKey(name))
			}
		}
	}
	return dst
}

// toOutbound turns the request's header into the one sent to the
// endpoint, in place (the request is ours: our parser's, or net/http's
// server's, and nothing reads its header after forward but the answer's
// own code): the hop-by-hop headers dropped, "TE: trailers" kept, and an
// empty User-Agent added when there is none (so no Go default is sent).
// Copying it cost three allocations per request.
func toOutbound(h http.Header) {
	teTrailers := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	dropHopByHop(h)
	if teTrailers {
		h["Te"] = []string{"trailers"}
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""}
	}
}

// dropHopByHop removes the hop-by-hop headers from h.
func dropHopByHop(h http.Header) {
	if _, ok := h["Connection"]; ok {
		var listedBuf [4]string
		for _, k := range connectionListed(listedBuf[:0], h) {
			delete(h, k)
		}
	}
	if len(h) <= len(hopByHop) {
		// Fewer names than hop-by-hop ones: a look at each name costs
		// less than a hashed delete of each hop-by-hop name.
		for k := range h {
			if isHopByHop(k) {
				delete(h, k)
			}
		}
		return
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// isHopByHop tells whether k is one of hopByHop.
func isHopByHop(k string) bool {
	for _, h := range hopByHop {
		if h == k {
			return true
		}
	}
	return false
}

// upgradeType is the protocol a request or answer asks to switch to, or
// "": its Upgrade header, when its Connection header lists "upgrade".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// cleanQuery drops the query parameters Go cannot parse (a ';', a bad
// escape) by re-encoding the query, as the reverse proxy does, so that
// what the endpoint sees is what the routing matched.
func cleanQuery(q string) string {
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			v, _ := url.ParseQuery(q)
			return v.Encode()
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				v, _ := url.ParseQuery(q)
				return v.Encode()
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// exchange1xx is the state got1xx shares with forward.
type exchange1xx struct {
	mu1xx   sync.Mutex
	done1xx bool
}
