# shellcheck shell=bash
# Common settings for the hack/ scripts. Source it; do not run it.
# Every path the local cluster uses is derived here, so cluster-down can find
# and remove all of it.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# Build caches live outside the repository so a fresh clone reuses them.
MESH_CACHE="${MESH_CACHE:-/var/cache/ambient-mesh}"
# Kubernetes version of the local cluster: the pin in hack/tools/k8s/go.mod.
K8S_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$REPO_ROOT/hack/tools/k8s/go.mod")"
K8S_BIN="$MESH_CACHE/k8s/$K8S_VERSION/bin"
TOOLS_BIN="$MESH_CACHE/tools/bin"
# State of the running cluster (PKI, configs, logs, pids, data).
CLUSTER_DIR="${CLUSTER_DIR:-/var/lib/ambient-mesh/cluster}"
KUBECONFIG_ADMIN="$CLUSTER_DIR/admin.kubeconfig"
OUT_DIR="$REPO_ROOT/_output"
export MESH_CACHE K8S_VERSION K8S_BIN TOOLS_BIN CLUSTER_DIR KUBECONFIG_ADMIN OUT_DIR

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\033[31m[%s] error:\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# stamp_ok DIR KEY: true when DIR/.stamp holds KEY (the cache is current).
stamp_ok() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }
stamp_set() { mkdir -p "$1"; printf '%s' "$2" > "$1/.stamp"; }

# hash_files FILE...: a short content hash, used as a cache key.
hash_files() { cat "$@" | sha256sum | cut -c1-16; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (network namespaces, mounts, containerd); run it as root"; }
