package otel

import (
	"fmt"
	"math"
	"sync/atomic"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// ratioSampler samples new traces by trace ID at a ratio that can change at
// run time (a Telemetry resource's randomSamplingPercentage, pushed by
// istiod-lite). It holds the current sdktrace.TraceIDRatioBased sampler
// behind an atomic pointer: ShouldSample never takes a lock, and a change
// takes effect for the next span.
type ratioSampler struct {
	cur     atomic.Pointer[sdktrace.Sampler]
	percent atomic.Uint64 // math.Float64bits of the percentage
}

func newRatioSampler(percent float64) *ratioSampler {
	s := &ratioSampler{}
	s.set(percent)
	return s
}

// set clamps percent to [0, 100] and installs it.
func (s *ratioSampler) set(percent float64) {
	if math.IsNaN(percent) || percent < 0 {
		percent = 0
	}
	percent = min(percent, 100)
	var next sdktrace.Sampler
	switch percent {
	case 0:
		next = sdktrace.NeverSample()
	case 100:
		next = sdktrace.AlwaysSample()
	default:
		next = sdktrace.TraceIDRatioBased(percent / 100)
	}
	s.cur.Store(&next)
	s.percent.Store(math.Float64bits(percent))
}

func (s *ratioSampler) get() float64 { return math.Float64frombits(s.percent.Load()) }

func (s *ratioSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	return (*s.cur.Load()).ShouldSample(p)
}

func (s *ratioSampler) Description() string {
	return fmt.Sprintf("MeshRatioSampler{%g%%}", s.get())
}
