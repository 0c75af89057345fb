#!/usr/bin/env bash
# Builds the project's OpenTelemetry Collector (hack/tools/otelcol: upstream
# collector modules, OTLP receiver; debug, file, OTLP and Prometheus
# exporters) for the pkg/otel tests and the otelcol image. Cached in
# $MESH_CACHE/otelcol/<hash of go.mod, go.sum, main.go>/otelcol, rebuilt when
# the pin or the component list changes. Prints the binary's path.
source "$(dirname "$0")/lib.sh"

mod="$REPO_ROOT/hack/tools/otelcol"
key="$(hash_files "$mod/go.mod" "$mod/go.sum" "$mod/main.go")"
OTELCOL_DIR="$MESH_CACHE/otelcol/$key"
if stamp_ok "$OTELCOL_DIR" "$key" && [ -x "$OTELCOL_DIR/otelcol" ]; then
  log "otelcol: cached in $OTELCOL_DIR"
  echo "$OTELCOL_DIR/otelcol"
  exit 0
fi
mkdir -p "$OTELCOL_DIR"
cd "$mod"
start=$SECONDS
log "building otelcol from hack/tools/otelcol (first build: about 4 min on 2 cores)"
go build -trimpath -ldflags "-s -w" -o "$OTELCOL_DIR/otelcol.tmp" .
mv "$OTELCOL_DIR/otelcol.tmp" "$OTELCOL_DIR/otelcol"
stamp_set "$OTELCOL_DIR" "$key"
log "built otelcol in $((SECONDS-start))s: $OTELCOL_DIR/otelcol"
echo "$OTELCOL_DIR/otelcol"
