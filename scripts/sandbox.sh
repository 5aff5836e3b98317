#!/usr/bin/env bash
# The main job: a local sandbox with a real control plane, the simulator,
# the controller and examples/ converging. Ctrl-C stops everything.
#   scripts/sandbox.sh                       run until Ctrl-C
#   scripts/sandbox.sh --exit-when-ready 120 exit once every ExternalResource is Ready
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d "${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}/control-plane" ]]; then
  echo "==> first run: building kube-apiserver, etcd and kubectl from their Go modules (about 7 minutes on 2 cores; cached in ~/.cache/tether)" >&2
fi
scripts/control-plane.sh >/dev/null
scripts/helm.sh >/dev/null
echo "==> building tether (cargo build --features dev; the first build takes a few minutes)" >&2
cargo build --features dev --bin tether
exec target/debug/tether sandbox --repo . "$@"
