package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Installer puts the plugin into the node's CNI setup and takes it out: it
// copies the plugin binary into the CNI bin dir and appends the plugin's
// entry as the last plugin of the node's primary conflist (the first config
// file by name, as the runtime picks it). Every call reads the config files
// again, so it is level-based: Install repairs a conflist that the primary
// CNI rewrote, and installing twice is installing once. The only state it
// keeps is the installed binary's file info, to skip re-reading an unchanged
// binary; so an Installer is used by one goroutine at a time.
type Installer struct {
	// Binary is the plugin binary to copy (the running executable).
	Binary string
	// BinDir and ConfDir are the host's CNI dirs as mounted in the pod
	// (/host/opt/cni/bin, /host/etc/cni/net.d).
	BinDir, ConfDir string
	// Entry is the plugin's conflist entry; "type" is set to PluginType.
	Entry map[string]any
	// Log receives what changed; nil discards.
	Log *zap.Logger

	// copied is the installed binary as last written or checked, so the
	// periodic check does not re-read tens of megabytes while it is unchanged.
	copied os.FileInfo
}

// cniExts are the config file extensions the runtime (libcni) reads.
var cniExts = []string{".conflist", ".conf", ".json"}

// PrimaryConfig returns the config file the runtime uses in dir: the first,
// by name, with a CNI extension. It returns an error wrapping os.ErrNotExist
// when there is none (yet).
func PrimaryConfig(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("read CNI config dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() && slices.Contains(cniExts, filepath.Ext(e.Name())) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no CNI config in %s: %w", dir, os.ErrNotExist)
	}
	slices.Sort(names)
	return filepath.Join(dir, names[0]), nil
}

// Install copies the binary (when its content changed) and makes the plugin
// the last of the primary conflist's chain. It returns the conflist's path.
func (in *Installer) Install() (string, error) {
	if err := in.copyBinary(); err != nil {
		return "", err
	}
	path, err := PrimaryConfig(in.ConfDir)
	if err != nil {
		return "", err
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	entry := map[string]any{}
	for k, v := range in.Entry {
		entry[k] = v
	}
	entry["type"] = PluginType
	updated, err := InsertPlugin(old, entry)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(old, updated) {
		return path, nil
	}
	if err := writeAtomic(path, updated, 0o644); err != nil {
		return "", err
	}
	in.log().Info("plugin added to the CNI chain", zap.String("conflist", path))
	return path, nil
}

// Uninstall removes the plugin's entry from every conflist in ConfDir. It
// leaves the binary in BinDir on purpose: the runtime tears a pod down with
// the chain it was set up with (libcni caches it), so pods created while the
// plugin was in the chain still run it on DEL, which must find it (and
// succeeds without an agent).
func (in *Installer) Uninstall() error {
	ents, err := os.ReadDir(in.ConfDir)
	if err != nil {
		return fmt.Errorf("read CNI config dir: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() || filepath.Ext(e.Name()) != ".conflist" {
			continue
		}
		path := filepath.Join(in.ConfDir, e.Name())
		old, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		updated, changed, err := RemovePlugin(old)
		if err != nil || !changed {
			continue // not ours to judge
		}
		if err := writeAtomic(path, updated, 0o644); err != nil {
			errs = append(errs, err)
			continue
		}
		in.log().Info("plugin removed from the CNI chain", zap.String("conflist", path))
	}
	return errors.Join(errs...)
}

// Run installs and keeps the installation in place (checking every
// interval, so a primary CNI that rewrites its conflist gets the plugin back)
// until ctx is done; then, if uninstall reports true, it uninstalls.
// uninstall nil means always. installed is closed after the first success.
func (in *Installer) Run(ctx context.Context, interval time.Duration, installed chan<- struct{}, uninstall func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	first := true
	for {
		_, err := in.Install()
		if err != nil {
			in.log().Warn("install failed; retrying", zap.Error(err))
		} else if first {
			first = false
			if installed != nil {
				close(installed)
			}
		}
		select {
		case <-ctx.Done():
			if uninstall != nil && !uninstall() {
				in.log().Info("plugin left in the CNI chain: the agent is restarting, not being uninstalled")
				return nil
			}
			return in.Uninstall()
		case <-t.C:
		}
	}
}

func (in *Installer) log() *zap.Logger {
	if in.Log == nil {
		return zap.NewNop()
	}
	return in.Log
}

// copyBinary copies Binary to BinDir/PluginType through a temporary file and
// a rename, so a runtime executing the plugin never sees half a file.
func (in *Installer) copyBinary() error {
	dst := filepath.Join(in.BinDir, PluginType)
	if st, err := os.Stat(dst); err == nil && in.copied != nil && os.SameFile(st, in.copied) &&
		st.ModTime().Equal(in.copied.ModTime()) && st.Size() == in.copied.Size() {
		return nil
	}
	src, err := os.ReadFile(in.Binary)
	if err != nil {
		return fmt.Errorf("read plugin binary: %w", err)
	}
	if cur, err := os.ReadFile(dst); err != nil || !bytes.Equal(cur, src) {
		if err := writeAtomic(dst, src, 0o755); err != nil {
			return err
		}
		in.log().Info("plugin binary installed", zap.String("path", dst))
	}
	st, err := os.Stat(dst)
	if err != nil {
		return fmt.Errorf("stat installed plugin: %w", err)
	}
	in.copied = st
	return nil
}

// writeAtomic writes data to a hidden temporary file beside path (no CNI
// extension, so the runtime never reads it) and renames it over path.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+PluginType+"-*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	return nil
}

