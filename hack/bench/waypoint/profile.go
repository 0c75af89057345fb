package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// profiler collects CPU profiles of the waypoint while it carries the
// bench's load (-waypoint-profile): the waypoint's admin endpoint serves
// them on localhost inside its pod, so they are fetched with curl in its
// network namespace.
type profiler struct {
	dir   string
	files []string
	done  chan error
}

// profilerOf is the profiler of the proxy name's runs: the waypoint's
// with -waypoint-profile, else nil.
func (b *bench) profilerOf(name string) *profiler {
	if name != "waypoint" {
		return nil
	}
	return b.prof
}

// start fetches a profile of the next d from the process pid, unless p is
// nil. wait collects it.
func (p *profiler) start(ctx context.Context, pid int, d time.Duration) {
	if p == nil {
		return
	}
	out := filepath.Join(p.dir, "cpu-"+strconv.Itoa(len(p.files))+".pprof")
	p.files = append(p.files, out)
	url := fmt.Sprintf("http://127.0.0.1:15000/debug/pprof/profile?seconds=%d", max(int(d.Seconds()), 1))
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-n", "curl", "-sSf", "-o", out, url)
	p.done = make(chan error, 1)
	go func() {
		if b, err := cmd.CombinedOutput(); err != nil {
			p.done <- fmt.Errorf("waypoint CPU profile (%s): %w: %s", url, err, b)
			return
		}
		p.done <- nil
	}()
}

func (p *profiler) wait() error {
	if p == nil || p.done == nil {
		return nil
	}
	err := <-p.done
	p.done = nil
	return err
}

// merge writes the profiles as one to out (go tool pprof -proto).
func (p *profiler) merge(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", append([]string{"tool", "pprof", "-proto"}, p.files...)...)
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("merge waypoint CPU profiles (go tool pprof -proto): %w", err)
	}
	return os.WriteFile(out, b, 0o644)
}
