package main

import (
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"github.com/ambient-mesh/mesh/hack/bench/clusterbench"
	"github.com/ambient-mesh/mesh/internal/meshtest"
)

// The HAProxy peers listen on the node IP of hack/cluster, reachable from
// pods.
const (
	nodeIP = "198.18.0.1"
	// haproxyAddr is the plaintext peer: HTTP/1.1 in, HTTP/1.1 out.
	haproxyAddr = nodeIP + ":18080"
	// haproxyTLSAddr is the mutual-TLS peer, the same work as the
	// waypoint's hop: TLS 1.3 with a client certificate checked on both
	// sides, AES-128-GCM (what Go's TLS picks on this CPU) and ECDSA P-256
	// keys (as the mesh's SVIDs), connections kept open.
	haproxyTLSAddr = nodeIP + ":18443"
	// terminatorAddr is a second, unmeasured and unlimited HAProxy that
	// ends the TLS peer's upstream TLS and forwards plaintext to the
	// server pod, as the server's ztunnel does for the waypoint.
	terminatorAddr = nodeIP + ":18444"
)

// tlsClientArgs are fortio's flags for the TLS peer, with the files the
// tlsclient pod mounts from the bench-tls Secret.
var tlsClientArgs = []string{"-cacert", "/certs/ca.pem", "-cert", "/certs/tls.crt", "-key", "/certs/tls.key"}

// tlsClientManifest is an idle pod with the TLS peer's client certificate,
// to run fortio's load from.
const tlsClientManifest = `apiVersion: v1
kind: Pod
metadata: {name: tlsclient}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: ` + clusterbench.BulkImage + `
    imagePullPolicy: Never
    args: ["serve", "-listen=:9000"]
    readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}
    volumeMounts: [{name: certs, mountPath: /certs, readOnly: true}]
  volumes:
  - name: certs
    secret: {secretName: bench-tls}
`

// haproxyGlobal is what the three HAProxy configurations share: one thread,
// TLS 1.3 with AES-128-GCM, idle upstream connections reused, and a log line
// on stderr for each connection or request that failed (none for the
// normal ones).
const haproxyGlobal = `global
  nbthread 1
  maxconn 4000
  log stderr format short local0 info
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode http
  log global
  option httplog
  option dontlog-normal
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
`

// peerAddrs are where the HAProxy processes listen.
type peerAddrs struct{ plain, tls, term string }

// nodePeers is the bench's: on the node, reachable from pods.
var nodePeers = peerAddrs{plain: haproxyAddr, tls: haproxyTLSAddr, term: terminatorAddr}

// haproxyConfigs are the configurations of the plaintext peer, the TLS
// peer and the TLS peer's terminator in front of backend, the server pod,
// with the certificates writeCerts put in dir.
func haproxyConfigs(dir, backend string, at peerAddrs) (plain, tls, term string) {
	f := func(name string) string { return filepath.Join(dir, name) }
	plain = haproxyGlobal + fmt.Sprintf(`frontend bench
  bind %s
  default_backend fortio
backend fortio
  server server %s
`, at.plain, backend)
	tls = haproxyGlobal + fmt.Sprintf(`frontend bench
  bind %s ssl crt %s ca-file %s verify required
  default_backend fortio
backend fortio
  server term %s ssl crt %s ca-file %s verify required
`, at.tls, f("front.pem"), f("ca.pem"), at.term, f("client.pem"), f("ca.pem"))
	term = haproxyGlobal + fmt.Sprintf(`frontend term
  bind %s ssl crt %s ca-file %s verify required
  default_backend fortio
backend fortio
  server server %s
`, at.term, f("term.pem"), f("ca.pem"), backend)
	return plain, tls, term
}

// writeCerts writes a CA and the certificates of the TLS peer, mesh
// SVIDs with the address ip as a SAN too, into dir: ca.pem; front.pem and
// term.pem (certificate and key, for HAProxy) of the peer's and the
// terminator's listeners; client.pem, and tls.crt and tls.key of the same
// client certificate for fortio.
func writeCerts(dir string, ip net.IP) error {
	ca, err := meshtest.NewCA("cluster.local")
	if err != nil {
		return err
	}
	files := map[string][]byte{"ca.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})}
	for _, name := range []string{"front", "term", "client"} {
		svid, err := ca.IssueWithIPs([]net.IP{ip}, ca.ID("bench-waypoint", name).URL())
		if err != nil {
			return err
		}
		certPEM, keyPEM, err := svid.Marshal()
		if err != nil {
			return err
		}
		files[name+".pem"] = append(certPEM, keyPEM...)
		if name == "client" {
			files["tls.crt"], files["tls.key"] = certPEM, keyPEM
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// haproxy is one HAProxy process the bench started.
type haproxy struct {
	cmd      *exec.Cmd
	exited   <-chan error
	uncgroup func() error // moves it back out of its own cgroup
}

// startHAProxy runs HAProxy with the configuration cfg (written to
// dir/name.cfg), alone in a cgroup of its own if own (as the waypoint is
// in its container, for the CPU limit of the maximum run), and returns its
// pid.
func (b *bench) startHAProxy(name, cfg string, own bool) (int, error) {
	path := filepath.Join(b.haproxyDir, name+".cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return 0, err
	}
	if out, err := exec.Command(b.haproxyBin, "-c", "-q", "-f", path).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("haproxy config check (%s): %w: %s", path, err, out)
	}
	cmd := exec.Command(b.haproxyBin, "-db", "-f", path)
	cmd.Stderr = os.Stderr
	exited, err := benchkit.StartTied(cmd, syscall.SIGKILL)
	if err != nil {
		return 0, fmt.Errorf("start %s (install the Debian package haproxy): %w", b.haproxyBin, err)
	}
	h := &haproxy{cmd: cmd, exited: exited}
	b.mu.Lock()
	b.haproxies = append(b.haproxies, h)
	b.mu.Unlock()
	pid := cmd.Process.Pid
	if own {
		undo, err := clusterbench.OwnCgroup(pid, "bench-waypoint-"+name+"-"+strconv.Itoa(pid))
		if err != nil {
			return 0, err
		}
		b.mu.Lock()
		h.uncgroup = undo
		b.mu.Unlock()
	}
	if err := os.WriteFile(filepath.Join(b.haproxyDir, name+".pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return 0, err
	}
	return pid, nil
}

// stopHAProxies kills every HAProxy the bench started, undoes their
// cgroups and removes their files.
func (b *bench) stopHAProxies() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.haproxies {
		_ = h.cmd.Process.Kill()
		<-h.exited
		if h.uncgroup != nil {
			if err := h.uncgroup(); err != nil {
				fmt.Fprintln(os.Stderr, "bench-waypoint: cleanup:", err)
			}
		}
	}
	b.haproxies = nil
	if b.haproxyDir != "" {
		_ = os.RemoveAll(b.haproxyDir)
		b.haproxyDir = ""
	}
}