// InsertPlugin returns conflist with entry as the last plugin, replacing any
// earlier entry of PluginType (wherever it was). Other fields are kept.
func InsertPlugin(conflist []byte, entry map[string]any) ([]byte, error) {
	doc, plugins, err := parseList(conflist)
	if err != nil {
		return nil, err
	}
	plugins = slices.DeleteFunc(plugins, isOurs)
	plugins = append(plugins, entry)
	doc["plugins"] = plugins
	out, err := marshal(doc)
	if err != nil {
		return nil, err
	}
	// Keep the file byte for byte when only formatting would change.
	if same, _ := sameJSON(conflist, out); same {
		return conflist, nil
	}
	return out, nil
}

// RemovePlugin returns conflist without entries of PluginType, and whether
// there were any.
func RemovePlugin(conflist []byte) ([]byte, bool, error) {
	doc, plugins, err := parseList(conflist)
	if err != nil {
		return nil, false, err
	}
	kept := slices.DeleteFunc(slices.Clone(plugins), isOurs)
	if len(kept) == len(plugins) {
		return conflist, false, nil
	}
	doc["plugins"] = kept
	out, err := marshal(doc)
	return out, true, err
}

// HasPlugin reports whether conflist has an entry of PluginType.
func HasPlugin(conflist []byte) bool {
	_, plugins, err := parseList(conflist)
	return err == nil && slices.ContainsFunc(plugins, isOurs)
}

func parseList(conflist []byte) (map[string]any, []any, error) {
	var doc map[string]any
	if err := json.Unmarshal(conflist, &doc); err != nil {
		return nil, nil, fmt.Errorf("parse conflist: %w", err)
	}
	plugins, ok := doc["plugins"].([]any)
	if !ok {
		return nil, nil, errors.New("not a conflist (no \"plugins\" list): a single-plugin .conf cannot be chained")
	}
	return doc, plugins, nil
}

func isOurs(p any) bool {
	m, ok := p.(map[string]any)
	return ok && m["type"] == PluginType
}

func marshal(doc map[string]any) ([]byte, error) {
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func sameJSON(a, b []byte) (bool, error) {
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, &y); err != nil {
		return false, err
	}
	xs, _ := json.Marshal(x)
	ys, _ := json.Marshal(y)
	return bytes.Equal(xs, ys), nil
}
