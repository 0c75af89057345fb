package app

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	// The process's settings, restored after: TuneGC changes them.
	oldPercent := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(oldPercent); debug.SetMemoryLimit(oldLimit) })

	write := func(t *testing.T, files map[string]string) string {
		dir := t.TempDir()
		for name, v := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	for _, tc := range []struct {
		name      string
		env       map[string]string
		cgroup    map[string]string
		want      GCSettings
		wantPct   int   // the collector's GOGC afterwards
		wantLimit int64 // its soft memory limit afterwards
	}{
		{"v2 limit", nil, map[string]string{"memory.max": "104857600\n"}, GCSettings{200, 94371840}, 200, 94371840},
		{"v2 no limit", nil, map[string]string{"memory.max": "max\n"}, GCSettings{GCPercent: 200}, 200, math.MaxInt64},
		{"v1 limit", nil, map[string]string{"memory/memory.limit_in_bytes": "209715200\n"}, GCSettings{200, 188743680}, 200, 188743680},
		{"v1 no limit", nil, map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, GCSettings{GCPercent: 200}, 200, math.MaxInt64},
		{"no cgroup files", nil, nil, GCSettings{GCPercent: 200}, 200, math.MaxInt64},
		{"GOGC and GOMEMLIMIT set", map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}, map[string]string{"memory.max": "104857600"}, GCSettings{}, 100, math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(math.MaxInt64)
			got := TuneGC(env(tc.env), write(t, tc.cgroup))
			if got != tc.want {
				t.Errorf("TuneGC = %+v, want %+v", got, tc.want)
			}
			if pct := debug.SetGCPercent(100); pct != tc.wantPct {
				t.Errorf("GOGC afterwards %d, want %d", pct, tc.wantPct)
			}
			if limit := debug.SetMemoryLimit(-1); limit != tc.wantLimit {
				t.Errorf("memory limit afterwards %d, want %d", limit, tc.wantLimit)
			}
		})
	}
}
