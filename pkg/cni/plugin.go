package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginConf is the plugin's entry in the conflist.
type PluginConf struct {
	types.PluginConf
	// AgentSocket is the node agent's socket (DefaultAgentSocket).
	AgentSocket string `json:"agentSocket,omitempty"`
	// ExcludeNamespaces are never sent to the agent: their pods start even
	// when the agent is down (kube-system, so the cluster can heal).
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// AgentTimeoutSeconds bounds the ADD request to the agent (default 30;
	// the agent may wait up to 5 s for ztunnel's Ack).
	AgentTimeoutSeconds int `json:"agentTimeoutSeconds,omitempty"`
}

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// PluginMain runs the plugin with the runtime's environment and stdin.
func PluginMain(versionString string) {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: CmdAdd, Del: CmdDel, Check: CmdCheck, GC: noop, Status: noop},
		version.All, "ambient-cni "+versionString+": ambient mesh traffic capture")
}

func parseConf(stdin []byte) (*PluginConf, error) {
	conf := &PluginConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("ambient-cni: parse network config: %w", err)
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("ambient-cni: parse prevResult: %w", err)
		}
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = DefaultAgentSocket
	}
	if conf.AgentTimeoutSeconds <= 0 {
		conf.AgentTimeoutSeconds = 30
	}
	return conf, nil
}

func podEvent(args *skel.CmdArgs) (PodEvent, error) {
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return PodEvent{}, fmt.Errorf("ambient-cni: parse CNI_ARGS: %w", err)
	}
	return PodEvent{
		UID:       string(ka.K8S_POD_UID),
		Name:      string(ka.K8S_POD_NAME),
		Namespace: string(ka.K8S_POD_NAMESPACE),
		Netns:     args.Netns,
	}, nil
}

// CmdAdd captures the pod (through the agent) and returns prevResult.
func CmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "ambient-cni must be chained after an interface plugin", "no prevResult in the network config")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("ambient-cni: convert prevResult: %w", err)
	}
	ev, err := podEvent(args)
	if err != nil {
		return err
	}
	if ev.Name == "" || slices.Contains(conf.ExcludeNamespaces, ev.Namespace) {
		// Not a Kubernetes pod, or a namespace that must start without us.
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	}
	for _, ip := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			ev.IPs = append(ev.IPs, a.Unmap())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.AgentTimeoutSeconds)*time.Second)
	defer cancel()
	var resp AddResponse
	status, err := post(ctx, conf.AgentSocket, PathAdd, ev, &resp)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ambient-cni: node agent unreachable, refusing to start pod %s/%s uncaptured", ev.Namespace, ev.Name),
			err.Error())
	}
	if status != http.StatusOK || resp.Error != "" {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("ambient-cni: capturing pod %s/%s failed", ev.Namespace, ev.Name),
			fmt.Sprintf("agent answered %d: %s", status, resp.Error))
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// CmdDel tells the agent the pod's sandbox is going; it never fails.
func CmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil
	}
	ev, err := podEvent(args)
	if err != nil || ev.Name == "" || slices.Contains(conf.ExcludeNamespaces, ev.Namespace) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	post(ctx, conf.AgentSocket, PathDel, ev, nil) //nolint:errcheck // best effort: the pod is going away
	return nil
}

// CmdCheck has nothing to verify that ADD's success did not already say.
func CmdCheck(args *skel.CmdArgs) error {
	_, err := parseConf(args.StdinData)
	return err
}

// noop answers GC (the plugin keeps no per-attachment state on the host)
// and STATUS (ready: per-pod failures are ADD's to report, not the network's).
func noop(*skel.CmdArgs) error { return nil }

// post sends body as JSON to path on the agent's socket and decodes the
// answer into out (if not nil). It returns the HTTP status.
func post(ctx context.Context, socket, path string, body, out any) (int, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+path, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post %s on %s: %w", path, socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("read agent answer: %w", err)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, errors.Join(fmt.Errorf("agent answered %d with %q", resp.StatusCode, data), err)
		}
	}
	return resp.StatusCode, nil
}
