#!/usr/bin/env bash
# `make demo`, the main job: brings up the local cluster (building what it
# needs on the first run), installs the mesh from manifests/ when it is there,
# deploys the demo app (Istio's echo server, versions v1 and v2, and a client)
# in namespace `demo`, and shows traffic reaching it by DNS name.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cluster/env.sh"
need_root "make demo (it starts a local Kubernetes cluster)"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/cluster/up.sh"
kc() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

if [ -f manifests/kustomization.yaml ]; then
  log "demo: installing the mesh (kubectl apply --server-side -k manifests/)"
  kc apply --server-side --force-conflicts -k manifests/ >/dev/null
  kc -n istio-system rollout status deploy/istiod-lite --timeout=180s >/dev/null
  kc -n istio-system rollout status ds/ztunnel --timeout=180s >/dev/null
  kc -n istio-system rollout status ds/ambient-cni --timeout=180s >/dev/null
  mesh=1
else
  log "demo: manifests/ has no mesh to install yet; the app runs without it"
fi

log "demo: deploying the demo app in namespace demo"
kc apply -f hack/demo/app.yaml >/dev/null
kc -n demo rollout status deploy/echo-v1 --timeout=180s >/dev/null
kc -n demo rollout status deploy/echo-v2 --timeout=180s >/dev/null
kc -n demo rollout status deploy/client --timeout=180s >/dev/null
client="$(kc -n demo get pod -l app=client -o jsonpath='{.items[0].metadata.name}')"
if [ "${mesh:-0}" = 1 ]; then
  log "demo: waiting for the node agent to capture the demo pods (namespace labelled istio.io/dataplane-mode=ambient)"
  for app in echo client; do
    kc -n demo wait pod -l app=$app --for=jsonpath='{.metadata.annotations.ambient\.istio\.io/redirection}'=enabled --timeout=120s >/dev/null
  done
fi
metric() { # the sum of ztunnel's destination-side mTLS connections opened to echo
  curl -sf "http://$NODE_IP:15020/metrics" | awk '/^istio_tcp_connections_opened_total\{/ && /reporter="destination"/ && /connection_security_policy="mutual_tls"/ && /destination_canonical_service="echo"/ && /destination_workload_namespace="demo"/ {s += $NF} END {print s+0}'
}
before=0
[ "${mesh:-0}" = 1 ] && before="$(metric)"

log "demo: 40 requests from the client pod to http://echo.demo.svc.cluster.local/"
out="$(kc -n demo exec "$client" -- /usr/local/bin/client http://echo.demo.svc.cluster.local/ --count=40 --new-connection-per-request --timeout=5s)"
v1=$(grep -c 'ServiceVersion=v1' <<<"$out" || true)
v2=$(grep -c 'ServiceVersion=v2' <<<"$out" || true)
ok=$(grep -c 'StatusCode=200' <<<"$out" || true)
echo
echo "  requests answered 200: $ok/40"
echo "  served by v1: $v1   served by v2: $v2"
if [ "${mesh:-0}" = 1 ]; then
  after="$(metric)"
  peer="$(curl -sf "http://$NODE_IP:15020/metrics" | grep -o 'source_principal="spiffe://[^"]*/ns/demo/sa/[^"]*"' | head -n1)"
  echo "  mTLS through ztunnel: $((after-before)) connections client -> echo (HBONE, $peer)"
fi
echo
if [ "$ok" -ne 40 ]; then die "demo: $((40-ok)) requests failed; see kubectl -n demo logs deploy/echo-v1"; fi
if [ "${mesh:-0}" = 1 ] && [ "$((after-before))" -lt 40 ]; then die "demo: ztunnel saw $((after-before)) mTLS connections for 40 requests; check kubectl -n istio-system logs ds/ztunnel"; fi
if [ "${mesh:-0}" = 1 ]; then
  log "demo: canary through a waypoint: Gateway istio-waypoint, Service echo labelled istio.io/use-waypoint, HTTPRoute 90/10 v1/v2"
  kc -n demo apply -f manifests/samples/waypoint/gateway.yaml >/dev/null
  kc -n demo wait --for=condition=Programmed gateway/waypoint --timeout=180s >/dev/null
  kc -n demo rollout status deploy/waypoint --timeout=180s >/dev/null
  kc -n demo label service echo istio.io/use-waypoint=waypoint --overwrite >/dev/null
  kc -n demo apply -f manifests/samples/waypoint/canary-90-10.yaml >/dev/null
  kc -n demo wait --for=jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].status}'=True httproute/echo-canary --timeout=60s >/dev/null
  wp_ip="$(kc -n demo get pod -l gateway.networking.k8s.io/gateway-name=waypoint -o jsonpath='{.items[0].status.podIP}')"
  wp_count() { curl -sf "http://$wp_ip:15020/metrics" | awk '/^istio_requests_total\{/ && /reporter="waypoint"/ && /destination_service_namespace="demo"/ {s += $NF} END {print s+0}'; }
  # The route reaches the waypoint within a second or two; wait for it.
  for _ in $(seq 1 60); do
    [ "$(wp_count)" -gt 0 ] && break
    kc -n demo exec "$client" -- /usr/local/bin/client http://echo.demo.svc.cluster.local/ --count=1 --timeout=5s >/dev/null 2>&1 || true
    sleep 1
  done
  wp_before="$(wp_count)"
  log "demo: 200 requests to http://echo.demo.svc.cluster.local/ through the waypoint"
  out="$(kc -n demo exec "$client" -- /usr/local/bin/client http://echo.demo.svc.cluster.local/ --count=200 --timeout=5s)"
  v1=$(grep -c 'ServiceVersion=v1' <<<"$out" || true)
  v2=$(grep -c 'ServiceVersion=v2' <<<"$out" || true)
  ok=$(grep -c 'StatusCode=200' <<<"$out" || true)
  wp_after="$(wp_count)"
  echo
  echo "  requests answered 200: $ok/200"
  echo "  HTTPRoute echo-canary 90/10: v1 $v1 ($((v1*100/200))%), v2 $v2 ($((v2*100/200))%)"
  echo "  requests counted by the waypoint (istio_requests_total, reporter=waypoint): $((wp_after-wp_before))"
  echo
  [ "$ok" -eq 200 ] || die "demo: $((200-ok)) requests through the waypoint failed; see kubectl -n demo logs deploy/waypoint"
  [ "$v2" -ge 6 ] && [ "$v2" -le 40 ] || die "demo: v2 answered $v2 of 200, far from the 10% canary; see kubectl -n demo get httproute echo-canary -o yaml"
fi
log "demo: done. Try it yourself:"
echo "  export KUBECONFIG=$KUBECONFIG_ADMIN PATH=$OUT_DIR/bin:\$PATH"
echo "  kubectl -n demo exec deploy/client -- /usr/local/bin/client http://echo.demo.svc.cluster.local/ --count=5"
echo "  kubectl -n demo apply -f manifests/samples/waypoint/canary-0-100.yaml   # promote the canary"
echo "  traces: kubectl apply -f manifests/samples/otel-collector.yaml; kubectl -n demo apply -f manifests/samples/waypoint/telemetry.yaml   # then: kubectl -n otel-collector exec deploy/opentelemetry-collector -- cat /data/traces.json"
echo "  make cluster-down   # removes everything"
