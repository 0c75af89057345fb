#!/usr/bin/env bash
# `make verify`: formatting, vet, tidy go.mod files and up-to-date generated
# code. Fails with the list of what would change.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
fail=0
unformatted="$(gofmt -l $(git ls-files '*.go'))"
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; fail=1; fi
go vet ./... || fail=1
for m in . hack/tools/k8s hack/tools/apps; do
  (cd "$m" && cp go.mod /tmp/verify.go.mod.$$ && cp go.sum /tmp/verify.go.sum.$$ && go mod tidy >/dev/null 2>&1 &&
    if ! git diff --quiet -- go.mod go.sum; then echo "go mod tidy changes $m/go.mod or go.sum"; git diff --stat -- go.mod go.sum; cp /tmp/verify.go.mod.$$ go.mod; cp /tmp/verify.go.sum.$$ go.sum; exit 1; fi) || fail=1
  rm -f /tmp/verify.go.mod.$$ /tmp/verify.go.sum.$$
done
# Generators register themselves in hack/generate.d/*.sh; their output must be
# checked in.
for g in hack/generate.d/*.sh; do
  [ -f "$g" ] || continue
  bash "$g"
done
if ! git diff --quiet; then echo "generated code is stale (run the generators and commit):"; git diff --stat; fail=1; fi
[ $fail = 0 ] && log "verify: ok"
exit $fail
