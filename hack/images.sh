#!/usr/bin/env bash
# Builds every image of the project as a tarball in _output/images (static
# binaries on a scratch base, no Docker): the binaries under cmd/, the pause
# image, CoreDNS, Istio's echo app, the bulk test app with fortio, and the
# OpenTelemetry Collector.
# `images.sh import` also loads them into the local cluster's containerd (only
# those whose tarball changed).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cluster/env.sh"

"$REPO_ROOT/hack/build-apps.sh"
apps_key="$(hash_files "$REPO_ROOT/hack/tools/apps/go.mod" "$REPO_ROOT/hack/tools/apps/go.sum")"
APPS_BIN="$MESH_CACHE/apps/$apps_key"
BIN="$OUT_DIR/bin"
IMG="$OUT_DIR/images"
mkdir -p "$BIN" "$IMG"

cd "$REPO_ROOT"
log "images: building project binaries"
ldflags="-s -w -X github.com/ambient-mesh/mesh/pkg/version.Version=${VERSION:-dev}"
go build -trimpath -ldflags "$ldflags" -o "$BIN/" ./cmd/... ./hack/cmd/pause ./hack/cmd/bulk
# fortio from its own tools module (hack/tools/fortio), for bench-ztunnel.
(cd hack/tools/fortio && go build -trimpath -ldflags "-s -w" -o "$BIN/fortio" fortio.org/fortio)
go build -o "$BIN/imgbuild" ./hack/cmd/imgbuild

img() { # NAME ENTRYPOINT DEST=SRC...
  local n=$1 entry=$2; shift 2
  "$BIN/imgbuild" -o "$IMG/$n.tar" -tag "$IMAGE_REPO/$n:dev" -entrypoint "$entry" "$@"
}
for c in ztunnel waypoint istiod-lite; do img "$c" "/usr/local/bin/$c" "/usr/local/bin/$c=$BIN/$c"; done
img ambient-cni /usr/local/bin/ambient-cni "/usr/local/bin/ambient-cni=$BIN/ambient-cni"
img pause /pause "/pause=$BIN/pause"
img coredns /coredns "/coredns=$APPS_BIN/coredns"
img bulk /usr/local/bin/bulk "/usr/local/bin/bulk=$BIN/bulk" "/usr/local/bin/fortio=$BIN/fortio"
img echo /usr/local/bin/server "/usr/local/bin/server=$APPS_BIN/echo-server" "/usr/local/bin/client=$APPS_BIN/echo-client"
# OpenTelemetry Collector (hack/tools/otelcol) for manifests/samples/otel-collector.yaml,
# with a cat so its file-exporter output can be read with kubectl exec.
otelcol_bin="$("$REPO_ROOT/hack/build-otelcol.sh")"
go build -trimpath -ldflags "-s -w" -o "$BIN/cat" ./hack/cmd/cat
img otelcol /otelcol "/otelcol=$otelcol_bin" "/bin/cat=$BIN/cat"
log "images: $(ls "$IMG" | tr '\n' ' ')in $IMG"

[ "${1:-}" = import ] || exit 0
need_root "importing images into containerd"
for t in "$IMG"/*.tar; do
  sum="$(sha256sum "$t" | cut -c1-16)"
  stamp="$CONTAINERD_STATE/imported-$(basename "$t" .tar)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then continue; fi
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$t" >/dev/null
  echo "$sum" > "$stamp"
  log "images: imported $(basename "$t" .tar)"
done
