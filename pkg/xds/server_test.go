package xds_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const goodToken = "good-token"

// env is a server on loopback with its push loop running.
type env struct {
	srv  *xds.Server
	reg  *prometheus.Registry
	addr string
}

func startServer(t testing.TB, debounce time.Duration) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	reg := prometheus.NewRegistry()
	logger := zap.NewNop()
	if _, bench := t.(*testing.B); !bench {
		logger = zaptest.NewLogger(t)
	}
	srv, err := xds.New(xds.Options{
		Authenticator: xds.NewFakeAuthenticator(map[string]xds.Identity{goodToken: {Namespace: "istio-system", ServiceAccount: "ztunnel"}}),
		Logger:        logger,
		Registerer:    reg,
		Debounce:      debounce,
		ShutdownGrace: time.Second,
	})
	if err != nil {
		t.Fatalf("xds.New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Start(ctx); err != nil {
			t.Errorf("Start: %v", err)
		}
	})
	wg.Go(func() {
		if err := srv.Serve(ctx, lis); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &env{srv: srv, reg: reg, addr: lis.Addr().String()}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func dial(t testing.TB, addr, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(token)))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// recorder collects the deltas a client applied; reject names resources
// the handler refuses (NACK).
type recorder struct {
	ch     chan xdsclient.Delta
	reject string
}

func newRecorder() *recorder { return &recorder{ch: make(chan xdsclient.Delta, 100)} }

func (r *recorder) handle(d xdsclient.Delta) error {
	for _, res := range d.Updated {
		if res.Name == r.reject {
			return fmt.Errorf("resource %s is not acceptable", res.Name)
		}
	}
	r.ch <- d
	return nil
}

// next returns the next delta of typeURL, skipping others.
func (r *recorder) next(t *testing.T, typeURL string) xdsclient.Delta {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case d := <-r.ch:
			if d.TypeURL == typeURL {
				return d
			}
		case <-timeout:
			t.Fatalf("no %s delta within 10s", typeURL)
		}
	}
}

// nextChange returns the next delta of typeURL that updates or removes
// something, skipping the empty answers a server owes to new requests.
func (r *recorder) nextChange(t *testing.T, typeURL string) xdsclient.Delta {
	t.Helper()
	for {
		if d := r.next(t, typeURL); len(d.Updated) > 0 || len(d.Removed) > 0 {
			return d
		}
	}
}

func runClient(t testing.TB, ctx context.Context, c *xdsclient.Client) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.Run(ctx) })
	stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(stop)
	return stop
}

func newClient(t testing.TB, conn *grpc.ClientConn, rec *recorder, subs ...xdsclient.Subscription) *xdsclient.Client {
	t.Helper()
	if len(subs) == 0 {
		subs = []xdsclient.Subscription{{TypeURL: model.AddressTypeURL}, {TypeURL: model.AuthorizationTypeURL}}
	}
	c, err := xdsclient.New(xdsclient.Config{
		Conn:           conn,
		Node:           &core.Node{Id: "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"},
		Subscriptions:  subs,
		Handler:        rec.handle,
		InitialBackoff: 10 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("xdsclient.New: %v", err)
	}
	return c
}

func workload(name, ip string, healthy bool) *workloadapi.Address {
	st := workloadapi.WorkloadStatus_HEALTHY
	if !healthy {
		st = workloadapi.WorkloadStatus_UNHEALTHY
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: model.PodUID("Kubernetes", "demo", name), Name: name, Namespace: "demo",
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, Status: st,
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
	}}}
}

func resources(addrs ...*workloadapi.Address) model.Resources {
	r := model.Resources{Addresses: map[string]*workloadapi.Address{}, Authorizations: map[string]*security.Authorization{}}
	for _, a := range addrs {
		r.Addresses[model.ResourceName(a)] = a
	}
	return r
}

func uid(name string) string { return model.PodUID("Kubernetes", "demo", name) }

