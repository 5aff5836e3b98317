#!/usr/bin/env bash
# The test command: what CI runs and what the README names.
#   1. builds (once, cached outside the repo) kube-apiserver, etcd, kubectl,
#      helm and tether-health (kstatus + the Lua VM of Argo CD, for the
#      GitOps health tests) from their upstream Go modules at pinned versions;
#   2. checks formatting and lints (with and without the `dev` feature);
#   3. runs every test: unit tests, the simulator, and the integration tests
#      against a real control plane (tests/), including the generated-files
#      check.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
echo "==> control plane binaries"; scripts/control-plane.sh
echo "==> helm"; scripts/helm.sh
echo "==> health tools (kstatus, Argo CD Lua)"; scripts/health-tools.sh
echo "==> cargo fmt --check"; cargo fmt --all -- --check
echo "==> cargo clippy"
# Everything, with the development tooling (simulator, sandbox)...
cargo clippy --workspace --all-targets --locked --features tether/dev -- -D warnings
# ...and the controller as the image builds it, without.
cargo clippy -p tether --lib --bins --locked -- -D warnings
echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace --features tether/dev --lib --bins --tests 2>&1 | tee "$log"
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
echo "==> done in $(( $(date +%s) - start ))s"
echo "tests: ${passed} passed, ${failed} failed"
