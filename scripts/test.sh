#!/usr/bin/env bash
# Runs every check: actionlint, formatting, clippy (warnings are errors) and the whole
# test suite, real-firewall tests included (in namespaces they create).
# Installs missing dependencies first. Needs root for the firewall tests;
# without root they are skipped, except when CI is set, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "==> actionlint (.github workflows and actions)"
actionlint
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace "$@"
