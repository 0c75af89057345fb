#!/usr/bin/env bash
# Generates the Go code of the repo's own protos (api/**/*.proto) with the
# Debian protoc and protoc-gen-go at the google.golang.org/protobuf version in
# go.mod, built into _output/bin. make verify runs it and fails on drift.
source "$(dirname "$0")/../lib.sh"
cd "$REPO_ROOT"
command -v protoc >/dev/null && [ -e /usr/include/google/protobuf/duration.proto ] || {
  need_root "installing protoc"
  log "installing protobuf-compiler and libprotobuf-dev"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null
}
bin="$REPO_ROOT/_output/bin"
ver="$(go list -m -f '{{.Version}}' google.golang.org/protobuf)"
if [ "$("$bin/protoc-gen-go" --version 2>/dev/null | awk '{print $2}')" != "$ver" ]; then
  log "building protoc-gen-go $ver"
  GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$ver"
fi
mapfile -t protos < <(git ls-files 'api/*.proto'; find api -name '*.proto' 2>/dev/null)
mapfile -t protos < <(printf '%s\n' "${protos[@]}" | sort -u)
[ ${#protos[@]} -gt 0 ] || exit 0
protoc --plugin=protoc-gen-go="$bin/protoc-gen-go" -I . -I /usr/include \
  --go_out=. --go_opt=module=github.com/ambient-mesh/mesh "${protos[@]}"
