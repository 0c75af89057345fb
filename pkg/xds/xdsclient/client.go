// Package xdsclient is a delta ADS client: it subscribes to resource types on
// one DeltaAggregatedResources stream, keeps the resources it holds with their
// versions, ACKs or NACKs each response according to a handler, and reconnects
// with backoff sending initial_resource_versions, so a server only resends what
// changed.
//
// Imported by ztunnel (workload and authorization discovery) and by the
// in-process tests of pkg/xds.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Delta is one response as the handler sees it.
type Delta struct {
	TypeURL string
	// Updated holds added or changed resources (see Resource for how long
	// their memory lives).
	Updated []Resource
	// Removed names resources the client must drop.
	Removed []string
}

// Handler applies a delta. Returning an error NACKs the response: the
// client's state is left as it was and the error is sent to the server.
type Handler func(Delta) error

// Subscription is what to ask for one type.
type Subscription struct {
	TypeURL string
	// Names to subscribe to; empty means wildcard (all resources).
	Names []string
	// OnDemand starts with nothing subscribed ("*" subscribed and
	// unsubscribed in one request, as ztunnel does); use Client.Subscribe.
	OnDemand bool
}

// Config configures a Client.
type Config struct {
	// Conn is the connection to the server (TLS and per-RPC credentials,
	// e.g. a bearer token, belong on it).
	Conn grpc.ClientConnInterface
	Node *core.Node
	// Subscriptions are sent in order when each stream opens.
	Subscriptions []Subscription
	Handler       Handler
	Logger        *zap.Logger
	// InitialBackoff and MaxBackoff bound reconnect delays (defaults 500ms, 30s).
	InitialBackoff, MaxBackoff time.Duration
	// OnStreamError, if set, sees every stream failure (before the backoff).
	OnStreamError func(error)
}

// Client is a delta ADS client.
//
// Concurrency: Run owns the stream; Subscribe and Versions may be called
// from any goroutine. state (resource versions per type) and names are
// guarded by mu and survive reconnects.
type Client struct {
	cfg Config
	log *zap.Logger

	mu       sync.Mutex
	versions map[string]*held           // by type; guarded by mu
	names    map[string]map[string]bool // on-demand / named subscriptions per type; guarded by mu
	send     chan *discovery.DeltaDiscoveryRequest
}

// New returns a Client; call Run to connect.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.InitialBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.InitialBackoff)
	}
	c := &Client{
		cfg:      cfg,
		log:      cfg.Logger.Named("xdsclient"),
		versions: map[string]*held{},
		names:    map[string]map[string]bool{},
		send:     make(chan *discovery.DeltaDiscoveryRequest, 16),
	}
	for _, s := range cfg.Subscriptions {
		c.versions[s.TypeURL] = &held{m: map[string]string{}}
		c.names[s.TypeURL] = map[string]bool{}
		for _, n := range s.Names {
			c.names[s.TypeURL][n] = true
		}
	}
	return c, nil
}

// Versions returns the versions of the resources the client holds for a type.
func (c *Client) Versions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.versions[typeURL].flatten())
}

