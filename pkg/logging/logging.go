// Package logging builds the structured (zap, JSON) logger every binary under
// cmd/ starts with, so they log alike. Data-plane and control-plane code may
// import it; it imports only zap.
package logging

import (
	"fmt"

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