func names(d xdsclient.Delta) []string {
	var out []string
	for _, r := range d.Updated {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func decodeWorkload(t *testing.T, r xdsclient.Resource) *workloadapi.Workload {
	t.Helper()
	a := &workloadapi.Address{}
	if err := r.UnmarshalTo(a); err != nil {
		t.Fatalf("decode %s: %v", r.Name, err)
	}
	return a.GetWorkload()
}

// metric reads one sample from the registry, or -1 when absent.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// eventually polls cond until it holds or 10s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestAddUpdateRemove(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	// The client connects before the first snapshot: its stream is held,
	// so its first delta is the real state, not an empty one.
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec))
	e.srv.Update(resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", true)))

	d := rec.next(t, model.AddressTypeURL)
	if got, want := names(d), sorted([]string{uid("a"), uid("b")}); !slices.Equal(got, want) {
		t.Fatalf("first delta updated %v, want %v", got, want)
	}

	// a changes, b goes, c comes; only those travel.
	e.srv.Update(resources(workload("a", "10.0.0.1", false), workload("c", "10.0.0.3", true)))
	d = rec.next(t, model.AddressTypeURL)
	if got, want := names(d), sorted([]string{uid("a"), uid("c")}); !slices.Equal(got, want) {
		t.Errorf("second delta updated %v, want %v", got, want)
	}
	if got, want := d.Removed, []string{uid("b")}; !slices.Equal(got, want) {
		t.Errorf("second delta removed %v, want %v", got, want)
	}
	for _, r := range d.Updated {
		if r.Name == uid("a") {
			if got := decodeWorkload(t, r).GetStatus(); got != workloadapi.WorkloadStatus_UNHEALTHY {
				t.Errorf("a status = %v, want UNHEALTHY", got)
			}
		}
	}

	// An identical snapshot sends nothing; the next change proves it.
	e.srv.Update(resources(workload("a", "10.0.0.1", false), workload("c", "10.0.0.3", true)))
	pol := &security.Authorization{Name: "deny", Namespace: "demo", Action: security.Action_DENY}
	r := resources(workload("a", "10.0.0.1", false), workload("c", "10.0.0.3", true))
	r.Authorizations["demo/deny"] = pol
	e.srv.Update(r)
	d = rec.next(t, model.AuthorizationTypeURL)
	if len(d.Updated) == 0 {
		// The first Authorization delta may be the empty initial state.
		d = rec.next(t, model.AuthorizationTypeURL)
	}
	if got := names(d); !slices.Equal(got, []string{"demo/deny"}) {
		t.Errorf("authorization delta updated %v, want [demo/deny]", got)
	}
	select {
	case extra := <-rec.ch:
		if extra.TypeURL == model.AddressTypeURL {
			t.Errorf("unexpected address delta for an unchanged snapshot: %v removed %v", names(extra), extra.Removed)
		}
	default:
	}
	eventually(t, "client status with ACKs", func() bool {
		cs := e.srv.Clients()
		return len(cs) == 1 && !cs[0].Types[model.AddressTypeURL].LastAck.IsZero() &&
			cs[0].NodeID != "" && cs[0].Identity.ServiceAccount == "ztunnel"
	})
}

