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

// TestOverrides: disabled TCP metrics are not recorded and removed labels
// are reported empty, the others as before; the label values the caller
// passed are not modified.
func TestOverrides(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{Reporter: Destination, MutualTLS: true,
		SrcIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/sleep"),
		Overrides: &Overrides{
			Disabled: map[string]bool{MetricTCPOpened: true, MetricTCPSentBytes: true},
			Removed:  map[string]map[string]bool{MetricTCPRecvedBytes: {"source_principal": true, "reporter": true}},
		}}
	m.Opened(c)
	m.Closed(c, 10, 20)
	if n := testutil.CollectAndCount(m.opened); n != 0 {
		t.Errorf("%d opened series, want none (disabled)", n)
	}
	if n := testutil.CollectAndCount(m.sent); n != 0 {
		t.Errorf("%d sent-bytes series, want none (disabled)", n)
	}
	if got := testutil.ToFloat64(m.closed.WithLabelValues(c.labels()...)); got != 1 {
		t.Errorf("closed with the full labels = %v, want 1", got)
	}
	blank := c.labels()
	blank[0], blank[5] = "", "" // reporter, source_principal
	if got := testutil.ToFloat64(m.received.WithLabelValues(blank...)); got != 10 {
		t.Errorf("received bytes without reporter and source_principal = %v, want 10", got)
	}
	if n := testutil.CollectAndCount(m.received); n != 1 {
		t.Errorf("%d received-bytes series, want 1", n)
	}
	l := c.labels()
	if got := c.Overrides.Labels(MetricTCPRecvedBytes, LabelNames, l); &got[0] == &l[0] || l[0] != Destination {
		t.Error("Labels modified the caller's values instead of a copy")
	}
	var none *Overrides
	if none.Off(MetricTCPOpened) || &none.Labels(MetricTCPOpened, LabelNames, l)[0] != &l[0] {
		t.Error("a nil Overrides must change nothing")
	}
}
