#!/usr/bin/env bash
# Builds the apps the local cluster and the tests run, from their Go modules in
# the tools module hack/tools/apps: CoreDNS (cluster DNS) and Istio's echo
# server and client (test app; echo-advanced of the Gateway API conformance
# suite). Cached in $MESH_CACHE/apps/<pin hash>, rebuilt when the pin changes.
source "$(dirname "$0")/lib.sh"

mod="$REPO_ROOT/hack/tools/apps"
key="$(hash_files "$mod/go.mod" "$mod/go.sum")"
APPS_BIN="$MESH_CACHE/apps/$key"
if stamp_ok "$APPS_BIN" "$key"; then
  log "apps: cached in $APPS_BIN"
  exit 0
fi
mkdir -p "$APPS_BIN"
cd "$mod"
build() {
  local out=$1 pkg=$2 start=$SECONDS
  log "building $out from $pkg (first build: several minutes on 2 cores)"
  go build -trimpath -ldflags "-s -w" -o "$APPS_BIN/$out.tmp" "$pkg"
  mv "$APPS_BIN/$out.tmp" "$APPS_BIN/$out"
  log "built $out in $((SECONDS-start))s"
}
build coredns github.com/coredns/coredns
build echo-server istio.io/istio/pkg/test/echo/cmd/server
build echo-client istio.io/istio/pkg/test/echo/cmd/client
stamp_set "$APPS_BIN" "$key"
