package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ambient-mesh/mesh/pkg/cni"
)

// TestMain lets the test binary stand in for the plugin binary: run with
// CNI_COMMAND set, as the runtime runs a plugin, it is main().
func TestMain(m *testing.M) {
	if os.Getenv("CNI_COMMAND") != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-x"}],"ips":[{"address":"198.18.16.7/32","interface":0}]}`

func netconf(socket string) []byte {
	b, _ := json.Marshal(map[string]any{
		"cniVersion": "1.0.0", "name": "mesh-pods", "type": cni.PluginType,
		"agentSocket": socket, "excludeNamespaces": []string{"kube-system"},
		"prevResult": json.RawMessage(prevResult),
	})
	return b
}

// execPlugin runs the binary as the runtime does: CNI_* environment, the
// network config on stdin. It returns stdout and, on a non-zero exit, the
// CNI error the plugin printed.
func execPlugin(t *testing.T, self, cmd, ns string, conf []byte) ([]byte, error) {
	t.Helper()
	c := exec.CommandContext(t.Context(), self)
	c.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/cni-x",
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE="+ns+";K8S_POD_NAME=web;K8S_POD_UID=u1")
	c.Stdin = bytes.NewReader(conf)
	var stdout bytes.Buffer
	c.Stdout = &stdout
	if err := c.Run(); err != nil {
		cerr := &cnitypes.Error{}
		if jerr := json.Unmarshal(stdout.Bytes(), cerr); jerr != nil {
			return nil, fmt.Errorf("%w, and stdout is not a CNI error: %q", err, stdout.String())
		}
		return nil, cerr
	}
	return stdout.Bytes(), nil
}

// agent serves the plugin API, answering every ADD with resp.
func agent(t *testing.T, resp cni.AddResponse) (string, chan cni.PodEvent) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan cni.PodEvent, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev cni.PodEvent
		json.NewDecoder(r.Body).Decode(&ev)
		got <- ev
		json.NewEncoder(w).Encode(resp)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, got
}

// TestPluginBinary runs the binary the way the runtime does (the CNI
// contract): ADD returns the previous result once the agent captured the pod;
// with no agent, ADD fails with a CNI error instead of starting the pod
// uncaptured; DEL succeeds either way.
func TestPluginBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sock, got := agent(t, cni.AddResponse{Captured: true, Redirection: "pending"})
	out, err := execPlugin(t, self, "ADD", "demo", netconf(sock))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, err := current.NewResult(out)
	if err != nil {
		t.Fatalf("ADD printed %q: %v", out, err)
	}
	if res, _ := current.NewResultFromResult(r); len(res.IPs) != 1 || res.IPs[0].Address.String() != "198.18.16.7/32" {
		t.Errorf("ADD result %s, want the previous result", out)
	}
	if ev := <-got; ev.Name != "web" || ev.Namespace != "demo" || ev.UID != "u1" || ev.Netns != "/var/run/netns/cni-x" {
		t.Errorf("agent got %+v", ev)
	}

	none := filepath.Join(t.TempDir(), "none.sock")
	_, err = execPlugin(t, self, "ADD", "demo", netconf(none))
	if cerr, ok := err.(*cnitypes.Error); !ok || cerr.Code != cnitypes.ErrTryAgainLater || !strings.Contains(cerr.Msg, "uncaptured") {
		t.Errorf("ADD without agent: got %v, want CNI error %d refusing to start the pod uncaptured", err, cnitypes.ErrTryAgainLater)
	}
	if _, err := execPlugin(t, self, "ADD", "kube-system", netconf(none)); err != nil {
		t.Errorf("ADD in an excluded namespace without agent: %v", err)
	}
	if _, err := execPlugin(t, self, "DEL", "demo", netconf(none)); err != nil {
		t.Errorf("DEL without agent: %v", err)
	}
	if out, err := execPlugin(t, self, "VERSION", "", netconf(none)); err != nil || !strings.Contains(string(out), "1.1.0") {
		t.Errorf("VERSION: %s %v", out, err)
	}
}
