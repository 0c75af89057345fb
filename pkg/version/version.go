// Package version carries the build's version, set at link time with
// -ldflags "-X github.com/ambient-mesh/mesh/pkg/version.Version=...". Every
// binary under cmd/ imports it for --version and its start-up log line.
package version

import "runtime/debug"

// Version is the release this binary was built from ("dev" when unset).
var Version = "dev"

// String returns the version with the Go toolchain that built it.
func String() string {
	gov := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		gov = bi.GoVersion
	}
	return Version + " (" + gov + ")"
}
