#!/usr/bin/env bash
# Generates the local cluster's PKI with openssl: a cluster CA; etcd serving and
# client certs; apiserver serving cert; client certs (and kubeconfigs) for the
# admin, controller-manager, scheduler, kube-proxy and kubelet (Node
# authorizer identity); the kubelet's serving cert; the apiserver's client cert
# for kubelets; and the service-account signing key pair. Keeps what exists, so
# a second run changes nothing.
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/env.sh"

mkdir -p "$PKI_DIR"
cd "$PKI_DIR"
umask 077

if [ ! -f ca.crt ]; then
  log "pki: generating cluster CA"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=ambient-mesh-local-ca" -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# cert NAME CN O USAGE SANS: a leaf signed by the CA (USAGE serverAuth/clientAuth).
cert() {
  local name=$1 cn=$2 org=$3 usage=$4 sans=${5:-}
  [ -f "$name.crt" ] && return 0
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 825 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

log "pki: leaf certificates"
cert etcd-server etcd "" serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1"
cert apiserver-etcd-client kube-apiserver-etcd-client "" clientAuth
cert apiserver kube-apiserver "" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
cert admin kubernetes-admin system:masters clientAuth
cert controller-manager system:kube-controller-manager "" clientAuth
cert scheduler system:kube-scheduler "" clientAuth
cert kube-proxy system:kube-proxy "" clientAuth
cert kubelet "system:node:$NODE_NAME" system:nodes clientAuth
cert kubelet-serving "system:node:$NODE_NAME" system:nodes serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"

if [ ! -f sa.key ]; then
  log "pki: service-account signing key"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi

# kubeconfig NAME: a client-cert kubeconfig for the API server.
kubeconfig() {
  local name=$1 out="$CLUSTER_DIR/$1.kubeconfig"
  [ -f "$out" ] && return 0
  cat > "$out" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$name.crt")
    client-key-data: $(base64 -w0 "$name.key")
contexts:
- name: ambient-mesh-local
  context: {cluster: local, user: $name}
current-context: ambient-mesh-local
KC
}
for k in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$k"; done
chmod 0644 ca.crt
log "pki: ready in $PKI_DIR"
