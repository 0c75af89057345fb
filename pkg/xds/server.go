package xds

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/model"
)

// writeBufferSize is gRPC's write buffer per connection (default 32 KiB).
const writeBufferSize = 256 << 10

// Defaults for Options.
const (
	DefaultDebounce      = 100 * time.Millisecond
	DefaultMaxDebounce   = time.Second
	DefaultShutdownGrace = 5 * time.Second
)

// TypeURLs are the resource types the server serves.
var TypeURLs = []string{model.AddressTypeURL, model.AuthorizationTypeURL, model.WaypointConfigTypeURL, model.TelemetryTypeURL}

// Options configure a Server.
type Options struct {
	// Authenticator checks every stream at open. Required.
	Authenticator Authenticator
	// VerifyNode, if set, checks the node a client claims (its first
	// request's Node) against its authenticated identity; an error ends the
	// stream with PermissionDenied. See ZtunnelNodeVerifier.
	VerifyNode func(Identity, *core.Node) error
	// Logger; zap.NewNop() when nil.
	Logger *zap.Logger
	// Registerer for the server's metrics; none registered when nil.
	Registerer prometheus.Registerer
	// TLS for Serve; nil serves plaintext (tests only).
	TLS *tls.Config
	// Debounce is the quiet period after an Update before a push; pushes are
	// delayed at most MaxDebounce while updates keep coming. An Update that
	// finds the server idle (no push for Debounce) is pushed at once: only
	// the updates that follow a push closely are held and coalesced, so a
	// lone change is not delayed and a burst costs one push, then one more.
	Debounce    time.Duration
	MaxDebounce time.Duration
	// ShutdownGrace bounds Serve's graceful stop before streams are cut.
	ShutdownGrace time.Duration
}

// ClientStatus describes one connected stream, for the debug endpoint.
type ClientStatus struct {
	StreamID  int64
	Identity  Identity
	NodeID    string
	Connected time.Time
	// Types maps type URL to the client's last ACK/NACK of that type.
	Types map[string]TypeStatus
}

// TypeStatus is the last acknowledgement a client sent for one type.
type TypeStatus struct {
	LastNonceSent  string
	LastResponseAt time.Time
	LastAck        time.Time
	LastNack       time.Time
	NackError      string
	// Subscribed is true once the client asked for the type; Wildcard when it
	// asked for all resources (otherwise it subscribes on demand).
	Subscribed bool
	Wildcard   bool
}

// Sync states of a client for one type, as istioctl proxy-status shows them.
const (
	SyncStateSynced  = "SYNCED"   // the last response was ACKed
	SyncStateStale   = "STALE"    // a response awaits its ACK
	SyncStateNack    = "NACK"     // the last response was rejected
	SyncStateNotSent = "NOT SENT" // nothing sent yet
)

// SyncState summarizes the status.
func (t TypeStatus) SyncState() string {
	switch {
	case t.LastResponseAt.IsZero():
		return SyncStateNotSent
	case !t.LastNack.IsZero() && !t.LastNack.Before(t.LastResponseAt):
		return SyncStateNack
	case !t.LastAck.IsZero() && !t.LastAck.Before(t.LastResponseAt):
		return SyncStateSynced
	}
	return SyncStateStale
}

// Server is a delta ADS server for the ambient resource types.
//
// Concurrency: Update may be called from any goroutine; it only records the
// newest snapshot (guarded by mu) and wakes the push loop run by Start, which
// alone diffs and writes the caches (applied is owned by that loop).
// go-control-plane runs callbacks on stream goroutines; client state is
// guarded by clientsMu. One stream holds at most one watch per type.
type Server struct {
	opts    Options
	log     *zap.Logger
	caches  typeMux // one deltaCache per type URL
	metrics *metrics

	mu      sync.Mutex
	pending *model.Resources // newest snapshot not yet applied; guarded by mu
	kick    chan struct{}    // capacity 1: "pending changed"

	synced     chan struct{} // closed after the first snapshot is in the caches
	syncedOnce sync.Once

	// applied is the snapshot in the caches; owned by the push loop.
	applied      model.Resources
	appliedBytes map[string]map[string][]byte // type -> name -> encoding of applied

	clientsMu sync.Mutex
	clients   map[int64]*clientState // keyed by go-control-plane stream id
}

