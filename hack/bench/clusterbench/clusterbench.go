// Package clusterbench holds what the benchmark drivers that run on the
// local cluster share: a kubectl runner, fortio load runs from a client pod
// and their JSON result, the mesh install, and finding and sampling a
// proxy's process on the node. Imported by hack/bench/ztunnel and
// hack/bench/waypoint.
package clusterbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
)

// BulkImage carries fortio (server and load generator) and the bulk tool.
const BulkImage = "localhost/ambient-mesh/bulk:dev"

// ClientPodManifest is the idle client pod (bulk serve) every cluster
// benchmark runs its load from.
const ClientPodManifest = `apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: ` + BulkImage + `
    imagePullPolicy: Never
    args: ["serve", "-listen=:9000"]
    readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}
`

// Kubectl runs a kubectl binary against one kubeconfig.
type Kubectl struct {
	Bin, Kubeconfig string
}

// Run runs kubectl and returns its stdout, or an error with its stderr.
func (k Kubectl) Run(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, k.Bin, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// InstallMesh applies the kustomization at manifests unless istiod-lite is
// there already, waits for the mesh's rollouts, and reports whether it
// installed the mesh (the caller then removes it when done).
func (k Kubectl) InstallMesh(ctx context.Context, manifests string) (installed bool, err error) {
	if _, err := k.Run(ctx, "", "-n", "istio-system", "get", "deployment", "istiod-lite"); err != nil {
		if _, err := k.Run(ctx, "", "apply", "--server-side", "--force-conflicts", "-k", manifests); err != nil {
			return false, err
		}
		installed = true
	}
	for _, r := range []string{"deployment/istiod-lite", "daemonset/ztunnel", "daemonset/ambient-cni"} {
		if _, err := k.Run(ctx, "", "-n", "istio-system", "rollout", "status", r, "--timeout=180s"); err != nil {
			return installed, err
		}
	}
	return installed, nil
}

// FortioResult is the part of fortio's JSON result the drivers read.
type FortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// Percentile returns the p-th latency percentile in seconds (p must be one
// fortio was asked for with -p).
func (r *FortioResult) Percentile(p float64) float64 {
	for _, q := range r.DurationHistogram.Percentiles {
		if q.Percentile == p {
			return q.Value
		}
	}
	return 0
}

// Errors counts the requests that did not get 200.
func (r *FortioResult) Errors() int64 { return r.DurationHistogram.Count - r.RetCodes["200"] }

// Load is one fortio load run: QPS 0 means as fast as possible.
type Load struct {
	Namespace, Pod, URL string
	QPS, Conns          int
	Duration            time.Duration
	PayloadBytes        int
	// Args are more fortio flags, e.g. the client certificate of an
	// https URL (-cacert, -cert, -key).
	Args []string
}

// Fortio runs the load with fortio in the pod (1 KB POST echoed by fortio's
// server, latency percentiles 50, 90 and 99).
func (k Kubectl) Fortio(ctx context.Context, l Load) (*FortioResult, error) {
	args := []string{"-n", l.Namespace, "exec", l.Pod, "--", "/usr/local/bin/fortio", "load",
		"-qps", strconv.Itoa(l.QPS), "-c", strconv.Itoa(l.Conns), "-t", l.Duration.String(),
		"-p", "50,90,99", "-logger-json=false", "-quiet", "-json", "-"}
	if l.PayloadBytes > 0 {
		args = append(args, "-payload-size", strconv.Itoa(l.PayloadBytes))
	}
	if l.QPS > 0 {
		args = append(args, "-uniform", "-nocatchup")
	}
	args = append(args, l.Args...)
	out, err := k.Run(ctx, "", append(args, l.URL)...)
	if err != nil {
		return nil, err
	}
	// The JSON object is the last thing fortio prints.
	i := strings.Index(out, "{")
	if i < 0 {
		return nil, fmt.Errorf("fortio printed no JSON: %s", out)
	}
	var r FortioResult
	if err := json.Unmarshal([]byte(out[i:]), &r); err != nil {
		return nil, fmt.Errorf("fortio output: %w", err)
	}
	if r.DurationHistogram.Count == 0 {
		return nil, errors.New("fortio made no request")
	}
	return &r, nil
}

// WaitReachable retries one fortio request from the pod to url until it
// succeeds, for at most a minute; fortioArgs are more fortio flags (as
// Load.Args).
func (k Kubectl) WaitReachable(ctx context.Context, ns, pod, url string, fortioArgs ...string) error {
	deadline := time.Now().Add(time.Minute)
	args := append([]string{"-n", ns, "exec", pod, "--", "/usr/local/bin/fortio", "curl",
		"-logger-json=false", "-quiet", "-payload-size", "1024"}, fortioArgs...)
	for {
		_, err := k.Run(ctx, "", append(args, url)...)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not reachable from %s/%s: %w", url, ns, pod, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// FindProcess returns the pid of the one node process whose argv[0] is exe
// (a proxy's binary path in its image) and whose environment holds every
// "NAME=value" of env (e.g. the POD_NAMESPACE the pod spec sets).
func FindProcess(exe string, env ...string) (int, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return 0, err
	}
	var pids []int
next:
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		if argv0, _, _ := bytes.Cut(b, []byte{0}); string(argv0) != exe {
			continue
		}
		if len(env) > 0 {
			environ, err := os.ReadFile(filepath.Join(filepath.Dir(d), "environ"))
			if err != nil {
				continue
			}
			vars := map[string]bool{}
			for _, v := range bytes.Split(environ, []byte{0}) {
				vars[string(v)] = true
			}
			for _, want := range env {
				if !vars[want] {
					continue next
				}
			}
		}
		pid, _ := strconv.Atoi(strings.Split(d, "/")[2])
		pids = append(pids, pid)
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("want one %s process %v on the node, found %v", exe, env, pids)
	}
	return pids[0], nil
}

// RSSSampler polls a process's resident set and keeps the largest.
type RSSSampler struct {
	stopc chan struct{}
	done  chan float64
}

// StartRSSSampler samples pid every 250 ms until Stop.
func StartRSSSampler(pid int) *RSSSampler {
	s := &RSSSampler{stopc: make(chan struct{}), done: make(chan float64, 1)}
	go func() {
		var peak float64
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if v, err := benchkit.CurrentRSSMB(pid); err == nil {
				peak = max(peak, v)
			}
			select {
			case <-s.stopc:
				s.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends sampling and returns the peak resident set in MB.
func (s *RSSSampler) Stop() float64 { close(s.stopc); return <-s.done }

// Usage measures a process's CPU-seconds and peak resident set over a span.
type Usage struct {
	pid         int
	user0, sys0 float64
	start       time.Time
	sampler     *RSSSampler

	// User and Sys split the CPU-seconds Stop returned into time in the
	// process's own code and in the kernel on its behalf.
	User, Sys float64
}

// StartUsage begins measuring pid.
func StartUsage(pid int) (*Usage, error) {
	user, sys, err := benchkit.CPUTimes(pid)
	if err != nil {
		return nil, fmt.Errorf("cpu of pid %d (did it exit?): %w", pid, err)
	}
	return &Usage{pid: pid, user0: user, sys0: sys, start: time.Now(), sampler: StartRSSSampler(pid)}, nil
}

// Stop returns the CPU-seconds used, the wall time and the peak RSS in MB.
func (u *Usage) Stop() (cpuS float64, wall time.Duration, rssMB float64, err error) {
	rssMB = u.sampler.Stop()
	wall = time.Since(u.start)
	user, sys, err := benchkit.CPUTimes(u.pid)
	if err != nil {
		return 0, wall, rssMB, fmt.Errorf("cpu of pid %d (did it restart?): %w", u.pid, err)
	}
	u.User, u.Sys = user-u.user0, sys-u.sys0
	return u.User + u.Sys, wall, rssMB, nil
}

// BenchDuration is the length of a driver's fixed-rate runs: env
// BENCH_DURATION, default 60 s. A bad value ends the driver (named tool).
func BenchDuration(tool string) time.Duration {
	v := os.Getenv("BENCH_DURATION")
	if v == "" {
		return 60 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: BENCH_DURATION=%q: %v\n", tool, v, err)
		os.Exit(2)
	}
	return d
}

// OneCoreWaypointManifest is a waypoint Gateway held to one core:
// GOMAXPROCS=1 through its parameters ConfigMap, the user-facing way.
const OneCoreWaypointManifest = `apiVersion: v1
kind: ConfigMap
metadata: {name: waypoint-bench}
data:
  deployment: |
    spec:
      template:
        spec:
          containers:
          - name: istio-proxy
            env:
            - {name: GOMAXPROCS, value: "1"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint}
spec:
  gatewayClassName: istio-waypoint
  infrastructure:
    parametersRef: {group: "", kind: ConfigMap, name: waypoint-bench}
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

// WaitCaptured waits until the node agent has captured the pods of ns.
func (k Kubectl) WaitCaptured(ctx context.Context, ns string, pods ...string) error {
	for _, p := range pods {
		if _, err := k.Run(ctx, "", "-n", ns, "wait", "pod/"+p, "--for=jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}=enabled", "--timeout=120s"); err != nil {
			return fmt.Errorf("mesh pods not captured: %w", err)
		}
	}
	return nil
}

// WaitWaypoint waits until the waypoint Gateway of ns is Programmed and its
// Deployment rolled out.
func (k Kubectl) WaitWaypoint(ctx context.Context, ns string) error {
	if _, err := k.Run(ctx, "", "-n", ns, "wait", "--for=condition=Programmed", "gateway/waypoint", "--timeout=180s"); err != nil {
		return fmt.Errorf("waypoint not programmed: %w", err)
	}
	_, err := k.Run(ctx, "", "-n", ns, "rollout", "status", "deployment/waypoint", "--timeout=180s")
	return err
}
