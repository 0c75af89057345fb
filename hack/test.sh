#!/usr/bin/env bash
# The whole test suite (`make test`, and what .ci/run runs):
#   1. installs what the tests need (Debian packages, the pinned Kubernetes
#      build for envtest and the cluster, the OpenTelemetry Collector build)
#      — idempotent, cached;
#   2. as root, brings the local cluster up with the project's images (so the
#      end-to-end tests have it), unless it is already up;
#   3. runs every Go test: unit, in-process integration, network-namespace
#      (root), envtest (real kube-apiserver) and end-to-end (test/e2e);
#   4. stops the cluster again if this run started it (KEEP_CLUSTER=1 keeps it).
# Under CI=true, tests that would skip for lack of root or of the cluster fail.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
start=$SECONDS

if [ "$(id -u)" = 0 ]; then
  "$REPO_ROOT/hack/install-deps.sh"
fi
"$REPO_ROOT/hack/build-k8s.sh"
# The OpenTelemetry Collector the pkg/otel tests export to (cached).
"$REPO_ROOT/hack/build-otelcol.sh" >/dev/null

started_cluster=0
if [ "$(id -u)" = 0 ]; then
  if ! "$REPO_ROOT/hack/cluster/status.sh" >/dev/null 2>&1; then
    started_cluster=1
    # Not running: clear what an earlier, interrupted run may have left, so
    # the tests start from a fresh cluster.
    "$REPO_ROOT/hack/cluster/down.sh"
  fi
  "$REPO_ROOT/hack/cluster/up.sh"
else
  log "not root: network-namespace and cluster tests will skip (they fail under CI=true)"
fi
cleanup() {
  if [ "$started_cluster" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    "$REPO_ROOT/hack/cluster/down.sh" || true
  fi
}
trap cleanup EXIT

log "go test ./... (timeout ${TEST_TIMEOUT:-40m})"
# -p 1 keeps heavy envtest and netns packages from competing for two cores.
go test -count=1 -p "${TEST_PARALLEL:-2}" -timeout "${TEST_TIMEOUT:-40m}" ./...
log "tests passed in $((SECONDS-start))s"
