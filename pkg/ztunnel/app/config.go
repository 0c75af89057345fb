// Package app wires ztunnel together: the delta xDS client filling the
// state store, the certificate manager talking to the mesh CA, the per-pod
// proxy, and ztunnel's own HTTP endpoints (metrics on 15020, readiness on
// 15021, admin with a config dump and log-level control on localhost:15000).
//
// cmd/ztunnel is a thin main over it: Config.RegisterFlags, New, Run. Run
// connects to the node agent's ZDS socket (Config.ZDSSocket, pkg/zds) and
// feeds the pods it hands over to App.Pods(): AddPod before the Ack,
// removals (DelWorkload, pods missing from a snapshot) drained in the
// background; the end of each snapshot calls App.MarkPodsSynced.
package app

import (
	"flag"
	"strconv"
	"time"

	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
	"github.com/ambient-mesh/mesh/pkg/zds"
)

// Config is every setting of ztunnel. RegisterFlags is the one place that
// names them, with their environment variable, default and help.
type Config struct {
	// LookupEnv, if set, replaces os.LookupEnv for the OTEL_* variables
	// (otel.EnvVars lists them; OTLP metrics export is off unless an
	// endpoint is set). In-process tests; no flag.
	LookupEnv func(string) (string, bool)

	XDSAddress     string // istiod-lite's gRPC (xDS) address
	CAAddress      string // the CA's address (same port as xDS by default)
	ServerName     string // name the istiod-lite serving certificate is checked for; default the address host
	RootCertFile   string // mesh root(s), PEM
	TokenFile      string // projected service-account token (audience istio-ca)
	ClusterID      string
	TrustDomain    string
	Network        string
	PodName        string
	PodNamespace   string
	NodeName       string
	InstanceIP     string
	MetricsAddr    string
	ReadinessAddr  string
	AdminAddr      string
	LogLevel       string
	DrainTimeout   time.Duration
	WaitForPodSync bool   // readiness also waits for MarkPodsSynced (the node agent's snapshot)
	WorkerThreads  int    // GOMAXPROCS for the data path; 0: Go's default (CPU limit or cores)
	DNSProxy       bool   // serve DNS on 15053 in every pod
	DNSUpstreams   string // comma-separated ip:port; empty: the nameservers of ResolvConf
	ResolvConf     string
	ClusterDomain  string
	ZDSSocket      string // the node agent's ZDS socket; empty: no pods (tests)
}

// RegisterFlags registers every setting on fs; each flag's default comes
// from its environment variable (named in the help), else the built-in one.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	s := func(p *string, name, envKey, def, help string) {
		fs.StringVar(p, name, proxyadmin.Env(envKey, def), help+" (env "+envKey+")")
	}
	s(&c.XDSAddress, "xds-address", "XDS_ADDRESS", "istiod.istio-system.svc:15012", "istiod-lite xDS address")
	s(&c.CAAddress, "ca-address", "CA_ADDRESS", "", "mesh CA address; empty: the xDS address")
	s(&c.ServerName, "server-name", "XDS_SERVER_NAME", "", "server name in istiod-lite's certificate; empty: the address host")
	s(&c.RootCertFile, "root-cert", "ROOT_CERT_FILE", "/var/run/secrets/istio/root-cert.pem", "mesh root certificate(s), PEM")
	s(&c.TokenFile, "token", "TOKEN_FILE", "/var/run/secrets/tokens/istio-token", "service-account token for xDS and the CA")
	s(&c.ClusterID, "cluster-id", "CLUSTER_ID", "Kubernetes", "cluster id sent to the CA and in xDS metadata")
	s(&c.TrustDomain, "trust-domain", "TRUST_DOMAIN", "cluster.local", "mesh trust domain")
	s(&c.Network, "network", "NETWORK", "", "network of this node's pods")
	s(&c.PodName, "pod-name", "POD_NAME", "", "ztunnel's own pod name")
	s(&c.PodNamespace, "pod-namespace", "POD_NAMESPACE", "istio-system", "ztunnel's own namespace")
	s(&c.NodeName, "node-name", "NODE_NAME", "", "the node ztunnel serves")
	s(&c.InstanceIP, "instance-ip", "INSTANCE_IP", "", "ztunnel's own pod IP")
	s(&c.MetricsAddr, "metrics-address", "METRICS_ADDRESS", ":15020", "Prometheus metrics (/metrics, /stats/prometheus)")
	s(&c.ReadinessAddr, "readiness-address", "READINESS_ADDRESS", ":15021", "readiness (/healthz/ready)")
	s(&c.AdminAddr, "admin-address", "ADMIN_ADDRESS", "localhost:15000", "admin: /config_dump, /logging")
	s(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", proxyadmin.DrainDefault(), "how long a stopping ztunnel or a removed pod drains connections (env TERMINATION_GRACE_PERIOD_SECONDS minus 5 s)")
	s(&c.DNSUpstreams, "dns-upstreams", "DNS_UPSTREAMS", "", "comma-separated ip:port resolvers for names outside the mesh; empty: the nameservers of -resolv-conf")
	s(&c.ResolvConf, "resolv-conf", "RESOLV_CONF", "/etc/resolv.conf", "resolver configuration the DNS proxy forwards to")
	s(&c.ClusterDomain, "cluster-domain", "CLUSTER_DOMAIN", "cluster.local", "cluster DNS domain of service hostnames")
	s(&c.ZDSSocket, "zds-socket", "ZDS_SOCKET", zds.DefaultSocketPath, "the node agent's socket that hands over the node's ambient pods (ZDS); empty: serve no pods")
	dnsOn, _ := strconv.ParseBool(proxyadmin.Env("DNS_PROXY", "true"))
	fs.BoolVar(&c.DNSProxy, "dns-proxy", dnsOn, "serve DNS on 15053 in every pod (env DNS_PROXY)")
	workers, _ := strconv.Atoi(proxyadmin.Env("ZTUNNEL_WORKER_THREADS", "0"))
	fs.IntVar(&c.WorkerThreads, "worker-threads", workers, "OS threads running Go code at once (GOMAXPROCS), Istio's ZTUNNEL_WORKER_THREADS; 0: Go's default, the CPU limit or the node's cores (env ZTUNNEL_WORKER_THREADS)")
	wait, _ := strconv.ParseBool(proxyadmin.Env("WAIT_FOR_POD_SYNC", "false"))
	fs.BoolVar(&c.WaitForPodSync, "wait-for-pod-sync", wait, "readiness waits for the node agent's pod snapshot (env WAIT_FOR_POD_SYNC)")
}
