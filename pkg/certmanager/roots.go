package certmanager

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
)

// WatchRootsFile loads the trust bundle from path (the istio-ca-root-cert
// ConfigMap's root-cert.pem mounted into ztunnel) and reloads it whenever
// its content changes, checking every interval (default 5 s), until ctx
// ends. The first load must succeed; later read or parse errors keep the
// previous bundle and are logged. It blocks; run it in its own goroutine.
func (m *Manager) WatchRootsFile(ctx context.Context, path string, interval time.Duration) error {
	if interval == 0 {
		interval = 5 * time.Second
	}
	last, err := m.loadRootsFile(path)
	if err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, err := os.ReadFile(path)
		if err != nil {
			m.log.Warn("trust bundle read failed; keeping the previous one", zap.String("path", path), zap.Error(err))
			continue
		}
		if bytes.Equal(b, last) {
			continue
		}
		if err := m.SetRootsPEM(b); err != nil {
			m.log.Warn("trust bundle parse failed; keeping the previous one", zap.String("path", path), zap.Error(err))
			continue
		}
		last = b
		m.log.Info("trust bundle reloaded", zap.String("path", path))
	}
}

func (m *Manager) loadRootsFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read trust bundle: %w", err)
	}
	if err := m.SetRootsPEM(b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// Roots returns the configured trust bundle (without the roots of held
// chains).
func (m *Manager) Roots() []*x509.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*x509.Certificate(nil), m.roots...)
}
