// Package zds is the node agent's handoff of captured pods to ztunnel: the
// ztunnel discovery service (ZDS) of Istio ambient, spoken over a unix
// SOCK_SEQPACKET socket with Istio's own messages (istio.io/istio/pkg/zdsapi),
// so a ztunnel written for Istio can talk to our agent and ours to Istio's.
//
// The node agent (cmd/ambient-cni agent, pkg/nodeagent) runs a [Server]: it
// holds the set of captured pods, each with its network namespace, and sends it
// to every ztunnel that connects. ztunnel (cmd/ztunnel) runs a [Client] with a
// [Handler] that receives the pods:
//
//  1. ztunnel connects and sends ZdsHello{version: V1};
//  2. the agent sends its whole set, one message at a time, each acknowledged
//     before the next: AddWorkload with the pod's netns fd as SCM_RIGHTS
//     ancillary data, or KeepWorkload when the agent has no netns for the pod
//     (ztunnel keeps what it has);
//  3. SnapshotSent: ztunnel drops every pod it had that the snapshot did not
//     name;
//  4. then incremental AddWorkload and DelWorkload, each acknowledged.
//
// An Ack with an empty error accepts a message; a non-empty one refuses it.
// Each message waits at most MessageTimeout for its Ack. See
// ../../shared/reference/istio-ambient-facts.md §5.3.
//
// This package imports no Kubernetes client: ztunnel links it.
package zds

import (
	"errors"
	"os"
	"time"

	"istio.io/istio/pkg/zdsapi"
)

// DefaultSocketPath is where the node agent listens and ztunnel connects,
// Istio's path, so both sides mount the same hostPath directory.
const DefaultSocketPath = "/var/run/ztunnel/ztunnel.sock"

// MessageTimeout bounds each write and each wait for an Ack (Istio: 5 s).
const MessageTimeout = 5 * time.Second

// maxMessage is the receive buffer; ztunnel reads into 1024 bytes.
const maxMessage = 1024

// ErrNotConnected is returned by Server.Add and Server.Del when no ztunnel is
// connected: the change is kept and will be in the next ztunnel's snapshot.
var ErrNotConnected = errors.New("zds: no ztunnel connected")

// Workload is one captured pod as the agent hands it to ztunnel.
type Workload struct {
	// UID is the Kubernetes pod UID, the key of the set.
	UID string
	// Info names the pod (name, namespace, service account).
	Info *zdsapi.WorkloadInfo
	// Netns is the pod's network namespace, open. nil means the agent does
	// not have it (for instance, after an agent restart, for a pod whose
	// netns it could not find): the pod is sent as KeepWorkload.
	// The Server does not close it; its owner does, after Del.
	Netns *os.File
}

// AckError is a refusal ztunnel sent in an Ack.
type AckError struct {
	// Op is the refused message: "add", "keep", "del" or "snapshot".
	Op  string
	UID string
	Msg string
}

func (e *AckError) Error() string {
	if e.UID == "" {
		return "zds: ztunnel refused " + e.Op + ": " + e.Msg
	}
	return "zds: ztunnel refused " + e.Op + " of pod " + e.UID + ": " + e.Msg
}
