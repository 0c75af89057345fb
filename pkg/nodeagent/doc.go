// Package nodeagent is the ambient mesh's node agent, run by `ambient-cni
// agent` in a DaemonSet (hostNetwork, privileged) on every node. It is the
// only data-path component that reads the Kubernetes API, and only pods of
// its own node (a spec.nodeName field selector) and namespaces.
//
// It does four things:
//
//   - serves the CNI plugin (pkg/cni) on a unix socket: on a pod's ADD it
//     decides with pkg/enroll, installs the pkg/redirect rules in the pod's
//     netns and hands it to ztunnel before answering, so the pod's containers
//     start captured;
//   - watches pods and namespaces and, level-based (enroll.Reconcile),
//     captures running pods when their namespace (or the pod) is labelled
//     istio.io/dataplane-mode=ambient and releases them when it is not, with
//     no restart, keeping the annotation ambient.istio.io/redirection
//     (pending until a ztunnel acknowledged the pod, then enabled);
//   - keeps the node's kubelet-probe SNAT sets (redirect.HostRules) equal to
//     the captured pods' IPs;
//   - serves ztunnel over ZDS (pkg/zds), replaying every captured pod when a
//     ztunnel (re)connects.
//
// Running pods' netns are found by IP among the runtime's pinned netns
// (NetnsIndex), new pods' from the plugin's CNI_NETNS.
package nodeagent