func TestReconnectSendsOnlyChanges(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	c := newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL})
	e.srv.Update(resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", true), workload("c", "10.0.0.3", true)))
	stop := runClient(t, t.Context(), c)
	if d := rec.next(t, model.AddressTypeURL); len(d.Updated) != 3 {
		t.Fatalf("first delta has %d resources, want 3", len(d.Updated))
	}
	eventually(t, "versions recorded", func() bool { return len(c.Versions(model.AddressTypeURL)) == 3 })
	stop()

	// While the client is away: b changes, c goes, d comes, a stays.
	e.srv.Update(resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", false), workload("d", "10.0.0.4", true)))
	eventually(t, "snapshot applied", func() bool {
		return len(e.srv.Resources(model.AddressTypeURL)) == 3 &&
			e.srv.Resources(model.AddressTypeURL)[uid("d")] != nil
	})

	runClient(t, t.Context(), c) // same client: sends initial_resource_versions
	d := rec.next(t, model.AddressTypeURL)
	if got, want := names(d), sorted([]string{uid("b"), uid("d")}); !slices.Equal(got, want) {
		t.Errorf("reconnect delta updated %v, want %v (a must not be resent)", got, want)
	}
	if got, want := d.Removed, []string{uid("c")}; !slices.Equal(got, want) {
		t.Errorf("reconnect delta removed %v, want %v", got, want)
	}
}

func TestNackIsCounted(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	rec.reject = uid("bad")
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL}))
	e.srv.Update(resources(workload("good", "10.0.0.1", true)))
	rec.next(t, model.AddressTypeURL)

	e.srv.Update(resources(workload("good", "10.0.0.1", true), workload("bad", "10.0.0.9", true)))
	eventually(t, "NACK counted", func() bool {
		return metric(t, e.reg, "pilot_total_xds_rejects", map[string]string{"type": model.AddressTypeURL}) == 1
	})
	cs := e.srv.Clients()
	if len(cs) != 1 {
		t.Fatalf("Clients() = %d entries, want 1", len(cs))
	}
	ts := cs[0].Types[model.AddressTypeURL]
	if ts.LastNack.IsZero() || ts.NackError == "" || ts.SyncState() != xds.SyncStateNack {
		t.Errorf("client status %+v does not record the NACK", ts)
	}

	// Fixing the resource makes the client accept it.
	rec.reject = ""
	e.srv.Update(resources(workload("good", "10.0.0.1", true), workload("bad", "10.0.0.10", true)))
	d := rec.next(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("bad")}) {
		t.Errorf("after fix, delta updated %v, want [%s]", got, uid("bad"))
	}
}

func TestUnauthenticatedRefused(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	e.srv.Update(resources(workload("a", "10.0.0.1", true)))
	for _, tc := range []struct {
		name  string
		token string
	}{
		{"bad token", "stolen"},
		{"no token", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var conn *grpc.ClientConn
			if tc.token == "" {
				c, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				conn = c
			} else {
				conn = dial(t, e.addr, tc.token)
			}
			stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(t.Context())
			if err != nil {
				t.Fatalf("open stream: %v", err)
			}
			if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL}); err != nil && !errors.Is(err, context.Canceled) {
				t.Logf("send: %v", err) // the server may already have closed the stream
			}
			resp, err := stream.Recv()
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("Recv() = %v, %v; want code Unauthenticated", resp, err)
			}
		})
	}
	if got := metric(t, e.reg, "pilot_xds_auth_failures_total", nil); got != 2 {
		t.Errorf("auth failures = %v, want 2", got)
	}
}

func TestOnDemand(t *testing.T) {
	e := startServer(t, 10*time.Millisecond)
	rec := newRecorder()
	e.srv.Update(resources(workload("a", "10.0.0.1", true), workload("b", "10.0.0.2", true)))
	c := newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL, OnDemand: true})
	runClient(t, t.Context(), c)
	if err := c.Subscribe(t.Context(), model.AddressTypeURL, uid("b")); err != nil {
		t.Fatal(err)
	}
	d := rec.nextChange(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("b")}) {
		t.Fatalf("on-demand delta updated %v, want only [%s]", got, uid("b"))
	}
	// A change to an unwatched resource is not sent; one to b is.
	e.srv.Update(resources(workload("a", "10.0.0.1", false), workload("b", "10.0.0.2", true)))
	e.srv.Update(resources(workload("a", "10.0.0.1", false), workload("b", "10.0.0.2", false)))
	d = rec.nextChange(t, model.AddressTypeURL)
	if got := names(d); !slices.Equal(got, []string{uid("b")}) {
		t.Errorf("on-demand update delta %v, want only [%s]", got, uid("b"))
	}
}

