package telemetry

// Istio's names of the metrics (Telemetry's MetricSelector.IstioMetric)
// that Overrides select.
const (
	MetricRequestCount   = "REQUEST_COUNT"
	MetricRequestDur     = "REQUEST_DURATION"
	MetricTCPOpened      = "TCP_OPENED_CONNECTIONS"
	MetricTCPClosed      = "TCP_CLOSED_CONNECTIONS"
	MetricTCPSentBytes   = "TCP_SENT_BYTES"
	MetricTCPRecvedBytes = "TCP_RECEIVED_BYTES"
)

// MetricNames names every metric Overrides can select.
var MetricNames = []string{MetricRequestCount, MetricRequestDur, MetricTCPOpened, MetricTCPClosed, MetricTCPSentBytes, MetricTCPRecvedBytes}

// Overrides are Telemetry metrics overrides (a waypoint's): metrics not
// recorded, and labels reported with an empty value, which Prometheus
// treats as absent, so series aggregate over them. Keyed by Istio's metric
// names. A nil *Overrides changes nothing; an Overrides is not modified
// once in use.
type Overrides struct {
	Disabled map[string]bool
	Removed  map[string]map[string]bool // metric -> label names
}

// Off tells whether metric is not to be recorded.
func (o *Overrides) Off(metric string) bool {
	return o != nil && o.Disabled[metric]
}

// Labels returns values (of the label names) with metric's removed labels
// emptied: values itself when none is, else a copy.
func (o *Overrides) Labels(metric string, names, values []string) []string {
	if o == nil || len(o.Removed[metric]) == 0 {
		return values
	}
	rm, out, copied := o.Removed[metric], values, false
	for i, n := range names {
		if rm[n] {
			if !copied {
				out, copied = append([]string(nil), values...), true
			}
			out[i] = ""
		}
	}
	return out
}
