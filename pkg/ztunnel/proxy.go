// Package ztunnel is the per-node L4 proxy of the ambient mesh: for each
// captured pod it listens inside the pod's network namespace on 15001
// (outbound), 15006 (plaintext inbound), 15008 (HBONE inbound) and, with
// Config.DNS, 15053 (the DNS proxy of pkg/ztunnel/dns), serves the
// pod with its own workload certificate, routes outbound connections with
// pkg/ztunnel/route over HBONE (pkg/hbone) or plain TCP, authorizes inbound
// ones with pkg/ztunnel/authz against the xDS state (pkg/ztunnel/state), and
// dials the app from the original source IP.
//
// The node agent feed (pkg/zds) hands pods to a Proxy through PodSink;
// cmd/ztunnel builds a Proxy from the xDS store and the certificate manager
// and runs it. See DESIGN.md §5 for the data paths.
package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/ambient-mesh/mesh/pkg/redirect"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// PodInfo is what the node agent says about a pod (ZDS WorkloadInfo).
type PodInfo struct {
	// UID is the Kubernetes pod UID, the key of AddPod/RemovePod.
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string // "" means default
}

// PodSink receives pods from the node agent (pkg/zds feeds it; a Proxy
// implements it). Calls for one uid are serialised by the caller.
type PodSink interface {
	// AddPod starts serving a pod whose netns is ns. The sink owns ns from
	// then on (it closes it when the pod is removed, or at once on error).
	// Adding a uid already served is a no-op that closes ns.
	AddPod(ctx context.Context, pod PodInfo, ns netns.NsHandle) error
	// RemovePod stops accepting for the pod, drains its connections until
	// the drain deadline, then closes them. Unknown uids are not an error.
	RemovePod(ctx context.Context, uid string) error
	// RetainPods removes (as RemovePod) every pod whose uid is not in keep:
	// the node agent's snapshot (ZDS SnapshotSent) lists the pods that
	// still exist, Added or Kept.
	RetainPods(ctx context.Context, keep []string) error
}

// Config configures a Proxy.
type Config struct {
	// Store is the xDS-fed state (required).
	Store *state.Store
	// Certs supplies pod certificates and the trust bundle (required).
	Certs Certs
	// TrustDomain of pod identities; default cluster.local.
	TrustDomain string
	// Network this node's pods are on ("" is the default network).
	Network string
	// DrainTimeout bounds draining a removed pod's connections; default 5 s.
	DrainTimeout time.Duration
	// ConnectTimeout bounds upstream connects; default 10 s.
	ConnectTimeout time.Duration
	// Mark is SO_MARK on every socket in a pod netns; default ZtunnelMark.
	Mark uint32
	// DNS, if set, runs the DNS proxy on 15053 in every pod.
	DNS *DNSConfig
	// Metrics, if set, counts connections with Istio's TCP metrics.
	Metrics *telemetry.Metrics
	Logger  *zap.Logger
}

// DNSConfig configures the per-pod DNS proxy.
type DNSConfig struct {
	// Upstreams are the resolvers (ip:port) queries for names outside the
	// mesh go to, tried in order, from inside the pod's netns.
	Upstreams []string
	// Domain is the cluster DNS domain; default cluster.local.
	Domain string
}

// Proxy serves the node's captured pods.
//
// Concurrency: mu guards pods (uid -> *pod). Each pod owns its listeners,
// HBONE client and connection set; the policy watcher (Run) reads pods
// under mu and re-checks each pod's inbound connections on every state
// change.
type Proxy struct {
	cfg  Config
	log  *zap.Logger
	acc  *zap.Logger // access log
	td   spiffeid.TrustDomain
	rr   atomic.Uint64
	life context.Context
	stop context.CancelFunc

	mu     sync.Mutex
	pods   map[string]*pod
	closed bool // set by shutdown; no pod is added after it
}

var _ PodSink = (*Proxy)(nil)