type clientState struct {
	status ClientStatus
	// sent maps type to the latest response (its nonce and resources, a
	// shared read-only slice), so a NACK can name what was rejected.
	sent map[string]sentResponse
}

type sentResponse struct {
	nonce     string
	resources []*discovery.Resource
}

// New returns a Server. Call Start to run its push loop and Register or Serve
// to expose it.
func New(opts Options) (*Server, error) {
	if opts.Authenticator == nil {
		return nil, errors.New("xds: Options.Authenticator is required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDebounce < opts.Debounce {
		opts.MaxDebounce = max(DefaultMaxDebounce, opts.Debounce)
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = DefaultShutdownGrace
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger.Named("xds"),
		caches:  typeMux{},
		kick:    make(chan struct{}, 1),
		synced:  make(chan struct{}),
		clients: map[int64]*clientState{},
	}
	m, err := newMetrics(opts.Registerer, s.clientCount)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	for _, t := range TypeURLs {
		s.caches[t] = newDeltaCache(t)
	}
	return s, nil
}

// Update records r as the desired state. It returns at once; the push loop
// applies the newest snapshot after the debounce period. r must not be
// modified afterwards.
func (s *Server) Update(r model.Resources) {
	s.mu.Lock()
	s.pending = &r
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Synced is closed once the first snapshot has been applied. Streams opened
// before that wait for it, so no client mistakes an empty cache for the mesh.
func (s *Server) Synced() <-chan struct{} { return s.synced }

// Start runs the debounced push loop until ctx is done. It returns nil on
// cancellation.
func (s *Server) Start(ctx context.Context) error {
	var lastPush time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		if time.Since(lastPush) >= s.opts.Debounce {
			// Idle: push now (leading edge). Updates within Debounce of
			// this push wait for a quiet period below.
			lastPush = time.Now()
			s.applyPending()
			continue
		}
		quiet := time.NewTimer(s.opts.Debounce)
		deadline := time.NewTimer(s.opts.MaxDebounce)
	debounce:
		for {
			select {
			case <-ctx.Done():
				quiet.Stop()
				deadline.Stop()
				return nil
			case <-s.kick:
				quiet.Reset(s.opts.Debounce)
			case <-quiet.C:
				break debounce
			case <-deadline.C:
				break debounce
			}
		}
		quiet.Stop()
		deadline.Stop()
		lastPush = time.Now()
		s.applyPending()
	}
}

// applyPending applies the newest snapshot recorded by Update, if any.
func (s *Server) applyPending() {
	s.mu.Lock()
	next := s.pending
	s.pending = nil
	s.mu.Unlock()
	if next != nil {
		s.apply(*next)
	}
}

// apply writes the difference between the applied snapshot and next into the
// caches, Authorizations first so that no Workload names a policy a client
// has not received, then waypoint ServiceConfigs, after the Addresses of
// the backends they name, and waypoint Telemetry.
func (s *Server) apply(next model.Resources) {
	start := time.Now()
	authUpd, authDel, authBytes := diff(s.applied.Authorizations, s.appliedBytes[model.AuthorizationTypeURL], next.Authorizations)
	addrUpd, addrDel, addrBytes := diff(s.applied.Addresses, s.appliedBytes[model.AddressTypeURL], next.Addresses)
	wpUpd, wpDel, wpBytes := diff(s.applied.WaypointConfigs, s.appliedBytes[model.WaypointConfigTypeURL], next.WaypointConfigs)
	telUpd, telDel, telBytes := diff(s.applied.Telemetry, s.appliedBytes[model.TelemetryTypeURL], next.Telemetry)
	// Indexes for on-demand clients: aliases, and the Services and node of
	// each Workload (whose watchers must hear of it).
	aliasChanges := map[string][2][]string{}  // name -> {old aliases, new aliases}
	memberChanges := map[string][2][]string{} // workload -> {old services, new services}
	var touched []string                      // groups that gained, lost or changed a workload
	index := func(name string, next *workloadapi.Address) {
		prev := s.applied.Addresses[name]
		aliasChanges[name] = [2][]string{model.Aliases(prev), model.Aliases(next)}
		groups := func(a *workloadapi.Address) []string {
			g := slices.Collect(maps.Keys(a.GetWorkload().GetServices()))
			if n := a.GetWorkload().GetNode(); n != "" {
				g = append(g, nodeKey(n))
			}
			return g
		}
		before, after := groups(prev), groups(next)
		if len(before) > 0 || len(after) > 0 {
			memberChanges[name] = [2][]string{before, after}
			touched = append(append(touched, before...), after...)
		}
	}
	for name, r := range addrUpd {
		index(name, r.(*workloadapi.Address))
	}
	for _, name := range addrDel {
		index(name, nil)
	}
	addrCache := s.caches[model.AddressTypeURL]
	addrCache.updateAliases(aliasChanges)
	addrCache.updateMembers(memberChanges)
	for _, step := range []struct {
		typeURL string
		upd     map[string]types.Resource
		del     []string
		also    []string
	}{
		{model.AuthorizationTypeURL, authUpd, authDel, nil},
		{model.AddressTypeURL, addrUpd, addrDel, touched},
		{model.WaypointConfigTypeURL, wpUpd, wpDel, nil},
		{model.TelemetryTypeURL, telUpd, telDel, nil},
	} {
		if len(step.upd) == 0 && len(step.del) == 0 {
			continue
		}
		if err := s.caches[step.typeURL].update(step.upd, step.del, step.also...); err != nil {
			// Only a resource that fails to marshal gets here; clients keep
			// their previous state for it.
			s.log.Error("cache update failed", zap.String("type", step.typeURL), zap.Error(err))
		}
		s.metrics.pushes.WithLabelValues(step.typeURL).Inc()
		s.metrics.resourcesChanged.WithLabelValues(step.typeURL).Add(float64(len(step.upd) + len(step.del)))
	}
	s.applied = next
	s.appliedBytes = map[string]map[string][]byte{model.AuthorizationTypeURL: authBytes, model.AddressTypeURL: addrBytes, model.WaypointConfigTypeURL: wpBytes,
		model.TelemetryTypeURL: telBytes}
	s.syncedOnce.Do(func() { close(s.synced) })
	s.log.Debug("snapshot applied",
		zap.Int("addresses_changed", len(addrUpd)), zap.Int("addresses_removed", len(addrDel)),
		zap.Int("authorizations_changed", len(authUpd)), zap.Int("authorizations_removed", len(authDel)),
		zap.Int("waypoint_configs_changed", len(wpUpd)), zap.Int("waypoint_configs_removed", len(wpDel)),
		zap.Int("telemetry_changed", len(telUpd)), zap.Int("telemetry_removed", len(telDel)),
		zap.Duration("took", time.Since(start)))
}

// diff returns the resources of next that are new or changed since old,
// and the names old has and next lacks, comparing deterministic encodings
// (oldBytes, by name) rather than proto.Equal, whose reflection costs twice
// as much at 10,000 resources. A message that is the same pointer as in old
// is not encoded again, so callers that keep unchanged messages pay nothing.
// It returns the encodings of next for the following diff.
func diff[T proto.Message](old map[string]T, oldBytes map[string][]byte, next map[string]T) (map[string]types.Resource, []string, map[string][]byte) {
	upd := map[string]types.Resource{}
	nextBytes := make(map[string][]byte, len(next))
	var del []string
	for name, r := range next {
		o, ok := old[name]
		if ok && proto.Message(o) == proto.Message(r) {
			nextBytes[name] = oldBytes[name]
			continue
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			upd[name] = r // the cache reports the error
			continue
		}
		nextBytes[name] = b
		if !ok || !bytes.Equal(b, oldBytes[name]) {
			upd[name] = r
		}
	}
	for name := range old {
		if _, ok := next[name]; !ok {
			del = append(del, name)
		}
	}
	return upd, del, nextBytes
}

// Register adds the ADS service to g, e.g. the 15012 server shared with the
// CA. Only the delta RPC is served. ctx bounds every stream.
func (s *Server) Register(ctx context.Context, g *grpc.Server) {
	ds := delta.NewServer(ctx, s.caches, s.callbacks(), delta.WithLogger(cacheLogger{s.log.Sugar()}))
	discovery.RegisterAggregatedDiscoveryServiceServer(g, &ads{delta: ds})
}

// GRPCServerOptions are the options Serve uses: TLS from Options, keepalive
// enforcement compatible with ztunnel, and large messages.
func (s *Server) GRPCServerOptions() []grpc.ServerOption {
	creds := insecure.NewCredentials()
	if s.opts.TLS != nil {
		creds = coalescingCreds{credentials.NewTLS(s.opts.TLS)}
	}
	return []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.ForceServerCodecV2(newCodec(s)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(16 << 20),
		// A full push to a ztunnel is megabytes: let it flow without waiting
		// for window updates at every 64 KiB.
		grpc.InitialWindowSize(4 << 20),
		grpc.InitialConnWindowSize(16 << 20),
		// Bigger writes, each one system call (coalescingCreds); the
		// buffer is returned to a pool after each flush, so idle
		// connections hold none.
		grpc.WriteBufferSize(writeBufferSize),
		grpc.SharedWriteBuffer(true),
	}
}

// Serve serves ADS on lis until ctx is done, then stops gracefully within
// ShutdownGrace and force-closes what is left. It returns nil on
// cancellation. Start must run alongside for any resource to be served.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	g := grpc.NewServer(s.GRPCServerOptions()...)
	streamCtx, cancelStreams := context.WithCancel(context.Background())
	defer cancelStreams()
	s.Register(streamCtx, g)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("xds: serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	// Streams are long-lived: ask them to end, then wait for the grace period.
	cancelStreams()
	select {
	case <-done:
	case <-time.After(s.opts.ShutdownGrace):
		g.Stop()
		<-done
	}
	<-errc
	return nil
}

// ads adapts the delta handler to the generated service interface.
type ads struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	delta delta.Server
}

