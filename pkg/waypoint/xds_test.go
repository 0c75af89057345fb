package waypoint

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

type bearerToken string

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearerToken) RequireTransportSecurity() bool { return false }

// TestConfigFromXDSNackKeepsLastGood: ServiceConfigs served by the real
// xDS server reach the route table; a bad one (invalid regex) is NACKed
// with the resource and field named, and traffic keeps the last good
// routes until a good config replaces them.
func TestConfigFromXDSNackKeepsLastGood(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	m.addService(reviews, "10.0.0.1")
	m.addService(reviewsV1, "10.0.0.2")
	m.addService(reviewsV2, "10.0.0.3")
	m.addPod("reviews-v1", reviewsV1, text("v1"))
	m.addPod("reviews-v2", reviewsV2, text("v2"))

	ctx, cancel := context.WithCancel(context.Background())
	srv, err := xds.New(xds.Options{
		Authenticator: xds.NewFakeAuthenticator(map[string]xds.Identity{"wp": {Namespace: testNS, ServiceAccount: "waypoint"}}),
		Logger:        zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Debounce:      time.Millisecond, MaxDebounce: 10 * time.Millisecond, ShutdownGrace: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Start(ctx) })
	wg.Go(func() { _ = srv.Serve(ctx, lis) })
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearerToken("wp")))
	if err != nil {
		t.Fatal(err)
	}
	var nackMu sync.Mutex
	var nacks []string
	client, err := xdsclient.New(xdsclient.Config{
		Conn:          conn,
		Subscriptions: []xdsclient.Subscription{{TypeURL: ServiceConfigTypeURL}},
		Handler: func(d xdsclient.Delta) error {
			err := m.routes.Handle(d)
			if err != nil {
				nackMu.Lock()
				nacks = append(nacks, err.Error())
				nackMu.Unlock()
			}
			return err
		},
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = client.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait(); _ = conn.Close() })

	if model.WaypointConfigTypeURL != ServiceConfigTypeURL {
		t.Fatalf("type URLs differ: model %s, waypoint %s", model.WaypointConfigTypeURL, ServiceConfigTypeURL)
	}
	const name = testNS + "/" + reviews
	push := func(to string, headerRegex string) {
		route := &waypointv1alpha1.HTTPRoute{Name: "HTTPRoute/demo/reviews/0",
			Backends: []*waypointv1alpha1.WeightedBackend{backend(to, 1)}}
		if headerRegex != "" {
			route.Matches = []*waypointv1alpha1.HTTPMatch{{Headers: []*waypointv1alpha1.StringMatch{
				{Name: "x-user", Type: waypointv1alpha1.StringMatch_REGEX, Value: headerRegex}}}}
		}
		srv.Update(model.Resources{WaypointConfigs: map[string]*waypointv1alpha1.ServiceConfig{
			name: serviceConfig(reviews, waypointv1alpha1.Protocol_HTTP, route)}})
	}
	c := m.httpClient(false)
	servedBy := func(want string) func() error {
		return func() error {
			code, from, _, err := tryGet(t, c, "http://10.0.0.1/", map[string]string{"x-user": "anna"})
			if err != nil {
				return err
			}
			if code != 200 || from != want {
				return errorf("got %d from %q, want 200 from %q", code, from, want)
			}
			return nil
		}
	}

	push(reviewsV1, "")
	waitFor(t, 10*time.Second, "routes to v1 from xDS", servedBy("reviews-v1"))

	push(reviewsV2, "(unclosed")
	waitFor(t, 10*time.Second, "NACK of the bad regex", func() error {
		nackMu.Lock()
		defer nackMu.Unlock()
		for _, n := range nacks {
			if strings.Contains(n, name) && strings.Contains(n, "ports[0].http_routes[0].matches[0].headers[0].value") && strings.Contains(n, "bad regex") {
				return nil
			}
		}
		return errorf("nacks %q, want one naming %s and the header value", nacks, name)
	})
	waitFor(t, 10*time.Second, "server sees the NACK", func() error {
		for _, cs := range srv.Clients() {
			if ts := cs.Types[ServiceConfigTypeURL]; strings.Contains(ts.NackError, "bad regex") {
				return nil
			}
		}
		return errorf("no client status with the NACK: %+v", srv.Clients())
	})
	if err := servedBy("reviews-v1")(); err != nil {
		t.Errorf("after the NACK: %v (the last good config must stay)", err)
	}

	push(reviewsV2, "an.*")
	waitFor(t, 10*time.Second, "routes to v2 after a good config", servedBy("reviews-v2"))
}
