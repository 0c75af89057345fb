# shellcheck shell=bash
# Addresses and names of the local one-node cluster. Sourced by hack/cluster/*.
#
# All addresses come from 198.18.0.0/15, the range RFC 2544 reserves for
# benchmark and test networks, so they never collide with a real network the
# host is on and never leave the machine.
NODE_NAME=mesh-node
NODE_IP=198.18.0.1           # on the bridge mesh0 that cluster-up creates
NODE_BRIDGE=mesh0
POD_CIDR=198.18.16.0/20      # pods get addresses from here (ptp + host-local)
SERVICE_CIDR=198.19.0.0/16
KUBERNETES_SVC_IP=198.19.0.1
DNS_SVC_IP=198.19.0.10
CLUSTER_DOMAIN=cluster.local
CNI_NETWORK=mesh-pods
CNI_CONF_DIR=/etc/cni/net.d
CNI_BIN_DIR=/opt/cni/bin
CONTAINERD_ROOT=/var/lib/ambient-mesh/containerd
CONTAINERD_STATE=/run/ambient-mesh/containerd
CONTAINERD_SOCK=$CONTAINERD_STATE/containerd.sock
KUBELET_DIR=/var/lib/ambient-mesh/kubelet
PKI_DIR=$CLUSTER_DIR/pki
LOG_DIR=$CLUSTER_DIR/logs
PID_DIR=$CLUSTER_DIR/pids
IMAGE_REPO=localhost/ambient-mesh
export NODE_NAME NODE_IP POD_CIDR SERVICE_CIDR DNS_SVC_IP CLUSTER_DOMAIN CONTAINERD_SOCK IMAGE_REPO

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