func (a *ads) DeltaAggregatedResources(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.delta.DeltaStreamHandler(stream, "")
}

func (a *ads) StreamAggregatedResources(discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "state-of-the-world ADS is not served; use DeltaAggregatedResources")
}

// callbacks wires go-control-plane's stream events to authentication,
// client status and metrics.
func (s *Server) callbacks() delta.Callbacks {
	return &callbacks{s: s}
}

type callbacks struct{ s *Server }

func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	s := c.s
	ident, err := s.opts.Authenticator.Authenticate(ctx)
	if err != nil {
		s.metrics.authFailures.Inc()
		s.log.Info("stream refused", zap.Int64("stream", id), zap.Error(err))
		return status.Error(codes.Unauthenticated, "xds: authentication failed: "+err.Error())
	}
	// Hold the stream until the caches reflect the cluster.
	select {
	case <-s.synced:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	s.clientsMu.Lock()
	s.clients[id] = &clientState{
		status: ClientStatus{StreamID: id, Identity: ident, Connected: time.Now(), Types: map[string]TypeStatus{}},
		sent:   map[string]sentResponse{},
	}
	s.clientsMu.Unlock()
	s.log.Info("stream opened", zap.Int64("stream", id),
		zap.String("namespace", ident.Namespace), zap.String("service_account", ident.ServiceAccount))
	return nil
}

