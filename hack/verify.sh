#!/usr/bin/env bash
# `make verify`: formatting, vet, tidy go.mod files and up-to-date generated
# code. Changes nothing in the tree except what generators rewrite; fails with
# the list of what is wrong.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
fail=0
unformatted="$(gofmt -l $(git ls-files '*.go'))"
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; fail=1; fi
go vet ./... || fail=1
for m in . hack/tools/k8s hack/tools/apps hack/tools/fortio hack/tools/otelcol; do
  if ! (cd "$m" && go mod tidy -diff >/dev/null); then
    echo "go mod tidy would change $m/go.mod or go.sum (run it there and commit)"; fail=1
  fi
done
# Generators register themselves as hack/generate.d/*.sh; their output is
# checked in, so running them must leave the tree as it was.
gens=(hack/generate.d/*.sh)
if [ -e "${gens[0]}" ]; then
  before="$(git status --porcelain=v1 -uall | sha256sum; git diff | sha256sum)"
  for g in "${gens[@]}"; do bash "$g" || fail=1; done
  after="$(git status --porcelain=v1 -uall | sha256sum; git diff | sha256sum)"
  if [ "$before" != "$after" ]; then
    echo "generated code is stale: the generators changed the tree (see git status), commit their output"; fail=1
  fi
fi
[ $fail = 0 ] && log "verify: ok"
exit $fail
