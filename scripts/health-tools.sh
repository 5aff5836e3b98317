#!/usr/bin/env bash
# Builds tether-health (tools/health: kstatus from sigs.k8s.io/cli-utils and
# the gopher-lua VM Argo CD embeds) at the pinned module versions below into
# the same cache as the control plane, only when missing. Prints the binary's
# path. The cache key holds the versions and a hash of the source, so editing
# tools/health/main.go rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."

CLI_UTILS_VERSION="${CLI_UTILS_VERSION:-v0.37.2}"
GOPHER_LUA_VERSION="${GOPHER_LUA_VERSION:-v1.1.1}"
CACHE="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
src_hash=$(sha256sum tools/health/main.go | cut -c1-12)
BIN="$CACHE/health-tools/cli-utils-${CLI_UTILS_VERSION}-gopher-lua-${GOPHER_LUA_VERSION}-${src_hash}"

if [[ ! -x "$BIN/tether-health" ]]; then
  command -v go >/dev/null || { echo "[health-tools] go is required" >&2; exit 1; }
  echo "[health-tools] building tether-health (cli-utils ${CLI_UTILS_VERSION}, gopher-lua ${GOPHER_LUA_VERSION}; first time only: ~1 min)" >&2
  mkdir -p "$BIN"
  work="$CACHE/health-tools/build-src"
  rm -rf "$work"
  mkdir -p "$work"
  cp tools/health/main.go "$work/"
  cat > "$work/go.mod" <<GOMOD
module tether.dev/health-tools

go 1.25

require (
	sigs.k8s.io/cli-utils ${CLI_UTILS_VERSION}
	github.com/yuin/gopher-lua ${GOPHER_LUA_VERSION}
)
GOMOD
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >&2 \
    && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$BIN/tether-health.tmp" . \
    && mv "$BIN/tether-health.tmp" "$BIN/tether-health")
fi
echo "$BIN/tether-health"
