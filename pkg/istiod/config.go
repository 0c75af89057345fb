// Package istiod assembles istiod-lite: the controller-runtime manager (leader
// election, informer cache, metrics on 15014), the mesh CA and the delta xDS
// server sharing one TLS gRPC port (15012), the model Collector, the
// waypoint deployer and the mesh route status writer (leader only), and the
// debug and health endpoints. cmd/istiod-lite parses its Config and calls Run.
package istiod

import (
	"flag"
	"os"
	"strings"
	"time"
)

// Config is every setting of istiod-lite. RegisterFlags is the one place that
// names them, with defaults and help; each flag may also come from the
// environment variable named in its help.
type Config struct {
	Namespace        string
	TrustDomain      string
	ClusterID        string
	DomainSuffix     string
	GRPCAddr         string
	MetricsAddr      string
	DebugAddr        string
	Kubeconfig       string
	LeaderElection   bool
	LeaderElectionID string
	// LeaseDuration, RenewDeadline and RetryPeriod tune leader election.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	MaxCertTTL                                time.Duration
	DefaultCertTTL                            time.Duration
	TrustedNodeAccounts                       []string
	XDSDebounce                               time.Duration
	ShutdownGrace                             time.Duration
	LogLevel                                  string
	WaypointImage                             string
	// MeshConfigFile is Istio's mesh config (MeshConfig YAML) used while the
	// ConfigMap "istio" of Namespace does not exist; "" for none.
	MeshConfigFile string
}

// RegisterFlags binds c to fs, taking defaults from the environment.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	str := func(p *string, name, env, def, help string) {
		fs.StringVar(p, name, envOr(env, def), help+" (env "+env+")")
	}
	str(&c.Namespace, "namespace", "POD_NAMESPACE", "istio-system", "namespace istiod-lite runs in; holds the CA Secret and the leader lease")
	str(&c.TrustDomain, "trust-domain", "TRUST_DOMAIN", "cluster.local", "SPIFFE trust domain of issued identities")
	str(&c.ClusterID, "cluster-id", "CLUSTER_ID", "Kubernetes", "cluster id written into workload resources")
	str(&c.DomainSuffix, "domain-suffix", "DOMAIN_SUFFIX", "cluster.local", "DNS suffix of service hostnames")
	str(&c.GRPCAddr, "grpc-addr", "GRPC_ADDR", ":15012", "TLS gRPC listener for xDS and the CA")
	str(&c.MetricsAddr, "metrics-addr", "METRICS_ADDR", ":15014", "Prometheus metrics listener")
	str(&c.DebugAddr, "debug-addr", "DEBUG_ADDR", ":8080", "debug and health listener (/ready, /healthz, /debug/...)")
	str(&c.Kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig; empty means in-cluster")
	str(&c.LeaderElectionID, "leader-election-id", "LEADER_ELECTION_ID", "istiod-lite-leader", "name of the leader election Lease")
	str(&c.WaypointImage, "waypoint-image", "WAYPOINT_IMAGE", "localhost/ambient-mesh/waypoint:dev", "image of the waypoints deployed for istio-waypoint Gateways")
	str(&c.MeshConfigFile, "mesh-config", "MESH_CONFIG_FILE", "", "Istio mesh config file (MeshConfig YAML), used while ConfigMap istio (key mesh) in the namespace does not exist; the ConfigMap is watched and wins")
	str(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	fs.BoolVar(&c.LeaderElection, "leader-elect", envOr("LEADER_ELECT", "true") == "true", "elect a leader for writes (env LEADER_ELECT)")
	dur := func(p *time.Duration, name, env string, def time.Duration, help string) {
		d := def
		if v, err := time.ParseDuration(os.Getenv(env)); err == nil {
			d = v
		}
		fs.DurationVar(p, name, d, help+" (env "+env+")")
	}
	// Longer than controller-runtime's 15s/10s/2s: on a loaded node a slow
	// apiserver made the leader miss its renew deadline and exit.
	dur(&c.LeaseDuration, "leader-election-lease-duration", "LEADER_ELECTION_LEASE_DURATION", 30*time.Second, "how long a non-leader waits before taking over an unrenewed lease")
	dur(&c.RenewDeadline, "leader-election-renew-deadline", "LEADER_ELECTION_RENEW_DEADLINE", 20*time.Second, "how long the leader retries renewing before giving up leadership (and exiting)")
	dur(&c.RetryPeriod, "leader-election-retry-period", "LEADER_ELECTION_RETRY_PERIOD", 4*time.Second, "interval between leader election attempts")
	dur(&c.MaxCertTTL, "max-cert-ttl", "MAX_WORKLOAD_CERT_TTL", 90*24*time.Hour, "longest workload certificate TTL granted")
	dur(&c.DefaultCertTTL, "default-cert-ttl", "DEFAULT_WORKLOAD_CERT_TTL", 24*time.Hour, "workload certificate TTL when none is requested")
	dur(&c.XDSDebounce, "xds-debounce", "PILOT_DEBOUNCE_AFTER", 100*time.Millisecond, "quiet period before an xDS push")
	dur(&c.ShutdownGrace, "shutdown-grace", "SHUTDOWN_GRACE", 10*time.Second, "how long streams may drain on shutdown")
	accounts := envOr("TRUSTED_NODE_ACCOUNTS", "")
	fs.Func("trusted-node-account", "ns/sa allowed to impersonate pods on its node; repeatable; default <namespace>/ztunnel (env TRUSTED_NODE_ACCOUNTS, comma separated)", func(v string) error {
		c.TrustedNodeAccounts = append(c.TrustedNodeAccounts, v)
		return nil
	})
	if accounts != "" {
		c.TrustedNodeAccounts = strings.Split(accounts, ",")
	}
}

func envOr(k, def string) string {
	if v, ok := os.LookupEnv(k); ok {
		return v
	}
	return def
}
