package ztunnel

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/ambient-mesh/mesh/pkg/redirect"
)

// The benchmarks run each case twice on the same two-netns topology:
// "direct" without capture rules or proxies, "mesh" with both pods captured
// and served by a Proxy (A's ztunnel -> HBONE -> B's ztunnel). Compare the
// two lines of each pair: the ratio is the mesh's cost on this machine.

var benchModes = []struct {
	name    string
	capture bool
}{{"direct", false}, {"mesh", true}}

// startSink listens on :9090 in ns; each connection is read to EOF, then
// answered with the byte count (8 bytes, big endian).
func startSink(tb testing.TB, ns netns.NsHandle) {
	tb.Helper()
	ln, err := redirect.Listen(tb.Context(), ns, "tcp", ":9090", redirect.SocketOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	tb.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				_ = binary.Write(c, binary.BigEndian, n)
			}()
		}
	}()
}

// BenchmarkStream: one TCP stream from A's app to B's app, 64 KiB writes.
func BenchmarkStream(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			m := newMesh(b, mode.capture, zap.NewNop(), nil)
			startSink(b, m.b)
			c, _ := dialFromApp(b, m.a, netip.AddrPortFrom(podB, 9090))
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				b.Fatal(err)
			}
			var n int64
			if err := binary.Read(c, binary.BigEndian, &n); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if want := int64(b.N) * int64(len(buf)); n != want {
				b.Fatalf("sink got %d bytes, want %d", n, want)
			}
		})
	}
}

// BenchmarkRequestResponse: 1 KiB each way on one open connection; reports
// the round trip's p50 and p99.
func BenchmarkRequestResponse(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			m := newMesh(b, mode.capture, zap.NewNop(), nil)
			startEcho(b, m.b)
			c, r := dialFromApp(b, m.a, netip.AddrPortFrom(podB, 8080))
			if _, err := r.ReadString('\n'); err != nil {
				b.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			req, resp := make([]byte, 1024), make([]byte, 1024)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(r, resp); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkConnect: a new connection per op, until the app's first byte
// arrives (HBONE connections are pooled, so this is one CONNECT stream).
func BenchmarkConnect(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			m := newMesh(b, mode.capture, zap.NewNop(), nil)
			startEcho(b, m.b)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				c, err := redirect.Dial(b.Context(), m.a, net.Dialer{Timeout: ioTimeout}, "tcp", netip.AddrPortFrom(podB, 8080).String(), redirect.SocketOptions{})
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(ioTimeout))
				one := make([]byte, 1)
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				c.Close()
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(at(0.5), "p50-µs")
	b.ReportMetric(at(0.9), "p90-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}
