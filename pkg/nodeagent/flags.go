package nodeagent

import (
	"flag"
	"os"
	"strings"

	"github.com/ambient-mesh/mesh/pkg/cni"
	"github.com/ambient-mesh/mesh/pkg/zds"
)

// Flags are the agent's settings as `ambient-cni agent` takes them: the one
// place they are registered, with defaults and help.
type Flags struct {
	Config
	Kubeconfig        string
	LogLevel          string
	Install           bool
	CNIBinDir         string
	CNIConfDir        string
	ExcludeNamespaces string
}

// Register adds the flags to fs. NODE_NAME in the environment (the downward
// API) is the default node name.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name; the agent reads only pods scheduled here (env NODE_NAME)")
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "", "kubeconfig path; empty uses the in-cluster service account")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.CNISocket, "cni-socket", cni.DefaultAgentSocket, "unix socket the CNI plugin reaches the agent on (a host path: the plugin runs on the host)")
	fs.StringVar(&f.ZDSSocket, "zds-socket", zds.DefaultSocketPath, "unix SEQPACKET socket ztunnel connects to")
	fs.StringVar(&f.NetnsDir, "netns-dir", "/var/run/netns", "directory where the container runtime pins pod network namespaces")
	fs.BoolVar(&f.DNSCapture, "dns-capture", true, "redirect pods' DNS (port 53) to ztunnel's 15053")
	fs.IntVar(&f.Workers, "workers", 4, "pods reconciled in parallel")
	fs.BoolVar(&f.Install, "install", true, "put the plugin into the node's CNI chain while the agent runs, and take it out on exit")
	fs.StringVar(&f.CNIBinDir, "cni-bin-dir", "/host/opt/cni/bin", "the host's CNI bin dir, as mounted in the agent's pod")
	fs.StringVar(&f.CNIConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI config dir, as mounted in the agent's pod")
	fs.StringVar(&f.DaemonSetNamespace, "daemonset-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the agent's DaemonSet (env POD_NAMESPACE)")
	fs.StringVar(&f.DaemonSetName, "daemonset-name", "ambient-cni", "the agent's DaemonSet: the plugin leaves the CNI chain on exit only if it is gone or being deleted; empty: always")
	fs.StringVar(&f.ExcludeNamespaces, "exclude-namespaces", "kube-system", "comma-separated namespaces the plugin never sends to the agent (their pods start even with the agent down)")
}

// PluginEntry is the plugin's conflist entry these flags give.
func (f *Flags) PluginEntry() map[string]any {
	var excl []string
	for _, ns := range strings.Split(f.ExcludeNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			excl = append(excl, ns)
		}
	}
	return map[string]any{"type": cni.PluginType, "agentSocket": f.CNISocket, "excludeNamespaces": excl}
}
