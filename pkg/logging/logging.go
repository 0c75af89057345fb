// Package logging builds the structured (zap, JSON) logger every binary under
// cmd/ starts with, so they log alike. Data-plane and control-plane code may
// import it; it imports only zap.
package logging

import (
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns the production logger at level (debug, info, warn or error);
// an unknown level is an error naming the --log-level flag.
func New(level string) (*zap.Logger, error) {
	l, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return Build(zap.NewAtomicLevelAt(l))
}

// Build returns the production logger at an atomic level the caller may
// change at run time (ztunnel's admin endpoint does).
func Build(level zap.AtomicLevel) (*zap.Logger, error) {
	return build(level, nil)
}

// build is Build with other output paths (nil: stderr).
func build(level zap.AtomicLevel, outputs []string) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	if outputs != nil {
		zc.OutputPaths = outputs
	}
	zc.Level = level
	// No sampling: zap's production default drops repeats of a message
	// beyond 100 a second, which would silently drop access-log lines
	// (one per request or connection) under load. Envoy and ztunnel log
	// every one.
	zc.Sampling = nil
	log, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("logger: %w", err)
	}
	return log, nil
}

// Buffered returns a logger named name for high-rate lines such as
// per-request access logs: the same JSON lines on stderr as Build's, but
// without the caller annotation (a runtime.Caller lookup per line, and
// always the same caller) and through a buffer that goes out when it holds
// 256 KiB or every second, instead of one write system call per line.
// Envoy buffers its access logs the same way. stop flushes what is
// buffered; call it before exiting.
func Buffered(name string, level zapcore.LevelEnabler) (l *zap.Logger, stop func()) {
	return bufferedTo(name, level, zapcore.Lock(os.Stderr))
}

func bufferedTo(name string, level zapcore.LevelEnabler, w zapcore.WriteSyncer) (*zap.Logger, func()) {
	ws := &zapcore.BufferedWriteSyncer{WS: w, Size: 256 << 10, FlushInterval: time.Second}
	core := &flatCore{LevelEnabler: level, out: ws,
		slow: zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), ws, level)}
	return zap.New(core).Named(name), func() { _ = ws.Stop() }
}
