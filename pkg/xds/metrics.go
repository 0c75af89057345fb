package xds

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics uses istiod's metric names where one exists, so existing Istio
// dashboards keep working.
type metrics struct {
	nacks            *prometheus.CounterVec
	pushes           *prometheus.CounterVec
	responses        *prometheus.CounterVec
	resourcesChanged *prometheus.CounterVec
	bytesSent        *prometheus.CounterVec
	authFailures     prometheus.Counter
	badRequests      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, clients func() float64) (*metrics, error) {
	m := &metrics{
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_total_xds_rejects",
			Help: "Total number of xDS responses rejected (NACKed) by clients, by type URL.",
		}, []string{"type"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_config_updates_total",
			Help: "Number of debounced snapshot changes written to the xDS caches, by type URL.",
		}, []string{"type"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_pushes",
			Help: "Number of delta xDS responses sent to clients, by type URL.",
		}, []string{"type"}),
		resourcesChanged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_resources_changed_total",
			Help: "Number of resources added, updated or removed in the xDS caches, by type URL.",
		}, []string{"type"}),
		bytesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_sent_bytes_total",
			Help: "Bytes of serialized resources sent to xDS clients, by type URL.",
		}, []string{"type"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pilot_xds_auth_failures_total",
			Help: "Number of xDS streams refused because authentication failed.",
		}),
		badRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pilot_xds_bad_requests_total",
			Help: "Number of xDS streams ended for requesting an unsupported type.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{
		m.nacks, m.pushes, m.responses, m.resourcesChanged, m.bytesSent, m.authFailures, m.badRequests,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pilot_xds",
			Help: "Number of xDS clients connected to this istiod-lite.",
		}, clients),
	} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
