package waypoint

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// TestGRPC: gRPC health checks through the waypoint over h2c, with the
// status (in trailers) reaching the client and the metrics.
func TestGRPC(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	const svc = "grpc.demo.svc.cluster.local"
	m.addService(svc, "10.0.0.5")
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("demo", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	t.Cleanup(gs.Stop)
	m.addPod("grpc-a", svc, gs)
	faulty := defaultRoute(svc)
	faulty.Name = "fault"
	faulty.Matches = []*waypointv1alpha1.HTTPMatch{{Headers: []*waypointv1alpha1.StringMatch{{Name: "x-fault", Value: "abort"}}}}
	faulty.Fault = &waypointv1alpha1.Fault{Abort: &waypointv1alpha1.Fault_Abort{GrpcStatus: uint32(codes.Unavailable), FractionPerMillion: 1_000_000}}
	m.setRoutes(serviceConfig(svc, waypointv1alpha1.Protocol_GRPC, faulty, defaultRoute(svc)))

	conn, err := grpc.NewClient("passthrough:///10.0.0.5:80",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return m.tunnel(ctx, addr) }))
	if err != nil {
		t.Fatal(err)
	}
	m.cleanups = append(m.cleanups, func() { _ = conn.Close() })
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for range 5 {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "demo"})
		if err != nil {
			t.Fatalf("Check(demo): %v", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(demo) = %v, want SERVING", resp.GetStatus())
		}
	}
	_, err = client.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Check(nope) error %v, want NotFound", err)
	}
	_, err = client.Check(metadata.AppendToOutgoingContext(ctx, "x-fault", "abort"), &healthpb.HealthCheckRequest{Service: "demo"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Check with an injected abort: %v, want Unavailable", err)
	}
	// A server stream (Watch) flows through without buffering.
	w, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := w.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch first message %v, %v; want SERVING", resp, err)
	}
	hs.SetServingStatus("demo", healthpb.HealthCheckResponse_NOT_SERVING)
	if resp, err := w.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch second message %v, %v; want NOT_SERVING", resp, err)
	}
	cancel()

	waitFor(t, 5*time.Second, "grpc metrics", func() error {
		if got := m.requestCount(map[string]string{"request_protocol": "grpc", "grpc_response_status": "5", "response_code": "200"}); got != 1 {
			return errorf("grpc_response_status=5 count %v, want 1", got)
		}
		if got := m.requestCount(map[string]string{"request_protocol": "grpc", "grpc_response_status": "0"}); got != 5 {
			return errorf("grpc_response_status=0 count %v, want 5", got)
		}
		return nil
	})
}

// TestTCPRouteSplit: a TCP port forwards each connection at L4 to a
// TCPRoute backend chosen by weight.
func TestTCPRouteSplit(t *testing.T) {
	leakCheck(t)
	m := newMesh(t, meshOptions{})
	const db, dbA, dbB = "db.demo.svc.cluster.local", "db-a.demo.svc.cluster.local", "db-b.demo.svc.cluster.local"
	m.addService(db, "10.0.0.6")
	m.addService(dbA, "10.0.0.7")
	m.addService(dbB, "10.0.0.8")
	a := m.addTCPPod("db-a", dbA)
	b := m.addTCPPod("db-b", dbB)
	m.setRoutes(&waypointv1alpha1.ServiceConfig{Namespace: testNS, Hostname: db, Waypoints: []string{waypointName},
		Ports: []*waypointv1alpha1.Port{{Port: 80, Protocol: waypointv1alpha1.Protocol_TCP, TcpRoute: &waypointv1alpha1.TCPRoute{
			Name: "TCPRoute/demo/db/0", Backends: []*waypointv1alpha1.WeightedBackend{backend(dbA, 75), backend(dbB, 25)}}}}})
	const n = 400
	for range n {
		c, err := m.tunnel(t.Context(), "10.0.0.6:80")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil || (string(got) != "db-a" && string(got) != "db-b") {
			t.Fatalf("read %q, %v; want a backend's name", got, err)
		}
	}
	share := float64(a.hits.Load()) * 100 / n
	if share < 68 || share > 82 {
		t.Errorf("db-a got %.1f%% of %d connections (db-b %d), want 75 ± 7", share, n, b.hits.Load())
	}
	waitFor(t, 5*time.Second, "tcp metrics", func() error {
		if got := m.counter("istio_tcp_connections_opened_total", map[string]string{"reporter": "waypoint"}); got != n {
			return errorf("istio_tcp_connections_opened_total = %v, want %d", got, n)
		}
		if got := m.counter("istio_tcp_connections_closed_total", map[string]string{"reporter": "waypoint"}); got != n {
			return errorf("istio_tcp_connections_closed_total = %v, want %d", got, n)
		}
		return nil
	})
}