func TestDebounceCoalescesUpdates(t *testing.T) {
	e := startServer(t, 200*time.Millisecond)
	rec := newRecorder()
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL}))
	e.srv.Update(resources(workload("a", "10.0.0.1", true)))
	rec.next(t, model.AddressTypeURL)

	// A burst of changes to one pod reaches the client as its final state:
	// the first change may be pushed at once (the server may have been idle
	// for the debounce period), the rest are held and coalesced.
	for i := range 20 {
		e.srv.Update(resources(workload("a", fmt.Sprintf("10.0.1.%d", i+1), true)))
	}
	want := netip.MustParseAddr("10.0.1.20").AsSlice()
	for deltas := 1; ; deltas++ {
		d := rec.next(t, model.AddressTypeURL)
		if len(d.Updated) != 1 {
			t.Fatalf("delta has %d resources, want 1", len(d.Updated))
		}
		got := decodeWorkload(t, d.Updated[0]).GetAddresses()[0]
		if slices.Equal(got, want) {
			break
		}
		if deltas == 2 {
			t.Fatalf("second delta of the burst has address %v, want the last update's %v", got, want)
		}
	}
	// The counter moves just after the cache update that sent the delta:
	// the initial one, at most one at the leading edge, one coalesced.
	eventually(t, "two or three cache updates (initial, leading edge, coalesced burst)", func() bool {
		got := metric(t, e.reg, "pilot_xds_config_updates_total", map[string]string{"type": model.AddressTypeURL})
		return got == 2 || got == 3
	})
}

func TestDebounceLeadingEdge(t *testing.T) {
	// A long quiet period: an update to an idle server must not wait for it.
	const debounce = 30 * time.Second
	e := startServer(t, debounce)
	rec := newRecorder()
	runClient(t, t.Context(), newClient(t, dial(t, e.addr, goodToken), rec, xdsclient.Subscription{TypeURL: model.AddressTypeURL}))
	start := time.Now()
	e.srv.Update(resources(workload("a", "10.0.0.1", true)))
	rec.next(t, model.AddressTypeURL)
	if took := time.Since(start); took >= debounce/2 {
		t.Errorf("first push to an idle server took %v, want well under the %v debounce", took, debounce)
	}
}

func TestNewRequiresAuthenticator(t *testing.T) {
	if _, err := xds.New(xds.Options{}); err == nil {
		t.Error("New without an Authenticator succeeded")
	}
}

// A client with gRPC's own proto codec (as istio's and envoy's Go clients
// decode) reads the full push and its ACK is taken: the server's
// pre-encoded full list is plain DeltaDiscoveryResponse wire format.
func TestFullPushToProtoCodecClient(t *testing.T) {
	e := startServer(t, time.Millisecond)
	var want []*workloadapi.Address
	for i := range 50 {
		want = append(want, workload(fmt.Sprintf("w%d", i), fmt.Sprintf("10.0.1.%d", i), true))
	}
	e.srv.Update(resources(want...))
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, e.addr, goodToken)).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, Node: &core.Node{Id: "ztunnel~10.0.0.9~zt.istio-system~istio-system.svc.cluster.local"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != len(want) || resp.GetNonce() == "" || resp.GetTypeUrl() != model.AddressTypeURL {
		t.Fatalf("full push: %d resources, nonce %q, type %q; want %d resources", len(resp.GetResources()), resp.GetNonce(), resp.GetTypeUrl(), len(want))
	}
	wantNames := map[string]bool{}
	for _, a := range want {
		wantNames[model.ResourceName(a)] = true
	}
	for _, r := range resp.GetResources() {
		w := decodeWorkload(t, xdsclient.Resource{Name: r.GetName(), TypeURL: r.GetResource().GetTypeUrl(), Value: r.GetResource().GetValue()})
		if !wantNames[r.GetName()] || r.GetName() != uid(w.GetName()) {
			t.Errorf("resource named %q for workload %q", r.GetName(), w.GetName())
		}
		delete(wantNames, r.GetName())
		if r.GetVersion() == "" {
			t.Errorf("resource %s without a version", r.GetName())
		}
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ACK", func() bool {
		cs := e.srv.Clients()
		return len(cs) == 1 && cs[0].Types[model.AddressTypeURL].SyncState() == xds.SyncStateSynced
	})
	// The next change travels alone.
	e.srv.Update(resources(append(want[1:], workload("w0", "10.0.1.0", false))...))
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != model.ResourceName(want[0]) {
		t.Fatalf("change: %v", resp.GetResources())
	}
	stream.CloseSend()
}
