// Package cni is the chained CNI plugin of the ambient mesh and its installer,
// without any Kubernetes client: cmd/ambient-cni runs the plugin when the
// container runtime executes it (CNI_COMMAND set) and the installer inside the
// node agent's DaemonSet pod.
//
// The plugin runs last in the node's chain. On ADD it asks the node agent
// (pkg/nodeagent), over HTTP on a unix socket on the host (AgentSocket),
// to capture the new pod; the agent, which watches pods and namespaces, decides
// with pkg/enroll, installs the pkg/redirect rules in the pod's netns and hands
// it to ztunnel before answering, so the rules exist before any container of
// the pod starts. The plugin then returns the previous plugin's result
// unchanged. The plugin binary holds no Kubernetes credentials.
//
// Failure policy (fail closed). The agent inserts the plugin into the chain
// when it starts, and takes it out when it exits because its DaemonSet is
// being deleted (an uninstall); on a restart, upgrade or crash the plugin
// stays. So if the plugin cannot reach the agent, the agent is restarting or
// crashed, and the plugin cannot know whether the pod's namespace is ambient:
// ADD fails, loudly (CNI error 11, "try again later"), for every pod not in
// ExcludeNamespaces (kube-system by default), and the kubelet retries the
// sandbox until the agent is back. An ambient pod never starts uncaptured.
// ADD also fails when the agent could not install the rules or ztunnel refused
// the pod. DEL is best effort and never fails: the pod is going away.
package cni

import "net/netip"

// PluginType is the plugin's "type" in a conflist and its binary's name.
const PluginType = "ambient-cni"

// DefaultAgentSocket is where the node agent serves the plugin.
const DefaultAgentSocket = "/var/run/ambient-mesh/cni/agent.sock"

// Paths of the plugin's HTTP API on the agent socket.
const (
	PathAdd = "/v1/pod/add"
	PathDel = "/v1/pod/del"
)

// PodEvent is what the plugin sends the agent on ADD and DEL.
type PodEvent struct {
	// UID, Name and Namespace come from the runtime's CNI_ARGS
	// (K8S_POD_UID, K8S_POD_NAME, K8S_POD_NAMESPACE).
	UID       string `json:"uid"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string `json:"netns,omitempty"`
	// IPs are the pod's addresses from the previous plugin's result.
	IPs []netip.Addr `json:"ips,omitempty"`
}

// AddResponse is the agent's answer to an ADD. The HTTP status is 200 when the
// pod may start (captured or not), 500 with Error set when it must not.
type AddResponse struct {
	Captured bool   `json:"captured"`
	Reason   string `json:"reason,omitempty"`
	// Redirection is the annotation value the agent set ("enabled" or
	// "pending"), when Captured.
	Redirection string `json:"redirection,omitempty"`
	Error       string `json:"error,omitempty"`
}
