#!/usr/bin/env bash
# Starts the local one-node Kubernetes cluster: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy, and
# CoreDNS. Idempotent: a component that already runs is left alone, so a
# second run on a warm machine takes seconds. Needs root.
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/env.sh"
need_root "cluster-up"
start_all=$SECONDS

"$REPO_ROOT/hack/install-deps.sh"
"$REPO_ROOT/hack/build-k8s.sh"
"$REPO_ROOT/hack/cluster/pki.sh"
mkdir -p "$LOG_DIR" "$PID_DIR" "$CLUSTER_DIR/etc" "$OUT_DIR/bin"
K="$K8S_BIN"
# The machine's kubectl is older than the supported skew: use the pinned one.
ln -sf "$K/kubectl" "$OUT_DIR/bin/kubectl"
kc() { "$K/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# running NAME: the component's recorded PID is alive.
running() {
  local pidf="$PID_DIR/$1.pid"
  [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null
}
# start NAME CMD...: start a component in the background with its own log and
# PID file, unless it runs already.
start() {
  local name=$1; shift
  if running "$name"; then
    log "$name: running (pid $(cat "$PID_DIR/$name.pid"))"
    return 0
  fi
  log "$name: starting (log: $LOG_DIR/$name.log)"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$name.pid"
}
# write_if_changed FILE: write stdin to FILE only when it differs, so a
# running component that watches its config (kube-proxy exits when its file
# changes) is left alone by a second cluster-up.
write_if_changed() {
  local tmp="$1.tmp.$$"
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}
# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit)) said=0
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      die "$what not ready after ${limit}s; check the logs in $LOG_DIR"
    fi
    if [ $((SECONDS % 10)) -eq 0 ] && [ $said -ne $SECONDS ]; then log "waiting for $what"; said=$SECONDS; fi
    sleep 0.5
  done
}

# --- host network ----------------------------------------------------------
# The CNI agent mounts /run/netns with HostToContainer propagation, to see the
# pods' network namespaces created after it started; the runtime refuses that
# unless the mount holding that path is shared ("is mounted on / but it is not
# a shared or slave mount"). systemd makes / shared at boot; a host without it
# (a container, a sandbox) has / private until `ip netns add` first runs (which
# makes /run/netns a shared mount of its own). Make the mount that holds it
# shared and recursive, as systemd does for /. (Bind-mounting /run/netns onto
# itself instead would hide namespaces already mounted under it from the
# cluster's teardown.)
mkdir -p /run/netns
read -r nsmnt nsprop < <(findmnt -n -o TARGET,PROPAGATION -T /run/netns)
case "$nsprop" in
  shared*|slave*) ;;
  *) log "mounts: $nsmnt made shared (was $nsprop; the CNI agent's HostToContainer volume of /run/netns needs it)"
     mount --make-rshared "$nsmnt" ;;
esac
if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
  log "network: bridge $NODE_BRIDGE with node IP $NODE_IP"
  ip link add "$NODE_BRIDGE" type bridge
fi
ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
ip link set "$NODE_BRIDGE" up
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.ipv4.conf.all.route_localnet=1 2>/dev/null || true

mkdir -p "$CNI_BIN_DIR" "$CNI_CONF_DIR"
for p in /usr/lib/cni/*; do
  [ -e "$CNI_BIN_DIR/$(basename "$p")" ] || ln -s "$p" "$CNI_BIN_DIR/$(basename "$p")"
done
# ptp gives each pod a veth with a /32 route through the host, so every packet
# (pod to service to pod too) is routed and seen by conntrack; no bridge and no
# br_netfilter are needed. Written only when missing: the mesh's CNI installer
# appends its plugin to this chain, and a second cluster-up must keep that.
[ -f "$CNI_CONF_DIR/10-$CNI_NETWORK.conflist" ] || cat > "$CNI_CONF_DIR/10-$CNI_NETWORK.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI

# --- etcd --------------------------------------------------------------------
P="$PKI_DIR"
start etcd etcd --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" \
  --cert-file "$P/etcd-server.crt" --key-file "$P/etcd-server.key" \
  --client-cert-auth --trusted-ca-file "$P/ca.crt" --listen-metrics-urls http://127.0.0.1:2381
wait_for etcd 30 curl -sf http://127.0.0.1:2381/health

# --- kube-apiserver ----------------------------------------------------------
start kube-apiserver "$K/kube-apiserver" \
  --advertise-address "$NODE_IP" --bind-address 0.0.0.0 --secure-port 6443 \
  --etcd-servers https://127.0.0.1:2379 --etcd-cafile "$P/ca.crt" \
  --etcd-certfile "$P/apiserver-etcd-client.crt" --etcd-keyfile "$P/apiserver-etcd-client.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --anonymous-auth=false --allow-privileged=true \
  --client-ca-file "$P/ca.crt" --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" --kubelet-client-key "$P/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$P/ca.crt" --kubelet-preferred-address-types InternalIP \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --api-audiences "https://kubernetes.default.svc.$CLUSTER_DOMAIN,istio-ca"
wait_for kube-apiserver 90 kc get --raw /readyz

# --- controller-manager and scheduler ----------------------------------------
start kube-controller-manager "$K/kube-controller-manager" \
  --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" \
  --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false
start kube-scheduler "$K/kube-scheduler" \
  --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false

# --- containerd --------------------------------------------------------------
mkdir -p "$CONTAINERD_ROOT" "$CONTAINERD_STATE"
write_if_changed "$CLUSTER_DIR/etc/containerd.toml" <<TOML
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGE_REPO/pause:dev"
  # The sandbox lacks CAP_SYS_RESOURCE: without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
TOML
start containerd containerd --config "$CLUSTER_DIR/etc/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version

# Images: pause first (the sandbox image), then the cluster's and the mesh's.
"$REPO_ROOT/hack/images.sh" import

# --- kubelet -----------------------------------------------------------------
mkdir -p "$KUBELET_DIR"
write_if_changed "$CLUSTER_DIR/etc/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$P/kubelet-serving.crt"
tlsPrivateKeyFile: "$P/kubelet-serving.key"
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$DNS_SVC_IP]
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
maxPods: 250
YAML
start kubelet "$K/kubelet" --config "$CLUSTER_DIR/etc/kubelet.yaml" \
  --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
  --node-ip "$NODE_IP" --root-dir "$KUBELET_DIR" --v=1

# --- kube-proxy --------------------------------------------------------------
write_if_changed "$CLUSTER_DIR/etc/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$CLUSTER_DIR/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
nodePortAddresses: [primary]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
start kube-proxy "$K/kube-proxy" --config "$CLUSTER_DIR/etc/kube-proxy.yaml"

wait_for "node $NODE_NAME Ready" 120 kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s

# --- CoreDNS -----------------------------------------------------------------
sed -e "s|@DNS_SVC_IP@|$DNS_SVC_IP|g" -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@IMAGE_REPO@|$IMAGE_REPO|g" \
  "$REPO_ROOT/hack/cluster/coredns.yaml" | kc apply -f - >/dev/null
log "coredns: applied; waiting for it"
wait_for coredns 120 kc -n kube-system rollout status deploy/coredns --timeout=2s
log "cluster up in $((SECONDS-start_all))s: export KUBECONFIG=$KUBECONFIG_ADMIN (kubectl: $K/kubectl)"
