package waypoint

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/ztunnel/telemetry"
)

// Reporter is the reporter label of every waypoint metric (Istio's value for
// waypoint proxies).
const Reporter = "waypoint"

// Response flags (Envoy's, as Istio reports them).
const (
	flagNone        = "-"
	flagNoRoute     = "NR"   // no route matched: 404
	flagNoHealthy   = "UH"   // no ready endpoint: 503
	flagConnect     = "UF"   // upstream connect failure: 503
	flagTimeout     = "UT"   // request or try timeout: 504
	flagRetryLimit  = "URX"  // retries exhausted on a retriable status
	flagReset       = "UR"   // the upstream reset or failed otherwise: 503
	flagBadBackend  = "IB"   // invalid or no backend: 500 (our flag; Envoy has no exact one)
	flagDownstream  = "DC"   // the client went away
	flagDenied      = "RBAC" // an AuthorizationPolicy denied it: 403
	flagRateLimited = "RL"   // local rate limit: 429
	flagFaultAbort  = "FI"   // fault injection answered
	flagFaultDelay  = "DI"   // fault injection delayed it
	flagOverflow    = "UO"   // over a connection-pool limit: 503
)

// requestLabels are Istio's request metric labels, in Istio's order
// (istio/proxy istio_stats.cc): the common traffic labels with
// response_code and grpc_response_status after request_protocol.
var requestLabels = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision", "destination_workload_namespace",
	"destination_principal", "destination_app", "destination_version", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// durationBuckets are Istio's default buckets for
// istio_request_duration_milliseconds.
var durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// Metrics holds the waypoint's Istio metrics: request counts and durations
// for HTTP and gRPC, and the TCP metrics of L4 (TCPRoute) traffic. A nil
// *Metrics records nothing. Safe for concurrent use.
//
// Resolving 25 label values per request costs more than the request's
// own bookkeeping, so the counter and histogram of each distinct label set
// are cached (series, keyed by the record minus its duration). The cache is
// dropped whole when it reaches maxCachedSeries, which bounds it as
// workloads come and go.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	tcp      *telemetry.Metrics

	mu     sync.Mutex
	series map[seriesKey]*series
}

const maxCachedSeries = 10000

type seriesKey struct {
	srcWorkload, dstWorkload *workloadapi.Workload
	dstService               *workloadapi.Service
	srcIdentity, dstIdentity spiffeid.ID
	dstHost, dstNS, protocol string
	code                     int
	grpcStatus, flags        string
	overrides                *telemetry.Overrides // the series' labels depend on them
}

type series struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// NewMetrics registers the waypoint's metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		series:   map[seriesKey]*series{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Total requests"}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds",
			Help: "Duration of requests in milliseconds", Buckets: durationBuckets}, requestLabels),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	tcp, err := telemetry.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	m.tcp = tcp
	return m, nil
}

// requestRecord is what one request reports.
type requestRecord struct {
	srcWorkload *workloadapi.Workload
	srcIdentity spiffeid.ID
	dstService  *workloadapi.Service
	dstHost     string // destination service hostname when dstService is unknown
	dstNS       string
	dstWorkload *workloadapi.Workload
	dstIdentity spiffeid.ID
	protocol    string // http or grpc
	code        int
	grpcStatus  string
	flags       string
	durationMS  float64
}

func or(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func idLabel(id spiffeid.ID) string {
	if id.IsZero() {
		return "unknown"
	}
	return id.String()
}

func workloadName(w *workloadapi.Workload) string {
	if w.GetWorkloadName() != "" {
		return w.GetWorkloadName()
	}
	return w.GetName()
}

func (r *requestRecord) labels() []string {
	svcHost, svcNS, svcName := r.dstHost, r.dstNS, ""
	if s := r.dstService; s != nil {
		svcHost, svcNS, svcName = s.GetHostname(), s.GetNamespace(), s.GetName()
	}
	flags := r.flags
	if flags == "" {
		flags = flagNone
	}
	grpcStatus := r.grpcStatus
	if grpcStatus == "" {
		grpcStatus = "-"
	}
	sw, dw := r.srcWorkload, r.dstWorkload
	return []string{
		Reporter,
		or(workloadName(sw)), or(sw.GetCanonicalName()), or(sw.GetCanonicalRevision()), or(sw.GetNamespace()),
		idLabel(r.srcIdentity), or(sw.GetCanonicalName()), or(sw.GetCanonicalRevision()), or(sw.GetClusterId()),
		or(svcHost), or(svcNS), or(svcName),
		or(workloadName(dw)), or(dw.GetCanonicalName()), or(dw.GetCanonicalRevision()), or(dw.GetNamespace()),
		idLabel(r.dstIdentity), or(dw.GetCanonicalName()), or(dw.GetCanonicalRevision()), or(dw.GetClusterId()),
		r.protocol, strconv.Itoa(r.code), grpcStatus, flags, "mutual_tls",
	}
}

// request records a finished request, with the Telemetry metrics
// overrides o (nil: none).
func (m *Metrics) request(r *requestRecord, o *telemetry.Overrides) {
	if m == nil {
		return
	}
	k := seriesKey{r.srcWorkload, r.dstWorkload, r.dstService, r.srcIdentity, r.dstIdentity,
		r.dstHost, r.dstNS, r.protocol, r.code, r.grpcStatus, r.flags, o}
	m.mu.Lock()
	s := m.series[k]
	m.mu.Unlock()
	if s == nil {
		l := r.labels()
		s = &series{}
		if !o.Off(telemetry.MetricRequestCount) {
			s.count = m.requests.WithLabelValues(o.Labels(telemetry.MetricRequestCount, requestLabels, l)...)
		}
		if !o.Off(telemetry.MetricRequestDur) {
			s.duration = m.duration.WithLabelValues(o.Labels(telemetry.MetricRequestDur, requestLabels, l)...)
		}
		m.mu.Lock()
		if len(m.series) >= maxCachedSeries {
			m.series = map[seriesKey]*series{}
		}
		m.series[k] = s
		m.mu.Unlock()
	}
	if s.count != nil {
		s.count.Inc()
	}
	if s.duration != nil {
		s.duration.Observe(r.durationMS)
	}
}

func (m *Metrics) tcpMetrics() *telemetry.Metrics {
	if m == nil {
		return nil
	}
	return m.tcp
}
