#!/usr/bin/env bash
# Builds helm from its upstream Go module at a pinned version into the same
# cache as the control plane, only when missing. Prints the binary's path.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
CACHE="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
BIN="$CACHE/helm-${HELM_VERSION}"
if [[ ! -x "$BIN/helm" ]]; then
  echo "[helm] building helm ${HELM_VERSION} (first time only: ~2 min)" >&2
  mkdir -p "$BIN"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}" >&2
fi
echo "$BIN/helm"
