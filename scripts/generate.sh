#!/usr/bin/env bash
# Regenerates every generated file from its source:
#   crds/                  from the Rust types (`tether crd`)
#   charts/tether/crds/    the same CRDs, shipped with the chart
#   deploy/tether.yaml     the chart rendered with its default values
# `cargo test` (tests/generated.rs) fails when a checked-in copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --bin tether -- crd --out-dir crds
rm -rf charts/tether/crds && cp -r crds charts/tether/crds
helm=$(scripts/helm.sh)
mkdir -p deploy
"$helm" template tether charts/tether --namespace tether-system > deploy/tether.yaml
echo "generated: crds/ charts/tether/crds/ deploy/tether.yaml"