func (c *callbacks) OnDeltaStreamClosed(id int64, node *core.Node) {
	s := c.s
	s.clientsMu.Lock()
	_, known := s.clients[id]
	delete(s.clients, id)
	s.clientsMu.Unlock()
	if known {
		s.log.Info("stream closed", zap.Int64("stream", id), zap.String("node", node.GetId()))
	}
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	s := c.s
	typ := req.GetTypeUrl()
	if _, ok := s.caches[typ]; !ok {
		s.metrics.badRequests.Inc()
		return status.Errorf(codes.InvalidArgument, "xds: unsupported type %q", typ)
	}
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	cl := s.clients[id]
	if cl == nil {
		return nil
	}
	if n := req.GetNode(); n != nil && cl.status.NodeID == "" {
		if s.opts.VerifyNode != nil {
			if err := s.opts.VerifyNode(cl.status.Identity, n); err != nil {
				s.metrics.authFailures.Inc()
				s.log.Info("stream refused", zap.Int64("stream", id), zap.String("node", n.GetId()), zap.Error(err))
				return status.Error(codes.PermissionDenied, "xds: node not allowed: "+err.Error())
			}
		}
		cl.status.NodeID = n.GetId()
	}
	ts := cl.status.Types[typ]
	if !ts.Subscribed {
		ts.Wildcard = len(req.GetResourceNamesSubscribe()) == 0
	}
	ts.Subscribed = true
	for _, n := range req.GetResourceNamesSubscribe() {
		ts.Wildcard = ts.Wildcard || n == "*"
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		ts.Wildcard = ts.Wildcard && n != "*"
	}
	now := time.Now()
	if nonce := req.GetResponseNonce(); nonce != "" {
		if e := req.GetErrorDetail(); e != nil {
			ts.LastNack, ts.NackError = now, e.GetMessage()
			s.metrics.nacks.WithLabelValues(typ).Inc()
			var names []string
			if sr := cl.sent[typ]; sr.nonce == nonce {
				for _, r := range sr.resources {
					names = append(names, r.GetName())
				}
			}
			s.log.Warn("config rejected", zap.Int64("stream", id), zap.String("node", cl.status.NodeID),
				zap.String("type", typ), zap.String("nonce", nonce), zap.Strings("resources", names),
				zap.String("error", e.GetMessage()))
		} else {
			ts.LastAck = now
		}
	}
	cl.status.Types[typ] = ts
	return nil
}

