package app

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultGCPercent is the waypoint's GOGC when the environment sets none:
// the heap may grow to three times what is live before a collection
// (Go's default, 100, is twice). A waypoint's live heap is small (a few
// MB) and every request allocates, so at Go's default it collects many
// times a second; at 200 the collector and its allocation assists cost
// about half as much CPU, for 2-4 MB more resident memory
// (bench-waypoint: maximum rate per core +5-10%, 28-30 to 31-32 MB per
// 1000 rps at 1000 rps). GOGC in the container's environment wins.
const DefaultGCPercent = 200

// memoryLimitShare is the part of the container's memory limit given to
// the Go runtime as its soft limit (GOMEMLIMIT), when the environment sets
// none: near the limit it collects more often instead of letting the
// larger heap of DefaultGCPercent run the container out of memory.
const memoryLimitShare = 0.9

// GCSettings is what TuneGC set; zero fields were left as they were.
type GCSettings struct {
	GCPercent   int   // set from DefaultGCPercent
	MemoryLimit int64 // bytes, set from the cgroup's memory limit
}

// TuneGC sets the garbage collector's pace for a waypoint: GOGC to
// DefaultGCPercent unless getenv("GOGC") says otherwise, and the soft
// memory limit to 90% of the container's memory limit (read under
// cgroupRoot, cgroup v2 or v1) unless getenv("GOMEMLIMIT") says otherwise
// or there is no limit.
func TuneGC(getenv func(string) string, cgroupRoot string) GCSettings {
	var s GCSettings
	if getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
		s.GCPercent = DefaultGCPercent
	}
	if getenv("GOMEMLIMIT") == "" {
		if limit, ok := cgroupMemoryLimit(cgroupRoot); ok {
			s.MemoryLimit = int64(float64(limit) * memoryLimitShare)
			debug.SetMemoryLimit(s.MemoryLimit)
		}
	}
	return s
}

// cgroupMemoryLimit reads the memory limit of the process's cgroup as
// the container sees it (its own cgroup mounted at cgroupRoot): v2's
// memory.max, else v1's memory/memory.limit_in_bytes. No limit ("max", or
// v1's page-rounded maximum) and unreadable files are !ok.
func cgroupMemoryLimit(cgroupRoot string) (int64, bool) {
	for _, f := range []string{"memory.max", filepath.Join("memory", "memory.limit_in_bytes")} {
		b, err := os.ReadFile(filepath.Join(cgroupRoot, f))
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0, false
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n >= math.MaxInt64/2 {
			return 0, false // v1 says "no limit" with a number near MaxInt64
		}
		return n, true
	}
	return 0, false
}
