package cni

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	cnitypes "github.com/containernetworking/cni/pkg/types"
)

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"198.18.16.9/32","interface":0}]}`

func stdin(socket string, exclude ...string) []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "mesh-pods", "type": PluginType,
		"agentSocket": socket, "excludeNamespaces": exclude, "agentTimeoutSeconds": 5,
		"prevResult": json.RawMessage(prevResult),
	}
	b, _ := json.Marshal(conf)
	return b
}

func podArgs(ns string) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "c1", Netns: "/var/run/netns/cni-1234", IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=web-0;K8S_POD_UID=uid-1;K8S_POD_INFRA_CONTAINER_ID=c1",
	}
}

// fakeAgent serves the plugin API on a unix socket, answering with status
// and resp, and records the events it got.
func fakeAgent(t *testing.T, status int, resp AddResponse) (string, chan PodEvent) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cni.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan PodEvent, 10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev PodEvent
		json.NewDecoder(r.Body).Decode(&ev)
		got <- ev
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(resp)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, got
}

// captureStdout runs f with os.Stdout redirected and returns what it wrote.
func captureStdout(t *testing.T, f func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	ferr := f()
	os.Stdout = old
	w.Close()
	out, _ := io.ReadAll(r)
	return string(out), ferr
}

func TestAddCapturedReturnsPrevResult(t *testing.T) {
	sock, got := fakeAgent(t, http.StatusOK, AddResponse{Captured: true, Redirection: "pending"})
	args := podArgs("demo")
	args.StdinData = stdin(sock)
	out, err := captureStdout(t, func() error { return CmdAdd(args) })
	if err != nil {
		t.Fatalf("CmdAdd: %v", err)
	}
	if !strings.Contains(out, "198.18.16.9/32") {
		t.Errorf("stdout is not the previous result: %s", out)
	}
	ev := <-got
	if ev.UID != "uid-1" || ev.Name != "web-0" || ev.Namespace != "demo" || ev.Netns != "/var/run/netns/cni-1234" || len(ev.IPs) != 1 || ev.IPs[0].String() != "198.18.16.9" {
		t.Errorf("agent got %+v", ev)
	}
}

func TestAddFailsClosed(t *testing.T) {
	t.Run("agent unreachable", func(t *testing.T) {
		args := podArgs("demo")
		args.StdinData = stdin(filepath.Join(t.TempDir(), "nobody.sock"))
		_, err := captureStdout(t, func() error { return CmdAdd(args) })
		var ce *cnitypes.Error
		if !errors.As(err, &ce) || ce.Code != cnitypes.ErrTryAgainLater {
			t.Fatalf("got %v, want a CNI error with code %d (try again later)", err, cnitypes.ErrTryAgainLater)
		}
	})
	t.Run("capture failed", func(t *testing.T) {
		sock, _ := fakeAgent(t, http.StatusInternalServerError, AddResponse{Error: "install rules: boom"})
		args := podArgs("demo")
		args.StdinData = stdin(sock)
		_, err := captureStdout(t, func() error { return CmdAdd(args) })
		if err == nil || !strings.Contains(err.Error(), "boom") {
			t.Fatalf("got %v, want the agent's error", err)
		}
	})
	t.Run("excluded namespace needs no agent", func(t *testing.T) {
		args := podArgs("kube-system")
		args.StdinData = stdin(filepath.Join(t.TempDir(), "nobody.sock"), "kube-system")
		out, err := captureStdout(t, func() error { return CmdAdd(args) })
		if err != nil || !strings.Contains(out, "198.18.16.9") {
			t.Fatalf("got %v (stdout %q), want the previous result", err, out)
		}
	})
}

func TestDelIsBestEffort(t *testing.T) {
	args := podArgs("demo")
	args.StdinData = stdin(filepath.Join(t.TempDir(), "nobody.sock"))
	if err := CmdDel(args); err != nil {
		t.Errorf("CmdDel without agent: %v", err)
	}
	sock, got := fakeAgent(t, http.StatusOK, AddResponse{})
	args.StdinData = stdin(sock)
	if err := CmdDel(args); err != nil {
		t.Errorf("CmdDel: %v", err)
	}
	if ev := <-got; ev.UID != "uid-1" {
		t.Errorf("agent got %+v on DEL", ev)
	}
}
