package waypoint

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
)

// propagateTrace keeps W3C trace context across the waypoint hop: a valid
// traceparent gets a new parent (span) id, as one span per waypoint hop
// would; a missing or invalid one is replaced by a new, unsampled trace.
// tracestate passes through unchanged. It returns the trace id.
func propagateTrace(h http.Header) string {
	tp := h.Get("Traceparent")
	var traceID, flags string
	if validTraceparent(tp) {
		traceID, flags = tp[3:35], tp[53:55]
	} else {
		var b [16]byte
		putRandom(b[:])
		traceID, flags = hex.EncodeToString(b[:]), "00"
		h.Del("Tracestate") // it belonged to the invalid parent
	}
	var span [8]byte
	putRandom(span[:])
	h.Set("Traceparent", "00-"+traceID+"-"+hex.EncodeToString(span[:])+"-"+flags)
	return traceID
}

// validTraceparent checks version 00's shape: 00-<32 hex>-<16 hex>-<2 hex>,
// with non-zero ids.
func validTraceparent(tp string) bool {
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	return isLowerHex(tp[3:35]) && isLowerHex(tp[36:52]) && isLowerHex(tp[53:55]) &&
		tp[3:35] != "00000000000000000000000000000000" && tp[36:52] != "0000000000000000"
}

func isLowerHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ensureRequestID keeps the client's x-request-id or sets a new UUID v4.
func ensureRequestID(h http.Header) string {
	if id := h.Get("X-Request-Id"); id != "" {
		return id
	}
	var b [16]byte
	putRandom(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	x := hex.EncodeToString(b[:])
	id := x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
	h.Set("X-Request-Id", id)
	return id
}

func putRandom(b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}
