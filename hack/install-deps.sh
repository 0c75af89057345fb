#!/usr/bin/env bash
# Installs the Debian packages the local cluster and the privileged tests need,
# only those missing. Idempotent; needs root.
source "$(dirname "$0")/lib.sh"
need_root "installing packages"

# package -> a file it installs (how we tell it is present)
declare -A pkgs=(
  [etcd-server]=/usr/bin/etcd
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/ptp
  [iptables]=/usr/sbin/iptables
  [nftables]=/usr/sbin/nft
  [conntrack]=/usr/sbin/conntrack
  [haproxy]=/usr/sbin/haproxy
  [iproute2]=/usr/sbin/ip
  [openssl]=/usr/bin/openssl
  [curl]=/usr/bin/curl
)
missing=()
for p in "${!pkgs[@]}"; do
  [ -e "${pkgs[$p]}" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "debian packages: all present"
  exit 0
fi
log "installing debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged daemons when it can; the cluster runs its own
# instances with their own state, so the packaged ones are not needed.
log "debian packages installed"
