package archtest

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ambient-mesh/mesh"

// goPackage is the part of `go list -json` the rules read.
type goPackage struct {
	ImportPath string
	Doc        string
	Name       string
	Deps       []string
	GoFiles    []string
}

func listPackages(t *testing.T, patterns ...string) []goPackage {
	t.Helper()
	args := append([]string{"list", "-json=ImportPath,Doc,Name,Deps,GoFiles", "-deps=false"}, patterns...)
	cmd := exec.CommandContext(t.Context(), "go", args...)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", patterns, err, stderr.String())
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// dataPlane lists the packages that run in ztunnel and waypoint pods: they
// never talk to the Kubernetes API (DESIGN.md §3).
var dataPlane = []string{
	module + "/cmd/ztunnel",
	module + "/cmd/waypoint",
	module + "/pkg/hbone",
	module + "/pkg/redirect",
	module + "/pkg/certmanager",
	module + "/pkg/waypoint",
	module + "/pkg/ztunnel",
	module + "/pkg/zds",
	module + "/pkg/otel", // OTLP export for ztunnel and waypoint
	module + "/pkg/proxyadmin",
	module + "/pkg/cni", // the CNI plugin asks the node agent; it holds no API credentials
}

// The node agent (pkg/nodeagent, run by cmd/ambient-cni) is the one exception
// on the node: it may read the pods of its own node (DESIGN.md §3).

// forbiddenForDataPlane are Kubernetes client libraries and the project's own
// control-plane packages.
var forbiddenForDataPlane = []string{
	"k8s.io/client-go",
	"sigs.k8s.io/controller-runtime",
	module + "/pkg/ca",
	module + "/pkg/controller",
	module + "/pkg/meshconfig",
	module + "/pkg/model",
	module + "/internal/kubetest",
}

func isDataPlane(path string) bool {
	for _, p := range dataPlane {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

func forbidden(dep string) bool {
	for _, f := range forbiddenForDataPlane {
		if dep == f || strings.HasPrefix(dep, f+"/") {
			return true
		}
	}
	return false
}

func TestDataPlaneDoesNotImportControlPlane(t *testing.T) {
	checked := 0
	for _, p := range listPackages(t, "./...") {
		if !isDataPlane(p.ImportPath) {
			continue
		}
		checked++
		for _, d := range p.Deps {
			if forbidden(d) {
				t.Errorf("%s depends on %s: data-plane code must not use the Kubernetes API or control-plane packages (DESIGN.md §3)", p.ImportPath, d)
			}
		}
	}
	if checked < 2 {
		t.Fatalf("checked %d data-plane packages, want at least cmd/ztunnel and cmd/waypoint: the package list is wrong", checked)
	}
}

// TestRuleCatchesViolation shows the rule is not vacuous: a package known to
// use client-go is reported by the same predicate.
func TestRuleCatchesViolation(t *testing.T) {
	for _, p := range listPackages(t, "./internal/kubetest") {
		found := false
		for _, d := range p.Deps {
			found = found || forbidden(d)
		}
		if !found {
			t.Fatalf("%s uses client-go, yet the forbidden-dependency predicate does not flag it", p.ImportPath)
		}
	}
}

func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t, "./...") {
		if len(p.GoFiles) == 0 {
			continue // test-only package
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment: start one file with `// Package %s ...` (or `// Command ...` for main) saying what it is for and who imports it", p.ImportPath, p.Name)
		}
	}
}
