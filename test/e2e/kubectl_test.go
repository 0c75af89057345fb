package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/internal/kubetest"
	"github.com/ambient-mesh/mesh/internal/testenv"
)

// kubectl runs the pinned kubectl against the local cluster.
type kubectl struct {
	t          *testing.T
	bin        string
	kubeconfig string
	namespace  string
}

func newKubectl(t *testing.T) *kubectl {
	t.Helper()
	kc := testenv.Kubeconfig(t)
	dir, err := kubetest.BinDir()
	if err != nil {
		t.Fatalf("locate kubectl: %v", err)
	}
	return &kubectl{t: t, bin: dir + "/kubectl", kubeconfig: kc}
}

// run returns stdout, or the error with stderr.
func (k *kubectl) run(ctx context.Context, stdin string, args ...string) (string, error) {
	full := append([]string{"--kubeconfig", k.kubeconfig}, args...)
	if k.namespace != "" {
		full = append([]string{"-n", k.namespace}, full...)
	}
	cmd := exec.CommandContext(ctx, k.bin, full...)
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

// must runs kubectl and fails the test on error.
func (k *kubectl) must(stdin string, args ...string) string {
	k.t.Helper()
	out, err := k.run(k.t.Context(), stdin, args...)
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

// eventually retries f until it succeeds or timeout passes, returning the last error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// testNamespace creates a namespace for t and deletes it at cleanup.
func testNamespace(t *testing.T, k *kubectl, prefix string, labels ...string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1_000_000)
	k.must("", "create", "namespace", ns)
	if len(labels) > 0 {
		k.must("", append([]string{"label", "namespace", ns}, labels...)...)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := k.run(ctx, "", "delete", "namespace", ns, "--wait=false"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return ns
}
