package waypoint

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReadBody: a body of known length is read whole and to its EOF; one
// over the replay limit or of unknown length is read to limit+1 bytes; a
// short body is an error; a body longer than it said keeps every byte and
// comes back over the limit, so the caller streams it.
func TestReadBody(t *testing.T) {
	for _, c := range []struct {
		name          string
		body          string
		length, limit int64
		want          string
		wantErr       bool
	}{
		{"known", "hello", 5, 10, "hello", false},
		{"unknown", "hello", -1, 10, "hello", false},
		{"unknown over limit", "hello world", -1, 4, "hello", false},
		{"known over limit", "hello world", 11, 4, "hello", false},
		{"short", "hel", 5, 10, "hel", true},
		{"longer than said", "hello world", 5, 8, "hello world", false},
	} {
		for _, into := range []bool{false, true} { // a new buffer, a pooled one
			t.Run(c.name+map[bool]string{false: "", true: " into"}[into], func(t *testing.T) {
				r := &eofCounter{r: strings.NewReader(c.body)}
				var buf []byte
				if into {
					buf = make([]byte, 0, 64)
				}
				got, err := readBody(r, c.length, c.limit, buf)
				if (err != nil) != c.wantErr || !bytes.Equal(got, []byte(c.want)) {
					t.Fatalf("readBody = %q, %v; want %q (error %v)", got, err, c.want, c.wantErr)
				}
				if int64(len(got)) <= c.limit && !c.wantErr && r.eofs == 0 {
					t.Error("the body was not read to its EOF")
				}
				if into && c.length > 0 && c.length <= c.limit && len(got) > 0 && &got[0] != &buf[:1][0] {
					t.Error("a body of known length was not read into the given buffer")
				}
			})
		}
	}
}

type eofCounter struct {
	r    io.Reader
	eofs int
}

func (e *eofCounter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) {
		e.eofs++
	}
	return n, err
}
