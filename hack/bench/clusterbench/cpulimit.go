package clusterbench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A proxy's maximum rate per core is only measured when the proxy is the
// bottleneck. On a small node the load generator, the backend and the
// ztunnels share the cores with it and run out first, so the drivers hold
// the proxy to a fraction of a core with the kernel's CFS bandwidth
// control (the mechanism behind a Kubernetes CPU limit) and drive it until
// it is throttled: its rate over its CPU is then its rate per core at
// saturation. cgroup v1 (the cpu controller) and v2 (cpu.max) both work.

// cgroupRoot is where the cgroup file systems are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cpuCgroup is one cgroup's CPU bandwidth files.
type cpuCgroup struct {
	dir string
	v2  bool
}

// cgroupOf returns the cgroup of pid that holds its CPU bandwidth.
func cgroupOf(pid int) (cpuCgroup, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return cpuCgroup{}, fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	_, err = os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers"))
	v2 := err == nil
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if v2 && parts[0] == "0" {
			return cpuCgroup{dir: filepath.Join(cgroupRoot, parts[2]), v2: true}, nil
		}
		if !v2 && containsField(parts[1], "cpu") {
			return cpuCgroup{dir: filepath.Join(cgroupRoot, parts[1], parts[2])}, nil
		}
	}
	return cpuCgroup{}, fmt.Errorf("pid %d has no cpu cgroup in /proc/%d/cgroup (is the cpu controller mounted under %s?)", pid, pid, cgroupRoot)
}

func containsField(list, want string) bool {
	for f := range strings.SplitSeq(list, ",") {
		if f == want {
			return true
		}
	}
	return false
}

// procs lists the processes of the cgroup.
func (c cpuCgroup) procs() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// bandwidth reads the cgroup's setting, to put it back.
func (c cpuCgroup) bandwidth() (string, error) {
	if c.v2 {
		b, err := os.ReadFile(filepath.Join(c.dir, "cpu.max"))
		return strings.TrimSpace(string(b)), err
	}
	q, err := os.ReadFile(filepath.Join(c.dir, "cpu.cfs_quota_us"))
	if err != nil {
		return "", err
	}
	p, err := os.ReadFile(filepath.Join(c.dir, "cpu.cfs_period_us"))
	return strings.TrimSpace(string(q)) + " " + strings.TrimSpace(string(p)), err
}

// setBandwidth writes "quota period" in microseconds ("-1"/"max" quota:
// unlimited).
func (c cpuCgroup) setBandwidth(v string) error {
	if c.v2 {
		return os.WriteFile(filepath.Join(c.dir, "cpu.max"), []byte(strings.Replace(v, "-1", "max", 1)), 0o644)
	}
	quota, period, _ := strings.Cut(v, " ")
	if quota == "max" {
		quota = "-1"
	}
	// Unlimited first, then the period, then the quota: the kernel checks
	// a quota against the period in place when it is written.
	if err := os.WriteFile(filepath.Join(c.dir, "cpu.cfs_quota_us"), []byte("-1"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "cpu.cfs_period_us"), []byte(period), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dir, "cpu.cfs_quota_us"), []byte(quota), 0o644)
}

// throttleStat reads the periods elapsed and the periods throttled.
func (c cpuCgroup) throttleStat() (periods, throttled int64, err error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "cpu.stat"))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "nr_periods":
			periods = n
		case "nr_throttled":
			throttled = n
		}
	}
	return periods, throttled, nil
}

// CPULimit holds one process to a share of a core until Undo.
type CPULimit struct {
	cg                   cpuCgroup
	old                  string
	periods0, throttled0 int64
}

// LimitCPU holds pid to cores (e.g. 0.25) of CPU time per period. The
// process must be alone in its cgroup (a container, or one made by
// OwnCgroup), so nothing else is held with it.
func LimitCPU(pid int, cores float64, period time.Duration) (*CPULimit, error) {
	if cores <= 0 || period < time.Millisecond || period > time.Second {
		return nil, fmt.Errorf("cpu limit %.3f cores per %s: want cores > 0 and a period of 1ms..1s", cores, period)
	}
	cg, err := cgroupOf(pid)
	if err != nil {
		return nil, err
	}
	procs, err := cg.procs()
	if err != nil {
		return nil, fmt.Errorf("cpu limit: %w", err)
	}
	if len(procs) != 1 || procs[0] != strconv.Itoa(pid) {
		return nil, fmt.Errorf("cpu limit: cgroup %s holds processes %v, not pid %d alone", cg.dir, procs, pid)
	}
	old, err := cg.bandwidth()
	if err != nil {
		return nil, fmt.Errorf("cpu limit: read %s: %w", cg.dir, err)
	}
	periodUS := period.Microseconds()
	quotaUS := int64(cores * float64(periodUS))
	if err := cg.setBandwidth(fmt.Sprintf("%d %d", quotaUS, periodUS)); err != nil {
		return nil, fmt.Errorf("cpu limit: write %s: %w", cg.dir, err)
	}
	l := &CPULimit{cg: cg, old: old}
	l.periods0, l.throttled0, _ = cg.throttleStat()
	return l, nil
}

// Throttled is the share of the periods since LimitCPU in which the
// process used its whole quota: near 1 when it was the bottleneck.
func (l *CPULimit) Throttled() float64 {
	p, t, err := l.cg.throttleStat()
	if err != nil || p <= l.periods0 {
		return 0
	}
	return float64(t-l.throttled0) / float64(p-l.periods0)
}

// Undo puts the cgroup's previous bandwidth back.
func (l *CPULimit) Undo() error {
	if err := l.cg.setBandwidth(l.old); err != nil {
		return fmt.Errorf("cpu limit: restore %q in %s: %w", l.old, l.cg.dir, err)
	}
	return nil
}

// OwnCgroup moves pid (a process this program started) into a new cgroup
// of its own, named name, under the root of the CPU hierarchy, so that
// LimitCPU can hold it alone. The returned func moves it back and removes
// the cgroup.
func OwnCgroup(pid int, name string) (func() error, error) {
	old, err := cgroupOf(pid)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(cgroupRoot, "cpu")
	if old.v2 {
		root = cgroupRoot
	}
	dir := filepath.Join(root, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("own cgroup for pid %d: %w", pid, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("own cgroup for pid %d: move into %s: %w", pid, dir, err)
	}
	return func() error {
		// Back to where it was, if it still runs; then the empty cgroup
		// can go.
		_ = os.WriteFile(filepath.Join(old.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		return nil
	}, nil
}
