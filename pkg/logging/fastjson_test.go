package logging

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

type bufSink struct{ bytes.Buffer }

func (*bufSink) Sync() error { return nil }

// TestFlatCoreMatchesZap: the Buffered loggers' own encoding writes the
// bytes zap's production JSON encoder writes, for strings that need every
// kind of escape, integers and booleans; lines with other fields go to
// zap's encoder and stay valid JSON.
func TestFlatCoreMatchesZap(t *testing.T) {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	var fast, ref bufSink
	fc := &flatCore{LevelEnabler: zapcore.InfoLevel, out: &fast, slow: zapcore.NewCore(enc, &fast, zapcore.InfoLevel)}
	zc := zapcore.NewCore(enc.Clone(), &ref, zapcore.InfoLevel)
	e := zapcore.Entry{Level: zapcore.InfoLevel, Time: time.Unix(1795671627, 631257500), LoggerName: "access", Message: "request complete"}
	for _, s := range []string{
		"", "plain/path?q=1", `quote " and \ backslash`, "new\nline\r\ttab", "ctl\x00\x01\x1f\x7f",
		"héllo wörld ☃ 𝄞", "bad\xffutf8\xc3", "\xe2\x82", "end\\",
	} {
		fields := []zapcore.Field{zap.String("path", s), zap.Int("code", -503), zap.Int32("n", 7), zap.Bool("ok", true), zap.Bool("no", false), zap.String(`k"ey`, s)}
		fast.Reset()
		ref.Reset()
		if err := fc.Write(e, fields); err != nil {
			t.Fatal(err)
		}
		if err := zc.Write(e, fields); err != nil {
			t.Fatal(err)
		}
		if fast.String() != ref.String() {
			t.Errorf("string %q:\n got %s\nwant %s", s, fast.String(), ref.String())
		}
	}
	// A field of another type: zap's encoder writes the line.
	fast.Reset()
	if err := fc.Write(e, []zapcore.Field{zap.Float64("ratio", 0.5), zap.Duration("d", time.Second)}); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal(fast.Bytes(), &line); err != nil || line["ratio"] != 0.5 || line["msg"] != "request complete" {
		t.Errorf("fallback line %q: %v", fast.String(), err)
	}
}

func BenchmarkAccessLine(b *testing.B) {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	var sink bufSink
	for _, c := range []struct {
		name string
		core zapcore.Core
	}{
		{"flat", &flatCore{LevelEnabler: zapcore.InfoLevel, out: &sink, slow: zapcore.NewCore(enc, &sink, zapcore.InfoLevel)}},
		{"zap", zapcore.NewCore(enc, &sink, zapcore.InfoLevel)},
	} {
		b.Run(c.name, func(b *testing.B) {
			log := zap.New(c.core).Named("access")
			b.ReportAllocs()
			for b.Loop() {
				sink.Reset()
				log.Info("request complete",
					zap.String("src.addr", "10.244.0.12:43122"), zap.String("src.workload", "client"), zap.String("src.namespace", "bench"),
					zap.String("src.identity", "spiffe://cluster.local/ns/bench/sa/default"), zap.String("dst.service", "server-wp.bench.svc.cluster.local"),
					zap.String("dst.hbone_addr", "10.96.0.17:8080"), zap.String("dst.addr", "10.244.0.13:8080"), zap.String("dst.workload", "server"),
					zap.String("dst.identity", "spiffe://cluster.local/ns/bench/sa/default"), zap.String("route", "default"), zap.String("method", "POST"),
					zap.String("path", "/echo"), zap.String("authority", "server-wp:8080"), zap.String("protocol", "HTTP/1.1"), zap.Int("response_code", 200),
					zap.String("grpc_status", ""), zap.String("response_flags", "-"), zap.Int("attempts", 1), zap.Int64("bytes_sent", 1024),
					zap.String("request_id", "0b6e2c1e-4b7a-4f0e-9a51-1f2d3c4b5a69"), zap.String("trace_id", ""), zap.String("duration", "0ms"))
			}
		})
	}
}
