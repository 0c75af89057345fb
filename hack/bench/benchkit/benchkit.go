// Package benchkit holds what the benchmark drivers under hack/bench share:
// reading a process's CPU-seconds and memory from /proc, percentiles, writing
// the flat JSON figures of DESIGN.md §9, and the envtest plumbing (kubeconfig
// files, pod-bound tokens) the control-plane benchmarks need.
package benchkit

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// Percentile returns the p-quantile (0..1) of v by the nearest-rank method,
// 0 for no samples. v is not modified.
func Percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// CPUSeconds is the user+system CPU time a process has used so far.
func CPUSeconds(pid int) (float64, error) {
	user, sys, err := CPUTimes(pid)
	return user + sys, err
}

// CPUTimes is a process's user and system CPU-seconds so far.
func CPUTimes(pid int) (user, sys float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return ut / 100, st / 100, nil // USER_HZ is 100 on Linux
}

// PeakRSSMB is a process's peak resident set (VmHWM) in MiB.
func PeakRSSMB(pid int) (float64, error) { return statusMB(pid, "VmHWM:") }

// CurrentRSSMB is a process's resident set (VmRSS) in MiB.
func CurrentRSSMB(pid int) (float64, error) { return statusMB(pid, "VmRSS:") }

// RSSPartsMB is a process's resident set split into anonymous memory
// (heap, stacks) and file pages (the mapped executable), in MiB.
func RSSPartsMB(pid int) (anon, file float64, err error) {
	if anon, err = statusMB(pid, "RssAnon:"); err != nil {
		return 0, 0, err
	}
	file, err = statusMB(pid, "RssFile:")
	return anon, file, err
}

func statusMB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// WriteJSON writes the figures as one indented JSON object to path,
// creating its directory.
func WriteJSON(path string, figures any) error {
	b, err := json.MarshalIndent(figures, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Save ends a driver's run: with err set, it prints "<name>: err" and
// exits 1; otherwise it writes figures to path as JSON (exiting 1 if it
// cannot).
func Save(name, path string, figures any, err error) {
	if err == nil {
		err = WriteJSON(path, figures)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// WriteKubeconfig writes a kubeconfig for cfg (an envtest admin config), for
// a child process such as istiod-lite.
func WriteKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// PodToken mints a one-hour service-account token bound to pod for audience
// (istio-ca for the mesh's CA and xDS).
func PodToken(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, audience string) (string, error) {
	tr, err := cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](3600),
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token request for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return tr.Status.Token, nil
}

// CPUProfile starts a CPU profile into the file named by the environment
// variable env, when it is set; the returned stop writes it out.
func CPUProfile(env string) (stop func(), err error) {
	path := os.Getenv(env)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
