#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from their upstream Go modules at the
# pinned versions below into a cache outside the repository, only when they
# are missing. Prints the directory that holds them.
#
#   scripts/control-plane.sh            build if needed, print the bin dir
#   TETHER_CACHE=/path scripts/...      use another cache root
#
# k8s.io/kubernetes cannot be `go install`ed directly: its go.mod maps the
# k8s.io/* staging modules to ./staging with replace directives. We read those
# directives from the published go.mod and point each one at the published
# module of the same release (v0.MINOR.PATCH), in a throw-away wrapper module.
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
BIN="$CACHE/control-plane/k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}"

log() { printf '[control-plane] %s\n' "$*" >&2; }

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kubectl" && -x "$BIN/etcd" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build the control plane"; exit 1; }
mkdir -p "$BIN"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0
# Two cores, ~1.6 GiB peak for kube-apiserver: one package at a time is slower
# but keeps memory predictable on small machines.
export GOMAXPROCS="${GOMAXPROCS:-2}"

work="$CACHE/control-plane/build-src"
mkdir -p "$work"

minor="${KUBERNETES_VERSION#v1.}"            # 36.3
staging_version="v0.${minor}"                # v0.36.3
major_minor="${minor%%.*}"                   # 36
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=${major_minor} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=${major_minor}"

if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/kubectl" ]]; then
  log "building kube-apiserver and kubectl ${KUBERNETES_VERSION} (first time only: ~5-10 min)"
  kdir="$work/kubernetes-${KUBERNETES_VERSION}"
  mkdir -p "$kdir"
  gomod_file=$(cd "$kdir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
  [[ -f "$gomod_file" ]] || { log "could not download k8s.io/kubernetes@${KUBERNETES_VERSION}"; exit 1; }
  {
    echo "module tether.dev/control-plane/kubernetes"
    echo
    echo "go 1.25"
    echo
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    echo
    echo "replace ("
    grep -E '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging/src/' "$gomod_file" \
      | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > "$kdir/go.mod"
  cat > "$kdir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$kdir" && go mod tidy -e >&2 \
    && go build -trimpath -ldflags "$ldflags" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver \
    && mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver" \
    && go build -trimpath -ldflags "$ldflags" -o "$BIN/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl \
    && mv "$BIN/kubectl.tmp" "$BIN/kubectl")
fi

if [[ ! -x "$BIN/etcd" ]]; then
  log "building etcd ${ETCD_VERSION} (first time only: ~2 min)"
  edir="$work/etcd-${ETCD_VERSION}"
  mkdir -p "$edir"
  cat > "$edir/go.mod" <<GOMOD
module tether.dev/control-plane/etcd

go 1.25

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
GOMOD
  cat > "$edir/main.go" <<'GO'
// etcd's own main package lives in a module with replace directives, so we
// call its entry point from a wrapper, as the upstream main.go does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$edir" && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" . \
    && mv "$BIN/etcd.tmp" "$BIN/etcd")
fi

log "control plane ready in $BIN"
echo "$BIN"
