// Package app wires a waypoint together: the delta xDS client filling the
// Address state and the ServiceConfig route table, the certificate manager
// fetching the waypoint's own certificate from the mesh CA, the L7 proxy
// (pkg/waypoint) on 15008 with its OTLP export (waypoint.Telemetry: the
// OTEL_* variables, then the Telemetry resource; flushed on drain), and the
// waypoint's HTTP endpoints: metrics on 15020 (/metrics, /stats/prometheus,
// with the otel_export_* queue metrics), readiness on 15021 (/healthz/ready:
// ready once the Address state arrived and the certificate is held), admin
// on localhost:15000 (/config_dump without keys, /logging).
//
// cmd/waypoint is a thin main over it: Config.RegisterFlags, New, Run.
// Run drains on cancellation (SIGTERM): readiness turns false, the proxy
// stops accepting and shuts down gracefully until DrainTimeout.
package app

import (
	"context"
	"flag"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
)

// Config is every setting of the waypoint. RegisterFlags is the one place
// that names them, with their environment variable, default and help.
type Config struct {
	XDSAddress     string // istiod-lite's gRPC (xDS) address
	CAAddress      string // the CA's address (default: the xDS address)
	ServerName     string // name istiod-lite's serving certificate is checked for; default the address host
	RootCertFile   string // mesh root(s), PEM (ConfigMap istio-ca-root-cert)
	TokenFile      string // projected service-account token (audience istio-ca)
	ClusterID      string
	TrustDomain    string
	Network        string
	GatewayName    string // the waypoint Gateway's name; with PodNamespace it is the waypoint's "<ns>/<name>"
	PodName        string
	PodNamespace   string
	ServiceAccount string // the waypoint's own identity is spiffe://<td>/ns/<PodNamespace>/sa/<ServiceAccount>
	InstanceIP     string
	HBONEAddr      string
	MetricsAddr    string
	ReadinessAddr  string
	AdminAddr      string
	LogLevel       string
	AccessLog      bool
	DrainTimeout   time.Duration
	MaxReplayBody  int

	// LookupEnv, if set, replaces os.LookupEnv for the OTEL_* variables
	// (otel.EnvVars lists them) and Telemetry customTags of type
	// environment (in-process tests; no flag).
	LookupEnv func(string) (string, bool)

	// TunnelDial, if set, opens outbound HBONE connections instead of a
	// plain dial of podIP:15008 (in-process tests; no flag).
	TunnelDial func(ctx context.Context, network, address string, local netip.Addr) (net.Conn, error)
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
	s(&c.TokenFile, "token", "TOKEN_FILE", "/var/run/secrets/tokens/istio-token", "service-account token (audience istio-ca) for xDS and the CA")
	s(&c.ClusterID, "cluster-id", "CLUSTER_ID", "Kubernetes", "cluster id sent to the CA and in xDS metadata")
	s(&c.TrustDomain, "trust-domain", "TRUST_DOMAIN", "cluster.local", "mesh trust domain")
	s(&c.Network, "network", "NETWORK", "", "network of the waypoint and its backends")
	s(&c.GatewayName, "gateway-name", "GATEWAY_NAME", "", "name of the waypoint's Gateway (required); Services list the waypoint as <pod-namespace>/<gateway-name>")
	s(&c.PodName, "pod-name", "POD_NAME", "", "the waypoint's pod name")
	s(&c.PodNamespace, "pod-namespace", "POD_NAMESPACE", "default", "the waypoint's namespace (the Gateway's)")
	s(&c.ServiceAccount, "service-account", "SERVICE_ACCOUNT", "", "the waypoint's service account; empty: the gateway name")
	s(&c.InstanceIP, "instance-ip", "INSTANCE_IP", proxyadmin.Env("POD_IP", ""), "the waypoint's pod IP (env POD_IP also works)")
	s(&c.HBONEAddr, "hbone-address", "HBONE_ADDRESS", ":15008", "HBONE listener")
	s(&c.MetricsAddr, "metrics-address", "METRICS_ADDRESS", ":15020", "Prometheus metrics (/metrics, /stats/prometheus)")
	s(&c.ReadinessAddr, "readiness-address", "READINESS_ADDRESS", ":15021", "readiness (/healthz/ready)")
	s(&c.AdminAddr, "admin-address", "ADMIN_ADDRESS", "localhost:15000", "admin: /config_dump, /logging")
	s(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "log level: debug, info, warn, error")
	accessLog, _ := strconv.ParseBool(proxyadmin.Env("ACCESS_LOG", "true"))
	fs.BoolVar(&c.AccessLog, "access-log", accessLog, "log one line per request and TCP connection until istiod-lite's Telemetry resource says whether to (Istio's accessLogFile, defaultProviders.accessLogging and Telemetry accessLogging) (env ACCESS_LOG)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", proxyadmin.DrainDefault(), "how long a stopping waypoint drains (env TERMINATION_GRACE_PERIOD_SECONDS minus 5 s)")
	maxBody, err := strconv.Atoi(proxyadmin.Env("MAX_REPLAY_BODY", "65536"))
	if err != nil {
		maxBody = 65536
	}
	fs.IntVar(&c.MaxReplayBody, "max-replay-body", maxBody, "largest request body buffered for retries and mirrors, bytes (env MAX_REPLAY_BODY)")
}
