#!/usr/bin/env bash
# The main job: a local sandbox with a real control plane, the simulator,
# the controller and examples/ converging. Ctrl-C stops everything.
#   scripts/sandbox.sh                       run until Ctrl-C
#   scripts/sandbox.sh --exit-when-ready 120 exit once every ExternalResource is Ready
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/control-plane.sh >/dev/null
scripts/helm.sh >/dev/null
cargo build --quiet --features dev --bin tether
exec target/debug/tether sandbox --repo . "$@"
