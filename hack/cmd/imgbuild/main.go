// Command imgbuild writes a container image tarball (docker-archive layout,
// which `ctr images import` and `docker load` both read) from static binaries,
// without Docker: one layer holding the files, an entrypoint, a non-root-free
// scratch base. hack/images.sh calls it for every image of the project.
//
//	imgbuild -o out.tar -tag localhost/ambient-mesh/ztunnel:dev \
//	  -entrypoint /usr/local/bin/ztunnel /usr/local/bin/ztunnel=_output/bin/ztunnel
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var tags, envs listFlag
	out := flag.String("o", "", "output tarball path")
	entry := flag.String("entrypoint", "", "entrypoint path inside the image")
	flag.Var(&tags, "tag", "image reference to tag (repeatable)")
	flag.Var(&envs, "env", "KEY=VALUE environment of the image (repeatable)")
	flag.Parse()
	if err := run(*out, *entry, tags, envs, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "imgbuild:", err)
		os.Exit(1)
	}
}

func run(out, entry string, tags, envs []string, files []string) error {
	if out == "" || entry == "" || len(tags) == 0 || len(files) == 0 {
		return fmt.Errorf("need -o, -entrypoint, -tag and at least one DEST=SRC file")
	}
	layerTar, err := buildLayer(files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config.Entrypoint = []string{entry}
	cfg.Config.Env = append([]string{"PATH=/usr/local/bin:/bin"}, envs...)
	cfg.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		ref, err := name.NewTag(t)
		if err != nil {
			return fmt.Errorf("tag %q: %w", t, err)
		}
		refs[ref] = img
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

// buildLayer makes one tar layer from DEST=SRC pairs, with the parent
// directories and a world-writable /tmp. Timestamps are fixed so the same
// inputs give the same digest.
func buildLayer(files []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{"tmp": true}
	type entry struct{ dest, src string }
	var entries []entry
	for _, f := range files {
		dest, src, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("file %q: want DEST=SRC", f)
		}
		dest = strings.TrimPrefix(path.Clean(dest), "/")
		for d := path.Dir(dest); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
		entries = append(entries, entry{dest, src})
	}
	var dl []string
	for d := range dirs {
		dl = append(dl, d)
	}
	sort.Strings(dl)
	for _, d := range dl {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, e := range entries {
		b, err := os.ReadFile(e.src)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", e.src, err)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.dest, Mode: 0o755, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
