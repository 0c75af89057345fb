package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ambient-mesh/mesh/pkg/ca"
	"github.com/ambient-mesh/mesh/pkg/certmanager"
	"github.com/ambient-mesh/mesh/pkg/hbone"
)

// TestRotationUnderLoad: two ztunnels' certificate managers (node-a holds the
// client pod's identity, node-b the server pod's, each impersonating through
// the real CA and TokenReview) hold 10-second certificates while HBONE
// streams run back to back, and the CA's root is rotated halfway. Every
// stream must succeed; the server must have seen several client certificates
// from both roots. The managers refresh independently, so for a while one
// side holds a new-root certificate and the other an old-root one: only the
// overlap bundle lets them trust each other.
func TestRotationUnderLoad(t *testing.T) {
	run := 24 * time.Second
	if testing.Short() {
		run = 12 * time.Second
	}
	c := startCluster(t)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	srv := startCA(t, c, log)
	c.addPod(t, "demo", "web-b", "web", "node-b")
	app, _ := spiffeid.FromString(spiffe("demo", "app"))
	web, _ := spiffeid.FromString(spiffe("demo", "web"))
	mctx, stopMgrs := context.WithCancel(context.Background())
	var mgrsDone sync.WaitGroup
	defer func() { stopMgrs(); mgrsDone.Wait() }()
	ztunnel := func(pod string, id spiffeid.ID) *certmanager.Manager {
		tok := c.token(t, pod, ca.Audience)
		m, err := certmanager.New(certmanager.Config{
			Fetcher: certmanager.NewCAClient(srv.conn, func(context.Context) (string, error) { return tok, nil },
				certmanager.CAClientOptions{Impersonate: true}),
			TTL:    10 * time.Second,
			Logger: log.With(zap.String("ztunnel", pod)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.SetRootsPEM(srv.ca.RootsPEM()); err != nil {
			t.Fatal(err)
		}
		mgrsDone.Go(func() { _ = m.Start(mctx) })
		m.SetLocalIdentities([]spiffeid.ID{id})
		if _, err := m.Fetch(t.Context(), id); err != nil {
			t.Fatalf("warm-up of %s on %s: %v", id, pod, err)
		}
		return m
	}
	mgrA := ztunnel(systemNS+"/ztunnel-a", app)
	// Start node-b a quarter of a lifetime later, so the two sides refresh
	// (and move to the new root) at different times.
	certA, _ := mgrA.Current(app)
	select {
	case <-time.After(time.Until(certA.Leaf.NotBefore.Add(certA.RefreshAt.Sub(certA.Leaf.NotBefore) / 2))):
	case <-t.Context().Done():
	}
	mgrB := ztunnel(systemNS+"/ztunnel-b", web)
	oldRoot := srv.ca.Keys().Root()

	// From here on every goroutine the test starts must be gone at the end.
	leaks := goleak.IgnoreCurrent()

	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var echoWG sync.WaitGroup
	echoWG.Go(func() {
		for {
			conn, err := echoLn.Accept()
			if err != nil {
				return
			}
			echoWG.Go(func() {
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
				_ = conn.(*net.TCPConn).CloseWrite()
			})
		}
	})

	var (
		seenMu      sync.Mutex
		clientCerts = map[string]*x509.Certificate{} // serial → leaf, as the server saw them
		serverCerts = map[string]bool{}
	)
	hs, err := hbone.NewServer(hbone.ServerConfig{
		SVID:   mgrB.SVIDSource(web),
		Bundle: mgrB,
		Hooks: hbone.Hooks{Authorize: func(_ context.Context, in *hbone.Inbound) error {
			if in.Peer != app {
				return fmt.Errorf("unexpected peer %s", in.Peer)
			}
			seenMu.Lock()
			clientCerts[in.PeerChain[0].SerialNumber.Text(16)] = in.PeerChain[0]
			seenMu.Unlock()
			return nil
		}},
		DrainTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	hbLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopServer := context.WithCancel(context.Background())
	serveDone := make(chan error, 1)
	go func() { serveDone <- hs.Serve(sctx, hbLn) }()

	pooled, err := hbone.NewClient(hbone.ClientConfig{Bundle: mgrA})
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(hbLn.Addr().String())
	payload := bytes.Repeat([]byte("hbone-rotation "), 64)
	stream := func(ctx context.Context, cl *hbone.Client) error {
		cert, err := mgrA.Fetch(ctx, app)
		if err != nil {
			return fmt.Errorf("source certificate: %w", err)
		}
		if cur, ok := mgrB.Current(web); ok {
			seenMu.Lock()
			serverCerts[cur.Leaf.SerialNumber.Text(16)] = true
			seenMu.Unlock()
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := cl.Dial(dctx, &hbone.Request{Source: cert.SVID(), Destinations: []spiffeid.ID{web}, Address: addr, Authority: echoLn.Addr().String()})
		if err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(payload); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if err := conn.CloseWrite(); err != nil {
			return fmt.Errorf("close write: %w", err)
		}
		got, err := io.ReadAll(conn)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if !bytes.Equal(got, payload) {
			return fmt.Errorf("echo returned %d bytes, want %d", len(got), len(payload))
		}
		return nil
	}

	var (
		streams, failed atomic.Int64
		firstErr        atomic.Pointer[error]
		workers         sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(t.Context(), run)
	defer cancel()
	for w := range 4 {
		workers.Go(func() {
			for ctx.Err() == nil {
				cl := pooled
				if w%2 == 1 { // a fresh client per stream: a new TLS handshake with the current certificates
					fresh, err := hbone.NewClient(hbone.ClientConfig{Bundle: mgrA})
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, &err)
						continue
					}
					cl = fresh
				}
				err := stream(ctx, cl)
				if cl != pooled {
					_ = cl.Close()
				}
				if err != nil && ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
					return // the run ended mid-stream
				}
				streams.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}

	// Rotate the root halfway, in the two phases the leader uses: stage the
	// next root in the bundle, let the bundle (istio-ca-root-cert) reach both
	// ztunnels, then activate it. Each manager moves to the new root at its
	// next refresh.
	select {
	case <-time.After(run / 2):
	case <-ctx.Done():
	}
	reloader := &ca.Reloader{CA: srv.ca, Client: c.cs, Namespace: systemNS}
	if _, err := ca.StageRootRotation(t.Context(), c.cs, systemNS, ca.RootOptions{Logger: log}); err != nil {
		t.Fatalf("stage root: %v", err)
	}
	if err := reloader.ReloadOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*certmanager.Manager{mgrA, mgrB} {
		if err := m.SetRootsPEM(srv.ca.RootsPEM()); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := ca.ActivateStagedRoot(t.Context(), c.cs, systemNS, ca.RootOptions{Overlap: time.Hour, Logger: log})
	if err != nil {
		t.Fatalf("activate root: %v", err)
	}
	if err := reloader.ReloadOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	newRoot := keys.Root()
	workers.Wait()

	_ = pooled.Close()
	stopServer()
	if err := <-serveDone; err != nil {
		t.Errorf("hbone Serve: %v", err)
	}
	_ = echoLn.Close()
	echoWG.Wait()

	n, f := streams.Load(), failed.Load()
	t.Logf("%d streams, %d failed, %d client certificates and %d server certificates seen", n, f, len(clientCerts), len(serverCerts))
	if f != 0 {
		t.Errorf("%d of %d streams failed; first: %v", f, n, *firstErr.Load())
	}
	if n < 40 {
		t.Errorf("only %d streams ran in %s", n, run)
	}
	var fromOld, fromNew int
	for _, leaf := range clientCerts {
		switch {
		case leaf.CheckSignatureFrom(oldRoot) == nil:
			fromOld++
		case leaf.CheckSignatureFrom(newRoot) == nil:
			fromNew++
		}
	}
	if wantMin := int(run/(5*time.Second)) - 1; len(clientCerts) < wantMin || len(serverCerts) < wantMin {
		t.Errorf("saw %d client and %d server certificates in %s of 10 s certificates, want at least %d of each (refresh at half life)", len(clientCerts), len(serverCerts), run, wantMin)
	}
	if fromOld == 0 || fromNew == 0 {
		t.Errorf("client certificates from the old root: %d, from the new root: %d; want both", fromOld, fromNew)
	}
	goleak.VerifyNone(t, leaks)
}
