package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/enroll"
)

// ztunnelMetricsURL is ztunnel's Prometheus endpoint: ztunnel runs on the
// node's network (hostNetwork), and the tests run on the node.
const ztunnelMetricsURL = "http://" + nodeIP + ":15020/metrics"

// echoPeerRE finds the peer address Istio's echo server saw, in its answer.
var echoPeerRE = regexp.MustCompile(`body\] IP=(\S+)`)

// TestZtunnel: with the mesh installed (istiod-lite, ztunnel, the CNI node
// agent), labelling a namespace ambient puts its running pods in the mesh
// without a restart: the client's requests to the echo Service still get
// answers, the echo server still sees the client's own pod IP as source,
// and ztunnel's metrics count the connections on both sides (reporter
// source and destination) as mutual TLS between the two pods' SPIFFE
// identities.
func TestZtunnel(t *testing.T) {
	k := newKubectl(t)
	installMesh(t, k)
	installCNI(t, k)

	ns := testNamespace(t, k, "zt")
	app := *k
	app.namespace = ns
	app.must(echoManifest("echo", "v1", 2), "apply", "-f", "-")
	app.must(clientPod, "apply", "-f", "-")
	app.must("", "rollout", "status", "deployment/echo-v1", "--timeout=120s")
	app.must("", "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")
	before := append(listPods(t, &app, "app=echo"), getPod(t, &app, "client"))

	app.must("", "label", "namespace", ns, enroll.LabelDataplaneMode+"="+enroll.DataplaneModeAmbient)
	eventually(t, 90*time.Second, "pods captured and acknowledged by ztunnel", func() error {
		for _, p := range append(listPods(t, &app, "app=echo"), getPod(t, &app, "client")) {
			if a := p.annotation(); a != enroll.RedirectionEnabled {
				return fmt.Errorf("pod %s: annotation %s=%q, want %q", p.Metadata.Name, enroll.AnnotationRedirection, a, enroll.RedirectionEnabled)
			}
		}
		return nil
	})
	for _, p := range before {
		now := getPod(t, &app, p.Metadata.Name)
		if now.Metadata.UID != p.Metadata.UID || now.restarts() != 0 {
			t.Fatalf("pod %s was replaced or restarted by capture", p.Metadata.Name)
		}
	}
	clientIP := getPod(t, &app, "client").Status.PodIP
	principal := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/default", ns)

	const requests = 10
	url := fmt.Sprintf("http://echo.%s.svc.cluster.local/", ns)
	eventually(t, 90*time.Second, "requests through the mesh answered, from the client's IP", func() error {
		out, err := app.run(t.Context(), "", "exec", "client", "--", "/usr/local/bin/client", url,
			fmt.Sprintf("--count=%d", requests), "--new-connection-per-request", "--timeout=5s")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "StatusCode=200"); n != requests {
			return fmt.Errorf("%d of %d requests answered 200:\n%s", n, requests, out)
		}
		// The echo server reports the peer it saw as IP= in its body.
		seen := echoPeerRE.FindAllStringSubmatch(out, -1)
		if len(seen) != requests {
			return fmt.Errorf("%d of %d answers report the peer IP:\n%s", len(seen), requests, out)
		}
		for _, m := range seen {
			if m[1] != clientIP {
				return fmt.Errorf("the echo server saw %s as source, want the client's pod IP %s", m[1], clientIP)
			}
		}
		return nil
	})

	// Both ends' ztunnel (here the same one) counted the connections as
	// mTLS between the two identities.
	eventually(t, 30*time.Second, "ztunnel metrics show mTLS connections client -> echo", func() error {
		series, err := scrapeZtunnel(t.Context())
		if err != nil {
			return err
		}
		want := map[string]string{
			"source_principal":               principal,
			"destination_principal":          principal,
			"source_workload_namespace":      ns,
			"destination_workload_namespace": ns,
			"connection_security_policy":     "mutual_tls",
		}
		for _, reporter := range []string{"source", "destination"} {
			want["reporter"] = reporter
			if got := series.sum("istio_tcp_connections_opened_total", want); got < requests {
				return fmt.Errorf("istio_tcp_connections_opened_total%v = %v, want >= %d", want, got, requests)
			}
		}
		return nil
	})
}

// metricSeries is a parsed Prometheus text exposition: one entry per series.
type metricSeries []struct {
	name   string
	labels map[string]string
	value  float64
}

// sum adds the values of the name's series whose labels include want.
func (s metricSeries) sum(name string, want map[string]string) float64 {
	var total float64
next:
	for _, m := range s {
		if m.name != name {
			continue
		}
		for k, v := range want {
			if m.labels[k] != v {
				continue next
			}
		}
		total += m.value
	}
	return total
}

// scrapeZtunnel reads ztunnel's metrics (Prometheus text format).
func scrapeZtunnel(ctx context.Context) (metricSeries, error) {
	return scrapeURL(ctx, ztunnelMetricsURL)
}

// scrapeZtunnelFresh reads ztunnel's metrics on a new connection: during a
// rolling restart, a kept-alive one may still lead to the old ztunnel.
func scrapeZtunnelFresh(ctx context.Context) (metricSeries, error) {
	return scrapeWith(ctx, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, ztunnelMetricsURL)
}

// scrapeURL reads a Prometheus text endpoint.
func scrapeURL(ctx context.Context, url string) (metricSeries, error) {
	return scrapeWith(ctx, http.DefaultClient, url)
}

func scrapeWith(ctx context.Context, c *http.Client, url string) (metricSeries, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics parses the series lines of the text format that the
// client_golang registry writes (label values escaped with \\, \" and \n).
func parseMetrics(r io.Reader) (metricSeries, error) {
	var out metricSeries
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		labels := map[string]string{}
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name, rest = line[:i], line[i+1:]
			for !strings.HasPrefix(rest, "}") {
				eq := strings.Index(rest, `="`)
				if eq < 0 {
					return nil, fmt.Errorf("bad series %q", line)
				}
				key := strings.TrimLeft(rest[:eq], ",")
				rest = rest[eq+2:]
				var val strings.Builder
				for {
					if rest == "" {
						return nil, fmt.Errorf("bad series %q", line)
					}
					c := rest[0]
					rest = rest[1:]
					if c == '"' {
						break
					}
					if c == '\\' && rest != "" {
						switch rest[0] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[0])
						}
						rest = rest[1:]
						continue
					}
					val.WriteByte(c)
				}
				labels[key] = val.String()
				rest = strings.TrimPrefix(rest, ",")
			}
			rest = strings.TrimSpace(rest[1:])
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			name, rest = line[:i], strings.TrimSpace(line[i+1:])
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("bad series %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("series %q: %w", line, err)
		}
		out = append(out, struct {
			name   string
			labels map[string]string
			value  float64
		}{name, labels, v})
	}
	return out, sc.Err()
}
