// Command ambient-cni is the ambient mesh's capture on a node, in one binary
// with two roles:
//
//   - run by the container runtime (CNI_COMMAND set), it is the chained CNI
//     plugin (pkg/cni): on ADD it has the node agent capture the new pod
//     before its containers start, and returns the previous result;
//   - `ambient-cni agent` is the node agent (pkg/nodeagent), run by the
//     DaemonSet in manifests/cni: it installs the plugin into the node's CNI
//     chain (and removes it on SIGTERM), captures and releases running pods as
//     namespaces are labelled, and hands pods to ztunnel over ZDS (pkg/zds).
//
// `ambient-cni agent --help` lists the agent's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/ambient-mesh/mesh/internal/kubeclient"
	"github.com/ambient-mesh/mesh/pkg/logging"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/mesh/pkg/cni"
	"github.com/ambient-mesh/mesh/pkg/nodeagent"
	"github.com/ambient-mesh/mesh/pkg/version"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		cni.PluginMain(version.String())
		return
	}
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println("ambient-cni", version.String())
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "agent" {
		fmt.Fprintln(os.Stderr, "usage: ambient-cni agent [flags]   (node agent; as a CNI plugin the runtime runs it with CNI_COMMAND set)")
		os.Exit(2)
	}
	var f nodeagent.Flags
	fs := flag.NewFlagSet("ambient-cni agent", flag.ExitOnError)
	f.Register(fs)
	_ = fs.Parse(os.Args[2:])
	if err := runAgent(f); err != nil {
		fmt.Fprintln(os.Stderr, "ambient-cni agent:", err)
		os.Exit(1)
	}
}

func runAgent(f nodeagent.Flags) error {
	if f.NodeName == "" {
		return errors.New("--node-name (or env NODE_NAME) is required")
	}
	log, err := logging.New(f.LogLevel)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	log = log.Named("ambient-cni")
	restCfg, err := kubeclient.RESTConfig(f.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	if f.Install {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("locate own binary: %w", err)
		}
		f.Config.Installer = &cni.Installer{Binary: self, BinDir: f.CNIBinDir, ConfDir: f.CNIConfDir, Entry: f.PluginEntry(), Log: log.Named("install")}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("version", zap.String("version", version.String()), zap.String("node", f.NodeName))
	return nodeagent.New(f.Config, client, log).Start(ctx)
}