// New checks cfg and returns a Proxy. Pods can be added at once; Run
// watches policy changes and, when its context ends, removes every pod.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil || cfg.Certs == nil {
		return nil, errors.New("ztunnel: Config.Store and Config.Certs are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = state.DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("ztunnel: trust domain %q: %w", cfg.TrustDomain, err)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.Mark == 0 {
		cfg.Mark = redirect.ZtunnelMark
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	life, stop := context.WithCancel(context.Background())
	return &Proxy{cfg: cfg, log: cfg.Logger.Named("ztunnel"), acc: cfg.Logger.Named("access"), td: td, life: life, stop: stop, pods: map[string]*pod{}}, nil
}

// Run re-checks live inbound connections against the policies on every
// state change until ctx ends, then removes every pod (each drains for up
// to DrainTimeout) and returns nil.
func (p *Proxy) Run(ctx context.Context) error {
	for {
		changed, _ := p.cfg.Store.Changed()
		select {
		case <-ctx.Done():
			p.shutdown()
			return nil
		case <-changed:
			p.recheck()
		}
	}
}

func (p *Proxy) shutdown() {
	p.mu.Lock()
	p.closed = true
	pods := make([]*pod, 0, len(p.pods))
	for uid, pd := range p.pods {
		pods = append(pods, pd)
		delete(p.pods, uid)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, pd := range pods {
		wg.Go(pd.stopAndDrain)
	}
	wg.Wait()
	p.stop()
}

func (p *Proxy) recheck() {
	snap := p.cfg.Store.Snapshot()
	p.mu.Lock()
	pods := make([]*pod, 0, len(p.pods))
	for _, pd := range p.pods {
		pods = append(pods, pd)
	}
	p.mu.Unlock()
	for _, pd := range pods {
		pd.recheck(snap)
	}
}

var errStopped = errors.New("ztunnel proxy stopped")

// AddPod implements PodSink.
func (p *Proxy) AddPod(ctx context.Context, info PodInfo, ns netns.NsHandle) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = ns.Close()
		return fmt.Errorf("pod %s: %w", info.UID, errStopped)
	}
	if _, ok := p.pods[info.UID]; ok {
		p.mu.Unlock()
		_ = ns.Close()
		return nil
	}
	p.mu.Unlock()
	sa := info.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	id, err := spiffeid.FromSegments(p.td, "ns", info.Namespace, "sa", sa)
	if err != nil {
		_ = ns.Close()
		return fmt.Errorf("pod %s: identity: %w", info.UID, err)
	}
	pd, err := startPod(p, info, id, ns)
	if err != nil {
		_ = ns.Close()
		return fmt.Errorf("pod %s/%s (%s): %w", info.Namespace, info.Name, info.UID, err)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pd.stopAndDrain() // closes ns
		return fmt.Errorf("pod %s: %w", info.UID, errStopped)
	}
	p.pods[info.UID] = pd
	p.mu.Unlock()
	p.log.Info("pod added", zap.String("uid", info.UID), zap.String("pod", info.Namespace+"/"+info.Name), zap.Stringer("identity", id))
	return nil
}

// RemovePod implements PodSink. It returns once the pod's connections are
// closed (at most DrainTimeout after the call) or ctx ends.
func (p *Proxy) RemovePod(ctx context.Context, uid string) error {
	p.mu.Lock()
	pd := p.pods[uid]
	delete(p.pods, uid)
	p.mu.Unlock()
	if pd == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pd.stopAndDrain()
	}()
	select {
	case <-done:
		p.log.Info("pod removed", zap.String("uid", uid))
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RetainPods implements PodSink.
func (p *Proxy) RetainPods(ctx context.Context, keep []string) error {
	want := make(map[string]bool, len(keep))
	for _, uid := range keep {
		want[uid] = true
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, uid := range p.Pods() {
		if !want[uid] {
			wg.Go(func() {
				if err := p.RemovePod(ctx, uid); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Pods lists the uids being served.
func (p *Proxy) Pods() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.pods))
	for uid := range p.pods {
		out = append(out, uid)
	}
	return out
}

func (p *Proxy) pick(n int) int { return int(p.rr.Add(1) % uint64(n)) }

func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