func (c *callbacks) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	s := c.s
	typ := resp.GetTypeUrl()
	size := 0
	if f := s.caches[typ].fullEncoding(resp.GetResources()); f != nil {
		size = f.bytes
	} else {
		for _, r := range resp.GetResources() {
			size += len(r.GetResource().GetValue())
		}
	}
	s.metrics.responses.WithLabelValues(typ).Inc()
	s.metrics.bytesSent.WithLabelValues(typ).Add(float64(size))
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	cl := s.clients[id]
	if cl == nil {
		return
	}
	cl.sent[typ] = sentResponse{nonce: resp.GetNonce(), resources: resp.GetResources()}
	ts := cl.status.Types[typ]
	ts.LastNonceSent, ts.LastResponseAt = resp.GetNonce(), time.Now()
	cl.status.Types[typ] = ts
}

// Clients returns the status of every connected stream.
func (s *Server) Clients() []ClientStatus {
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	out := make([]ClientStatus, 0, len(s.clients))
	for _, c := range s.clients {
		st := c.status
		st.Types = map[string]TypeStatus{}
		for k, v := range c.status.Types {
			st.Types[k] = v
		}
		out = append(out, st)
	}
	return out
}

func (s *Server) clientCount() float64 {
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	return float64(len(s.clients))
}

// Resources returns the resources of one type currently served, for the
// debug config dump.
func (s *Server) Resources(typeURL string) map[string]types.Resource {
	c, ok := s.caches[typeURL]
	if !ok {
		return nil
	}
	return c.resources()
}

// cacheLogger sends go-control-plane's chatter to debug level.
type cacheLogger struct{ l *zap.SugaredLogger }

func (c cacheLogger) Debugf(f string, a ...any) { c.l.Debugf(f, a...) }
func (c cacheLogger) Infof(f string, a ...any)  { c.l.Debugf(f, a...) }
func (c cacheLogger) Warnf(f string, a ...any)  { c.l.Warnf(f, a...) }
func (c cacheLogger) Errorf(f string, a ...any) { c.l.Errorf(f, a...) }
