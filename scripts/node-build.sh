#!/usr/bin/env bash
# Builds the node half of a single-node cluster — kubelet,
# kube-controller-manager and kube-scheduler — from the same upstream Go
# modules and version as scripts/control-plane.sh, into a cache outside the
# repository, only when they are missing. Prints the directory that holds
# them.
#
#   scripts/node-build.sh               build if needed, print the bin dir
#   TETHER_CACHE=/path scripts/...      use another cache root
#
# Same wrapper-module trick as scripts/control-plane.sh: k8s.io/kubernetes
# maps its staging modules to ./staging with replace directives, which we
# point at the published modules of the same release.
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.36.3}"
CACHE="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
BIN="$CACHE/node/k8s-${KUBERNETES_VERSION}"
COMPONENTS=(kubelet kube-controller-manager kube-scheduler)

log() { printf '[node-build] %s\n' "$*" >&2; }

missing=()
for c in "${COMPONENTS[@]}"; do
  [[ -x "$BIN/$c" ]] || missing+=("$c")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build the node"; exit 1; }
mkdir -p "$BIN"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0
export GOMAXPROCS="${GOMAXPROCS:-2}"

minor="${KUBERNETES_VERSION#v1.}"
staging_version="v0.${minor}"
major_minor="${minor%%.*}"
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=${major_minor} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=${major_minor}"

log "building ${missing[*]} ${KUBERNETES_VERSION} (first time only)"
kdir="$CACHE/node/build-src/kubernetes-${KUBERNETES_VERSION}"
mkdir -p "$kdir"
gomod_file=$(cd "$kdir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
[[ -f "$gomod_file" ]] || { log "could not download k8s.io/kubernetes@${KUBERNETES_VERSION}"; exit 1; }
{
  echo "module tether.dev/node/kubernetes"
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
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for c in "${COMPONENTS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
  echo ")"
} > "$kdir/tools.go"
(cd "$kdir" && go mod tidy -e >&2)
for c in "${missing[@]}"; do
  (cd "$kdir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c" >&2 \
    && mv "$BIN/$c.tmp" "$BIN/$c")
done

log "node binaries ready in $BIN"
echo "$BIN"
