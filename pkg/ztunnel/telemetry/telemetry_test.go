package telemetry

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"
)

func TestMetricsLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{Reporter: Destination, MutualTLS: true,
		SrcWorkload: &workloadapi.Workload{Name: "sleep-1", WorkloadName: "sleep", Namespace: "a", CanonicalName: "sleep", CanonicalRevision: "v1"},
		SrcIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/sleep"),
		DstWorkload: &workloadapi.Workload{Name: "web-1", Namespace: "b"},
		DstService:  &workloadapi.Service{Name: "web", Namespace: "b", Hostname: "web.b.svc.cluster.local"},
		DstIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/web")}
	m.Opened(c)
	m.Closed(c, 10, 20)
	want := `
# HELP istio_tcp_received_bytes_total The size of total bytes received during request in case of a TCP connection
# TYPE istio_tcp_received_bytes_total counter
istio_tcp_received_bytes_total{connection_security_policy="mutual_tls",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="spiffe://cluster.local/ns/b/sa/web",destination_service="web.b.svc.cluster.local",destination_service_name="web",destination_service_namespace="b",destination_version="unknown",destination_workload="web-1",destination_workload_namespace="b",reporter="destination",request_protocol="tcp",response_flags="-",source_app="sleep",source_canonical_revision="v1",source_canonical_service="sleep",source_cluster="unknown",source_principal="spiffe://cluster.local/ns/a/sa/sleep",source_version="v1",source_workload="sleep",source_workload_namespace="a"} 10
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "istio_tcp_received_bytes_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.sent); got != 20 {
		t.Errorf("sent = %v, want 20", got)
	}
	// A nil Metrics is a no-op.
	var none *Metrics
	none.Opened(c)
	none.Closed(c, 1, 1)
}