// Subscribe asks for more resources of a type on the live stream (and on
// every later one). It does not wait for the answer.
func (c *Client) Subscribe(ctx context.Context, typeURL string, names ...string) error {
	c.mu.Lock()
	if c.names[typeURL] == nil {
		c.names[typeURL] = map[string]bool{}
	}
	for _, n := range names {
		c.names[typeURL][n] = true
	}
	c.mu.Unlock()
	select {
	case c.send <- &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run connects and keeps a stream open until ctx is done, reconnecting with
// jittered exponential backoff. It returns nil on cancellation.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.cfg.InitialBackoff
	for {
		start := time.Now()
		err := c.runStream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if c.cfg.OnStreamError != nil {
			c.cfg.OnStreamError(err)
		}
		if time.Since(start) > c.cfg.MaxBackoff {
			backoff = c.cfg.InitialBackoff // the stream was healthy for a while
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Info("stream ended, reconnecting", zap.Error(err), zap.Duration("backoff", wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// initialRequests builds one request per subscription carrying what the
// client already holds.
func (c *Client) initialRequests() []*discovery.DeltaDiscoveryRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*discovery.DeltaDiscoveryRequest
	for i, s := range c.cfg.Subscriptions {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 s.TypeURL,
			InitialResourceVersions: maps.Clone(c.versions[s.TypeURL].flatten()),
		}
		if i == 0 {
			req.Node = c.cfg.Node
		}
		for n := range c.names[s.TypeURL] {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
		}
		if s.OnDemand {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, "*")
			req.ResourceNamesUnsubscribe = []string{"*"}
		}
		out = append(out, req)
	}
	return out
}

func (c *Client) runStream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Requests queued for a dead stream are stale: ACKs name its nonces, and
	// subscriptions are repeated by the initial requests.
	for drained := false; !drained; {
		select {
		case <-c.send:
		default:
			drained = true
		}
	}
	// The generic stream rather than the generated client, so responses
	// decode into the codec's own type.
	stream, err := c.cfg.Conn.NewStream(ctx, &discovery.AggregatedDiscoveryService_ServiceDesc.Streams[1],
		discovery.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName, grpc.ForceCodecV2(newCodec()))
	if err != nil {
		return fmt.Errorf("open DeltaAggregatedResources: %w", err)
	}
	for _, req := range c.initialRequests() {
		if err := stream.SendMsg(req); err != nil {
			return fmt.Errorf("send initial request for %s: %w", req.TypeUrl, err)
		}
	}
	// One goroutine sends (Subscribe requests); this one receives and ACKs
	// through the same channel, so Send is never called concurrently.
	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case req := <-c.send:
				if err := stream.SendMsg(req); err != nil {
					sendErr <- fmt.Errorf("send request for %s: %w", req.TypeUrl, err)
					return
				}
			}
		}
	}()
	for {
		resp := &response{}
		if err := stream.RecvMsg(resp); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		ack := c.handle(resp)
		select {
		case c.send <- ack:
		case err := <-sendErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// handle applies one response and returns its ACK or NACK.
func (c *Client) handle(resp *response) *discovery.DeltaDiscoveryRequest {
	names := detach(resp)
	typ := resp.TypeURL
	ack := &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.Nonce}
	d := Delta{TypeURL: typ, Updated: resp.Resources, Removed: resp.Removed}
	if err := c.cfg.Handler(d); err != nil {
		c.log.Warn("rejecting config", zap.String("type", typ), zap.String("nonce", resp.Nonce), zap.Error(err))
		ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		return ack
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.versions[typ]
	if h == nil {
		h = &held{m: map[string]string{}}
		c.versions[typ] = h
	}
	h.apply(resp.Resources, names, resp.Removed)
	return ack
}

// detach copies the strings of resp that handlers and held may keep (each
// resource's name, version and aliases, the removed names and the type)
// into one string and points resp at it, so that none of them keeps the
// frames the response was decoded from alive. It returns the names and
// versions as a list (see held). The offsets fit in 32 bits: gRPC's
// length prefix bounds a message to 4 GiB.
func detach(resp *response) list {
	rs := resp.Resources
	n := len(resp.TypeURL)
	for i := range rs {
		n += len(rs[i].Name) + len(rs[i].Version)
		for _, a := range rs[i].Aliases {
			n += len(a)
		}
	}
	for _, r := range resp.Removed {
		n += len(r)
	}
	var sb strings.Builder
	sb.Grow(n)
	ends := make([]uint32, 0, 2*len(rs))
	for i := range rs {
		sb.WriteString(rs[i].Name)
		ends = append(ends, uint32(sb.Len()))
		sb.WriteString(rs[i].Version)
		ends = append(ends, uint32(sb.Len()))
	}
	for i := range rs {
		for _, a := range rs[i].Aliases {
			sb.WriteString(a)
		}
	}
	for _, r := range resp.Removed {
		sb.WriteString(r)
	}
	sb.WriteString(resp.TypeURL)
	l := list{all: sb.String(), ends: ends}
	for i := range rs {
		rs[i].Name, rs[i].Version = l.at(i)
	}
	// The rest follows the names and versions in the order written.
	off := 0
	if len(ends) > 0 {
		off = int(ends[len(ends)-1])
	}
	take := func(s string) string {
		s, off = l.all[off:off+len(s)], off+len(s)
		return s
	}
	for i := range rs {
		for j, a := range rs[i].Aliases {
			rs[i].Aliases[j] = take(a)
		}
	}
	for j, r := range resp.Removed {
		resp.Removed[j] = take(r)
	}
	resp.TypeURL = take(resp.TypeURL)
	return l
}

// held is what the client holds of one type, name -> version. A large
// response to a client holding nothing (the full push, 11,000 resources) is
// kept as its list of resources rather than copied into a map: the map is
// needed only to reconnect (initial_resource_versions) or for Versions, and
// filling it was a tenth of a client's CPU for a full push. Later changes
// go to m over that list, and the list is folded into m when m grows or
// the map is asked for.
type held struct {
	m    map[string]string
	base list                // also held, unless named in m or gone
	gone map[string]struct{} // removed from base
}

// list is the names and versions of a response (see detach): all their
// bytes in one string and, per resource, where its name and its version
// end. It holds no pointers for the garbage collector to follow but one:
// 8 bytes per resource, where a pair of strings is 32 and two pointers.
type list struct {
	all  string
	ends []uint32 // name end, version end; per resource
}

func (l *list) len() int { return len(l.ends) / 2 }

// at returns resource i's name and version.
func (l *list) at(i int) (name, version string) {
	start := uint32(0)
	if i > 0 {
		start = l.ends[2*i-1]
	}
	n, v := l.ends[2*i], l.ends[2*i+1]
	return l.all[start:n], l.all[n:v]
}

// foldAt is the size above which a response to a client holding nothing is
// kept as a list.
const foldAt = 1024

func (h *held) apply(upd []Resource, names list, removed []string) {
	if h.base.ends == nil && len(h.m) == 0 && len(removed) == 0 && len(upd) >= foldAt {
		h.base = names
		return
	}
	for i := range upd {
		h.m[upd[i].Name] = upd[i].Version
		if h.gone != nil {
			delete(h.gone, upd[i].Name)
		}
	}
	for _, n := range removed {
		delete(h.m, n)
		if h.base.ends != nil {
			if h.gone == nil {
				h.gone = map[string]struct{}{}
			}
			h.gone[n] = struct{}{}
		}
	}
	if h.base.ends != nil && len(h.m)+len(h.gone) > h.base.len()/4 {
		h.flatten()
	}
}

// flatten folds base into m and returns m.
func (h *held) flatten() map[string]string {
	if h == nil {
		return nil
	}
	if h.base.ends == nil {
		return h.m
	}
	m := make(map[string]string, h.base.len()+len(h.m))
	for i := range h.base.len() {
		name, version := h.base.at(i)
		if _, gone := h.gone[name]; !gone {
			m[name] = version
		}
	}
	maps.Copy(m, h.m)
	h.m, h.base, h.gone = m, list{}, nil
	return m
}

// Validate checks a Config.
func (cfg Config) Validate() error {
	var errs []error
	if cfg.Handler == nil {
		errs = append(errs, errors.New("xdsclient: Config.Handler is required"))
	}
	if cfg.Conn == nil {
		errs = append(errs, errors.New("xdsclient: Config.Conn is required"))
	}
	if len(cfg.Subscriptions) == 0 {
		errs = append(errs, errors.New("xdsclient: Config.Subscriptions is empty"))
	}
	for i, s := range cfg.Subscriptions {
		if s.TypeURL == "" {
			errs = append(errs, fmt.Errorf("xdsclient: Config.Subscriptions[%d].TypeURL is empty", i))
		}
	}
	return errors.Join(errs...)
}
