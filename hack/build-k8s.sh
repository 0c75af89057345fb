#!/usr/bin/env bash
# Builds the pinned Kubernetes components (apiserver, controller-manager,
# scheduler, kubelet, kube-proxy, kubectl) from the k8s.io/kubernetes module in
# the tools module hack/tools/k8s, into $MESH_CACHE/k8s/<version>/bin.
# Rebuilds only when the pin (go.mod/go.sum) changes.
source "$(dirname "$0")/lib.sh"

mod="$REPO_ROOT/hack/tools/k8s"
key="$(hash_files "$mod/go.mod" "$mod/go.sum")"
if stamp_ok "$K8S_BIN" "$key"; then
  log "kubernetes $K8S_VERSION: cached in $K8S_BIN"
  exit 0
fi
ver="${K8S_VERSION#v}"
major="${ver%%.*}"; rest="${ver#*.}"; minor="${rest%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
mkdir -p "$K8S_BIN"
cd "$mod"
for t in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  log "building $t $K8S_VERSION (first build of all six takes 10-15 min on 2 cores)"
  start=$SECONDS
  go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/$t.tmp" "k8s.io/kubernetes/cmd/$t"
  mv "$K8S_BIN/$t.tmp" "$K8S_BIN/$t"
  log "built $t in $((SECONDS-start))s"
done
stamp_set "$K8S_BIN" "$key"
log "kubernetes $K8S_VERSION ready in $K8S_BIN"
