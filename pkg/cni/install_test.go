package cni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

const ptpList = `{
  "cniVersion": "1.0.0",
  "name": "mesh-pods",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipam": {"type": "host-local"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

func chain(t *testing.T, conflist []byte) []string {
	t.Helper()
	var doc struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &doc); err != nil {
		t.Fatalf("parse conflist: %v", err)
	}
	var out []string
	for _, p := range doc.Plugins {
		out = append(out, p.Type)
	}
	return out
}

func TestInsertRemovePlugin(t *testing.T) {
	entry := map[string]any{"type": PluginType, "agentSocket": "/x.sock"}
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"appended last", ptpList, []string{"ptp", "portmap", PluginType}},
		{"moved to the end", `{"name":"n","plugins":[{"type":"ptp"},{"type":"ambient-cni"},{"type":"portmap"}]}`, []string{"ptp", "portmap", PluginType}},
		{"duplicates collapse", `{"name":"n","plugins":[{"type":"ambient-cni"},{"type":"ptp"},{"type":"ambient-cni"}]}`, []string{"ptp", PluginType}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := InsertPlugin([]byte(tc.in), entry)
			if err != nil {
				t.Fatal(err)
			}
			if g := chain(t, got); len(g) != len(tc.want) || g[len(g)-1] != PluginType || g[0] != tc.want[0] {
				t.Errorf("plugins: got %v, want %v", g, tc.want)
			}
			again, err := InsertPlugin(got, entry)
			if err != nil || string(again) != string(got) {
				t.Errorf("second insert changed the file (err %v):\n%s\nvs\n%s", err, again, got)
			}
			if !HasPlugin(got) {
				t.Error("HasPlugin = false after insert")
			}
			removed, changed, err := RemovePlugin(got)
			if err != nil || !changed || HasPlugin(removed) {
				t.Errorf("RemovePlugin: changed %v err %v has %v", changed, err, HasPlugin(removed))
			}
		})
	}
	if _, err := InsertPlugin([]byte(`{"type":"bridge","name":"x"}`), entry); err == nil {
		t.Error("InsertPlugin into a single-plugin .conf: got nil error")
	}
}

func TestInstallerInstallUninstall(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	for _, d := range []string{bin, conf} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self := filepath.Join(dir, "self")
	os.WriteFile(self, []byte("#!/bin/true\n"), 0o755)
	primary := filepath.Join(conf, "10-mesh-pods.conflist")
	os.WriteFile(primary, []byte(ptpList), 0o644)
	other := filepath.Join(conf, "99-other.conflist")
	os.WriteFile(other, []byte(ptpList), 0o644)

	in := &Installer{Binary: self, BinDir: bin, ConfDir: conf, Entry: map[string]any{"agentSocket": "/run/x.sock"}}
	for i := range 2 {
		path, err := in.Install()
		if err != nil {
			t.Fatalf("Install #%d: %v", i+1, err)
		}
		if path != primary {
			t.Errorf("Install chose %s, want the first by name %s", path, primary)
		}
	}
	b, _ := os.ReadFile(primary)
	if g := chain(t, b); len(g) != 3 || g[2] != PluginType {
		t.Errorf("primary after install: plugins %v, want ptp, portmap, %s", g, PluginType)
	}
	if b, _ := os.ReadFile(other); string(b) != ptpList {
		t.Error("install touched a config that is not the primary one")
	}
	if st, err := os.Stat(filepath.Join(bin, PluginType)); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("binary not installed executable: %v %v", st, err)
	}
	ents, _ := os.ReadDir(conf)
	if len(ents) != 2 {
		t.Errorf("config dir holds %d files after install, want 2 (no temporary files left)", len(ents))
	}
	if err := in.Uninstall(); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	b, _ = os.ReadFile(primary)
	if HasPlugin(b) {
		t.Errorf("plugin still in the primary conflist after uninstall:\n%s", b)
	}
	if g := chain(t, b); len(g) != 2 || g[0] != "ptp" || g[1] != "portmap" {
		t.Errorf("chain after uninstall: %v, want [ptp portmap]", g)
	}
}

// TestInstallerRepairs: a binary replaced behind the installer's back, and a
// conflist the primary CNI rewrote, are both put right by the next Install.
func TestInstallerRepairs(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	os.Mkdir(bin, 0o755)
	os.Mkdir(conf, 0o755)
	self := filepath.Join(dir, "self")
	os.WriteFile(self, []byte("plugin v2\n"), 0o755)
	primary := filepath.Join(conf, "10-mesh-pods.conflist")
	os.WriteFile(primary, []byte(ptpList), 0o644)
	in := &Installer{Binary: self, BinDir: bin, ConfDir: conf}
	if _, err := in.Install(); err != nil {
		t.Fatal(err)
	}
	installedBin := filepath.Join(bin, PluginType)
	os.WriteFile(installedBin, []byte("stale plugin\n"), 0o755)
	os.WriteFile(primary, []byte(ptpList), 0o644)
	if _, err := in.Install(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(installedBin); string(b) != "plugin v2\n" {
		t.Errorf("installed binary %q, want it restored", b)
	}
	if b, _ := os.ReadFile(primary); !HasPlugin(b) {
		t.Error("rewritten conflist not repaired")
	}
}
