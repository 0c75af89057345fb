#!/usr/bin/env bash
# Stops the local cluster and removes everything cluster-up made: pods'
# containers and network namespaces, every component process (by the PIDs it
# recorded), kube-proxy's rules, mounts under the kubelet and containerd
# directories, the node bridge, the CNI config and plugin links it added, and
# the state directories. The build caches ($MESH_CACHE) stay.
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/env.sh"
need_root "cluster-down"

# stop NAME: TERM the recorded PID, KILL it after 10 s.
stop() {
  local pidf="$PID_DIR/$1.pid" pid
  [ -f "$pidf" ] || return 0
  pid="$(cat "$pidf")"
  if kill -0 "$pid" 2>/dev/null; then
    log "$1: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

stop kube-proxy
stop kubelet
stop kube-scheduler
stop kube-controller-manager

# Pods: kill every container task, then tear down the sandboxes' netns.
netns=()
if [ -S "$CONTAINERD_SOCK" ] && ctr_ version >/dev/null 2>&1; then
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ns="$(ctr_ containers info "$c" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*' | head -n1 || true)"
    [ -n "$ns" ] && netns+=("$ns")
    ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
  done
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    for _ in $(seq 1 20); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 && break; ctr_ tasks ls -q 2>/dev/null | grep -qx "$c" || break; sleep 0.25; done
    ctr_ containers delete "$c" >/dev/null 2>&1 || true
  done
  log "pods: removed containers"
fi
stop containerd
# Shims whose containerd is gone exit on their own once their task is deleted;
# any left are ours by their -address argument.
for p in /proc/[0-9]*; do
  cmdline="$(tr '\0' ' ' 2>/dev/null < "$p/cmdline" || true)"
  case "$cmdline" in
    *"-address $CONTAINERD_SOCK"*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
  esac
done
# Pod network namespaces: those containerd named, and any other cni-* netns
# holding an address of the pod range (left by an interrupted run: a stale
# one keeps a host route to a pod IP the next cluster hands out again).
in_pod_cidr() { # IP: true when IP is inside $POD_CIDR
  local ip=$1 net=${POD_CIDR%/*} bits=${POD_CIDR#*/} a b c d n
  IFS=. read -r a b c d <<<"$ip"; n=$(( (a<<24)|(b<<16)|(c<<8)|d ))
  IFS=. read -r a b c d <<<"$net"; local m=$(( (a<<24)|(b<<16)|(c<<8)|d ))
  [ $(( (n ^ m) >> (32-bits) )) -eq 0 ]
}
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
  ours=0
  case " ${netns[*]:-} " in *"/$ns "*) ours=1 ;; esac
  if [ $ours = 0 ]; then
    for ip in $(ip netns exec "$ns" ip -4 -o addr show scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1); do
      in_pod_cidr "$ip" && ours=1
    done
  fi
  [ $ours = 1 ] || continue
  ip netns delete "$ns" 2>/dev/null || { umount -l "/var/run/netns/$ns" 2>/dev/null || true; rm -f "/var/run/netns/$ns" 2>/dev/null || log "netns $ns: could not remove /var/run/netns/$ns"; }
done

stop kube-apiserver
stop etcd

# kube-proxy's iptables chains.
if [ -x "$K8S_BIN/kube-proxy" ]; then
  "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
fi

# The kubelet's own chains (iptables and ip6tables): canaries, the localnet
# firewall and the iptables hint.
for ipt in iptables ip6tables; do
  $ipt -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
  $ipt -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
  for tc in filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT; do
    $ipt -t "${tc%%:*}" -F "${tc#*:}" 2>/dev/null || true
    $ipt -t "${tc%%:*}" -X "${tc#*:}" 2>/dev/null || true
  done
done

# Mounts under the kubelet and containerd directories, deepest first.
for dir in "$KUBELET_DIR" "$CONTAINERD_ROOT" "$CONTAINERD_STATE"; do
  awk -v d="$dir" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
done

# What the mesh's node components left on the node when their pods were
# killed rather than uninstalled: the CNI plugin binary, the agent's and
# ztunnel's socket directories, the kubelet-probe SNAT table.
rm -f "$CNI_BIN_DIR/ambient-cni"
rm -rf /run/ambient-mesh /var/run/ztunnel
nft delete table inet ambient-mesh-host 2>/dev/null || true

# Host network: the node bridge, CNI config, plugin links and IPAM state.
ip link delete "$NODE_BRIDGE" 2>/dev/null || true
rm -f "$CNI_CONF_DIR/10-$CNI_NETWORK.conflist"
for p in /usr/lib/cni/*; do
  l="$CNI_BIN_DIR/$(basename "$p")"
  [ -L "$l" ] && [ "$(readlink "$l")" = "$p" ] && rm -f "$l"
done
rmdir "$CNI_BIN_DIR" "$CNI_CONF_DIR" 2>/dev/null || true
rmdir "$(dirname "$CNI_BIN_DIR")" "$(dirname "$CNI_CONF_DIR")" 2>/dev/null || true
rm -rf "/var/lib/cni/networks/$CNI_NETWORK" "/var/lib/cni/results"
rmdir /var/lib/cni/networks /var/lib/cni 2>/dev/null || true

rm -rf "$KUBELET_DIR" "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$CLUSTER_DIR"
rmdir /var/lib/ambient-mesh /run/ambient-mesh 2>/dev/null || true
log "cluster down: processes, pods, netns, bridge, rules and state removed"
