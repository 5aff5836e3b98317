#!/usr/bin/env bash
# Installs, from Debian's packages and only when missing, what
# scripts/image.sh and scripts/node.sh need: buildah (images without a
# daemon), runc, containerd and the CNI plugins (the node), debootstrap
# (the builder base image), iproute2 and util-linux (namespaces), openssl
# and curl.
set -euo pipefail
needed=()
have() { command -v "$1" >/dev/null 2>&1; }
have buildah || needed+=(buildah)
have runc || needed+=(runc)
have containerd || needed+=(containerd)
[[ -x /usr/lib/cni/bridge ]] || needed+=(containernetworking-plugins)
have debootstrap || needed+=(debootstrap)
have ip || needed+=(iproute2)
have nsenter || needed+=(util-linux)
have openssl || needed+=(openssl)
have curl || needed+=(curl)
have gcc || needed+=(gcc libc6-dev)
if [[ ${#needed[@]} -gt 0 ]]; then
  echo "[node-deps] installing ${needed[*]}" >&2
  [[ $(id -u) -eq 0 ]] || { echo "[node-deps] needs root to install ${needed[*]}" >&2; exit 1; }
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${needed[@]}" >&2
fi
