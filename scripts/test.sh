#!/usr/bin/env bash
# Runs every check: actionlint, formatting, clippy (warnings are errors) and the whole
# test suite, real-firewall tests included (in namespaces they create).
# Installs missing dependencies first, starts a Docker engine when none
# runs (stopped again at exit) and builds the distro images. Needs root for
# the firewall and distro tests; without root they are skipped, except when
# CI is set, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "==> actionlint (.github workflows and actions)"
actionlint
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> Docker engine and distro images (for conformance/tests/distros.rs)"
if engine="$(bash scripts/docker-engine.sh start)"; then
  eval "$engine"
  trap 'bash scripts/docker-engine.sh stop' EXIT
  bash scripts/build-test-images.sh
elif [ -n "${CI:-}" ]; then
  echo "test.sh: no Docker engine (CI is set: the distro suite must run)" >&2
  exit 1
else
  echo "test.sh: no Docker engine; the distro tests will be skipped" >&2
fi
echo "==> cargo test"
cargo test --workspace "$@"
