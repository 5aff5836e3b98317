#!/usr/bin/env bash
# Regenerates every generated file from its source:
#   crds/                  from the Rust types (`tether crd`)
#   docs/reference.md      every field's description, from the same types
#   charts/tether/crds/    the same CRDs, shipped with the chart
#   charts/tether/argocd/  the Argo CD health checks of deploy/argocd/, for the chart
#   deploy/tether.yaml     the chart rendered with its default values
# `cargo test` (tests/generated.rs) fails when a checked-in copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --bin tether -- crd --out-dir crds
cargo run --quiet --bin tether -- crd --reference docs/reference.md
rm -rf charts/tether/crds && cp -r crds charts/tether/crds
rm -rf charts/tether/argocd && cp -r deploy/argocd charts/tether/argocd
helm=$(scripts/helm.sh)
mkdir -p deploy
# Rendered for Kubernetes >= 1.36 (the API server the tests run), so the
# approval MutatingAdmissionPolicy is included.
"$helm" template tether charts/tether --namespace tether-system \
  --api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy > deploy/tether.yaml
echo "generated: crds/ charts/tether/crds/ deploy/tether.yaml"
