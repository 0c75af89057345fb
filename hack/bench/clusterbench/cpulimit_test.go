package clusterbench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/hack/bench/benchkit"
	"github.com/ambient-mesh/mesh/internal/testenv"
)

// TestLimitCPU holds a busy process to a fifth of a core and checks what
// the kernel then lets it use, that it counts as throttled, and that both
// the limit and its own cgroup are undone.
func TestLimitCPU(t *testing.T) {
	testenv.RequireRoot(t)
	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
	exited, err := benchkit.StartTied(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })

	if _, err := LimitCPU(os.Getpid(), 0.2, 10*time.Millisecond); err == nil {
		t.Fatal("LimitCPU on a process that shares its cgroup succeeded; it must refuse")
	}
	name := "clusterbench-test-" + strconv.Itoa(pid)
	undoCgroup, err := OwnCgroup(pid, name)
	if err != nil {
		t.Fatal(err)
	}
	cg, err := cgroupOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(cg.dir) != name {
		t.Fatalf("pid %d is in %s, want its own cgroup %s", pid, cg.dir, name)
	}
	before, err := cg.bandwidth()
	if err != nil {
		t.Fatal(err)
	}

	limit, err := LimitCPU(pid, 0.2, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cpu0, err := benchkit.CPUSeconds(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(1500 * time.Millisecond)
	cpu1, err := benchkit.CPUSeconds(pid)
	if err != nil {
		t.Fatal(err)
	}
	cores := (cpu1 - cpu0) / time.Since(start).Seconds()
	if cores < 0.12 || cores > 0.3 {
		t.Errorf("busy loop held to 0.2 cores used %.3f", cores)
	}
	if th := limit.Throttled(); th < 0.8 {
		t.Errorf("busy loop throttled in %.2f of the periods, want nearly all", th)
	}
	if err := limit.Undo(); err != nil {
		t.Fatal(err)
	}
	if after, _ := cg.bandwidth(); after != before {
		t.Errorf("bandwidth after Undo %q, want %q", after, before)
	}
	if err := undoCgroup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg.dir); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still there after undo (err %v)", cg.dir, err)
	}
	if back, _ := cgroupOf(pid); back.dir == cg.dir {
		t.Errorf("pid %d still in %s", pid, cg.dir)
	}
}
