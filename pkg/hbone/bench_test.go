package hbone_test

import (
	"testing"

	"github.com/ambient-mesh/mesh/pkg/hbone"
	"github.com/ambient-mesh/mesh/pkg/hbone/hbonetest"
)

// Run with: go test -run '^$' -bench . ./pkg/hbone/
// Every path (baselines included) runs in the same process and run;
// make bench-hbone runs the same harness and writes the JSON figures.

func newEnv(b *testing.B) *hbonetest.Env {
	b.Helper()
	e, err := hbonetest.New(hbonetest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	return e
}

// BenchmarkSingleStream: one stream, 64 MiB per op; reports Gbit/s.
func BenchmarkSingleStream(b *testing.B) {
	e := newEnv(b)
	const n = 64 << 20
	for _, p := range hbonetest.Paths {
		b.Run(string(p), func(b *testing.B) {
			b.SetBytes(n)
			var total float64
			for b.Loop() {
				d, err := e.Send(b.Context(), p, n)
				if err != nil {
					b.Fatal(err)
				}
				total += d.Seconds()
			}
			b.ReportMetric(float64(n)*8*float64(b.N)/total/1e9, "Gbit/s")
		})
	}
}

// BenchmarkAggregate64: 64 concurrent streams, 1 MiB each per op.
func BenchmarkAggregate64(b *testing.B) {
	e := newEnv(b)
	for _, p := range []hbonetest.Path{hbonetest.TCP, hbonetest.TLS, hbonetest.H2, hbonetest.H3} {
		b.Run(string(p), func(b *testing.B) {
			b.SetBytes(64 << 20)
			var g float64
			for b.Loop() {
				var err error
				if g, err = e.Aggregate(b.Context(), p, 64, 1<<20); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(g, "Gbit/s")
		})
	}
}

// BenchmarkRTT1K: median round trip of a 1 KB echo on an open stream.
func BenchmarkRTT1K(b *testing.B) {
	e := newEnv(b)
	for _, p := range hbonetest.Paths {
		b.Run(string(p), func(b *testing.B) {
			for b.Loop() {
				d, err := e.RTT(b.Context(), p, 1024, 200)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(d.Microseconds()), "us/rtt")
			}
		})
	}
}

// BenchmarkSetup: time to a usable stream on a new connection (handshakes
// included) and on a pooled one.
func BenchmarkSetup(b *testing.B) {
	e := newEnv(b)
	for _, c := range []struct {
		name  string
		p     hbonetest.Path
		fresh bool
	}{
		{"tcp", hbonetest.TCP, true}, {"tls", hbonetest.TLS, true},
		{"h2-new", hbonetest.H2, true}, {"h3-new", hbonetest.H3, true},
		{"h2-pooled", hbonetest.H2, false}, {"h3-pooled", hbonetest.H3, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				d, err := e.Setup(b.Context(), c.p, 1, c.fresh)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(d.Microseconds()), "us/setup")
			}
		})
	}
}

// BenchmarkStream: one pooled stream (Dial, 1 echoed byte, Close) per op;
// allocs/op counts client and server side.
func BenchmarkStream(b *testing.B) {
	e := newEnv(b)
	for _, p := range []hbonetest.Path{hbonetest.H2, hbonetest.H3} {
		b.Run(string(p), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Setup(b.Context(), p, 1, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIdleStream reports the memory held per idle pooled stream.
func BenchmarkIdleStream(b *testing.B) {
	for _, p := range []hbone.Protocol{hbone.H2, hbone.H3} {
		b.Run(p.String(), func(b *testing.B) {
			for b.Loop() {
				k, err := hbonetest.IdleStreamKiB(b.Context(), p, 200)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(k, "KiB/stream")
			}
		})
	}
}
