#!/usr/bin/env bash
# Reports each component of the local cluster: process, health, node and
# system pods. Exit status 0 only when everything is up.
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/env.sh"
set +e
rc=0
printf '%-24s %-8s %s\n' COMPONENT STATE DETAIL
for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
  pidf="$PID_DIR/$c.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    printf '%-24s %-8s %s\n' "$c" running "pid $(cat "$pidf"), log $LOG_DIR/$c.log"
  else
    printf '%-24s %-8s %s\n' "$c" stopped "-"; rc=1
  fi
done
kc() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=5s "$@"; }
if [ -f "$KUBECONFIG_ADMIN" ] && kc get --raw /readyz >/dev/null 2>&1; then
  printf '%-24s %-8s %s\n' apiserver-readyz ok "https://$NODE_IP:6443 ($K8S_VERSION)"
  ready="$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)"
  printf '%-24s %-8s %s\n' "node/$NODE_NAME" "${ready:-absent}" "$NODE_IP"
  [ "$ready" = True ] || rc=1
  dns="$(kc -n kube-system get deploy coredns -o jsonpath='{.status.readyReplicas}' 2>/dev/null)"
  printf '%-24s %-8s %s\n' coredns "${dns:-0}/1" "service $DNS_SVC_IP"
  [ "${dns:-0}" -ge 1 ] || rc=1
else
  printf '%-24s %-8s %s\n' apiserver-readyz down "-"; rc=1
fi
exit $rc
