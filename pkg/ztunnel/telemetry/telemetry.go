// Package telemetry is ztunnel's L4 telemetry: Istio's TCP metrics
// (istio_tcp_connections_opened_total, istio_tcp_connections_closed_total,
// istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total) with Istio's
// label set, and the one-line-per-connection access log, following
// istio-ambient-facts §7 (zt:src/proxy/metrics.rs).
//
// The proxy (pkg/ztunnel) reports each connection through a Metrics; the
// app (pkg/ztunnel/app) serves the registry on 15020.
package telemetry

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"istio.io/istio/pkg/workloadapi"
)

// LabelNames are Istio's CommonTrafficLabels, in Istio's order.
var LabelNames = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision", "destination_workload_namespace",
	"destination_principal", "destination_app", "destination_version", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Reporter values.
const (
	Source      = "source"      // outbound, reported by the client's ztunnel
	Destination = "destination" // inbound, reported by the server's ztunnel
)

// Response flags (Istio's values).
const (
	FlagNone    = "-"
	FlagDeny    = "DENY"
	FlagConnect = "CONNECT"
)

const unknown = "unknown"

// Metrics holds the TCP counters. Safe for concurrent use.
type Metrics struct {
	opened, closed, sent, received *prometheus.CounterVec
}

// NewMetrics registers the counters with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	mk := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, LabelNames)
	}
	m := &Metrics{
		opened:   mk("istio_tcp_connections_opened_total", "The total number of TCP connections opened"),
		closed:   mk("istio_tcp_connections_closed_total", "The total number of TCP connections closed"),
		sent:     mk("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection"),
		received: mk("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection"),
	}
	for _, c := range []prometheus.Collector{m.opened, m.closed, m.sent, m.received} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Conn describes one proxied connection for metrics and the access log.
type Conn struct {
	Reporter      string
	Src, Dst      string // addresses as text
	HBONETarget   string // :authority, when over HBONE
	SrcWorkload   *workloadapi.Workload
	SrcIdentity   spiffeid.ID // the peer's verified identity (inbound) or ours (outbound)
	DstWorkload   *workloadapi.Workload
	DstService    *workloadapi.Service
	DstIdentity   spiffeid.ID
	MutualTLS     bool
	Start         time.Time
	ResponseFlags string
	// Overrides, if set, are the Telemetry metrics overrides that apply
	// (a waypoint's).
	Overrides *Overrides
}

func or(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return unknown
	}
	return id.String()
}

func workloadName(w *workloadapi.Workload) string {
	if w.GetWorkloadName() != "" {
		return w.GetWorkloadName()
	}
	return w.GetName()
}

// labels renders c as LabelNames values.
func (c *Conn) labels() []string {
	sec := unknown
	if c.MutualTLS {
		sec = "mutual_tls"
	}
	flags := c.ResponseFlags
	if flags == "" {
		flags = FlagNone
	}
	svcName, svcNS := "", ""
	if s := c.DstService; s != nil {
		svcName, svcNS = s.GetName(), s.GetNamespace()
	}
	sw, dw := c.SrcWorkload, c.DstWorkload
	return []string{
		c.Reporter,
		or(workloadName(sw)), or(sw.GetCanonicalName()), or(sw.GetCanonicalRevision()), or(sw.GetNamespace()),
		idString(c.SrcIdentity), or(sw.GetCanonicalName()), or(sw.GetCanonicalRevision()), or(sw.GetClusterId()),
		or(c.DstService.GetHostname()), or(svcNS), or(svcName),
		or(workloadName(dw)), or(dw.GetCanonicalName()), or(dw.GetCanonicalRevision()), or(dw.GetNamespace()),
		idString(c.DstIdentity), or(dw.GetCanonicalName()), or(dw.GetCanonicalRevision()), or(dw.GetClusterId()),
		"tcp", flags, sec,
	}
}

// Opened counts c as opened. A nil Metrics does nothing.
func (m *Metrics) Opened(c *Conn) {
	if m != nil && !c.Overrides.Off(MetricTCPOpened) {
		m.opened.WithLabelValues(c.Overrides.Labels(MetricTCPOpened, LabelNames, c.labels())...).Inc()
	}
}

// Closed counts c as closed with its bytes: received is what the client
// sent (request direction), sent what it got back (response direction), as
// Istio defines them for both reporters.
func (m *Metrics) Closed(c *Conn, received, sent int64) {
	if m == nil {
		return
	}
	l, o := c.labels(), c.Overrides
	if !o.Off(MetricTCPClosed) {
		m.closed.WithLabelValues(o.Labels(MetricTCPClosed, LabelNames, l)...).Inc()
	}
	if !o.Off(MetricTCPRecvedBytes) {
		m.received.WithLabelValues(o.Labels(MetricTCPRecvedBytes, LabelNames, l)...).Add(float64(received))
	}
	if !o.Off(MetricTCPSentBytes) {
		m.sent.WithLabelValues(o.Labels(MetricTCPSentBytes, LabelNames, l)...).Add(float64(sent))
	}
}

// Log writes the access-log line for a finished connection, with ztunnel's
// field names: bytes_sent is what the reporting side's client sent.
func Log(log *zap.Logger, c *Conn, clientSent, clientRecv int64, err error) {
	direction := "outbound"
	if c.Reporter == Destination {
		direction = "inbound"
	}
	fields := []zap.Field{
		zap.String("src.addr", c.Src),
		zap.String("src.workload", workloadName(c.SrcWorkload)),
		zap.String("src.namespace", c.SrcWorkload.GetNamespace()),
		zap.String("src.identity", idOrEmpty(c.SrcIdentity)),
		zap.String("dst.addr", c.Dst),
		zap.String("dst.hbone_addr", c.HBONETarget),
		zap.String("dst.service", c.DstService.GetHostname()),
		zap.String("dst.workload", workloadName(c.DstWorkload)),
		zap.String("dst.namespace", c.DstWorkload.GetNamespace()),
		zap.String("dst.identity", idOrEmpty(c.DstIdentity)),
		zap.String("direction", direction),
		zap.Int64("bytes_sent", clientSent),
		zap.Int64("bytes_recv", clientRecv),
		zap.String("duration", durationMS(time.Since(c.Start))),
	}
	if c.ResponseFlags != "" && c.ResponseFlags != FlagNone {
		fields = append(fields, zap.String("response_flags", c.ResponseFlags))
	}
	if err != nil {
		log.Error("connection complete", append(fields, zap.Error(err))...)
		return
	}
	log.Info("connection complete", fields...)
}

func idOrEmpty(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

func durationMS(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}
