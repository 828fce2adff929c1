#!/usr/bin/env bash
# Runs every check: actionlint, formatting, clippy (warnings are errors), a
# check and a short run of the fuzz target, and the whole test suite,
# real-firewall tests included (in namespaces they create).
# Installs missing dependencies first, starts a Docker engine when none
# runs (stopped again at exit) and builds the distro images. Needs root for
# the firewall and distro tests; without root they are skipped, except when
# CI is set, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  if [ -n "${CI:-}" ]; then
    echo "test.sh: needs root (CI is set: the firewall tests must run); try: sudo $0" >&2
    exit 1
  fi
  echo "test.sh: not root: the firewall, netns and distro tests will be skipped (sudo $0 runs them)" >&2
fi
bash scripts/install-deps.sh
# cargo and actionlint where install-deps found or put them (sudo's
# secure_path drops ~/.cargo/bin; actionlint lives in a venv).
source scripts/paths.sh

# The root namespace's sysctls, firewall and namespaces: the suite must
# leave them exactly as it found them.
host_before="$(bash scripts/host-state.sh)"
# Step headers carry the seconds since the start: where a CI run's time went.
step() { echo "==> $* (+${SECONDS}s)"; }
engine_started=""
images_pid=""
finish() {
  local rc=$?
  if [ -n "$images_pid" ]; then  # a step failed while the images built
    kill -TERM -- "-$images_pid" 2>/dev/null || true
    wait "$images_pid" 2>/dev/null || true
  fi
  [ -n "$engine_started" ] && bash scripts/docker-engine.sh stop
  local host_after
  host_after="$(bash scripts/host-state.sh)"
  if [ "$host_after" != "$host_before" ]; then
    echo "test.sh: FAILED: the root network namespace is not as the suite found it:" >&2
    diff <(echo "$host_before") <(echo "$host_after") >&2 || true
    rc=1
  else
    step "root namespace unchanged (sysctls, firewall, namespaces)"
  fi
  exit "$rc"
}
trap finish EXIT

# The distro images (debootstrap, mostly waiting on the mirror) build in
# the background while the compile steps below use the CPU (in a
# process group of their own, so a failing step can stop them).
images_log="target/build-test-images.log"
step "Docker engine; distro images in the background (scripts/build-test-images.sh, log: $images_log)"
if engine="$(bash scripts/docker-engine.sh start)"; then
  eval "$engine"
  engine_started=1
  mkdir -p target
  setsid bash scripts/build-test-images.sh --only distros >"$images_log" 2>&1 &
  images_pid=$!
elif [ -n "${CI:-}" ]; then
  echo "test.sh: no Docker engine (CI is set: the distro suite must run)" >&2
  exit 1
else
  echo "test.sh: no Docker engine; the distro tests will be skipped" >&2
fi

step "actionlint (.github workflows and actions)"
actionlint
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# fuzz/ is its own workspace (root Cargo.toml excludes it), so clippy and
# cargo test never build it. --locked: fuzz/Cargo.lock must already know
# every dependency the plugin and backends crates have.
step "cargo check of the fuzz workspace (fuzz/Cargo.toml, --locked)"
cargo check --locked --quiet --manifest-path fuzz/Cargo.toml
step "fuzz config and prevResult parsing for 15 s (scripts/fuzz.sh)"
bash scripts/fuzz.sh 15
step "static release binaries (scripts/release.sh; the Debian 11 image runs them)"
bash scripts/release.sh
step ".deb and .rpm packages (scripts/package.sh; conformance/tests/packages installs them)"
bash scripts/package.sh
if [ -n "$images_pid" ]; then
  step "distro images (waiting for the background build) and the Kubernetes image"
  images_rc=0
  wait "$images_pid" || images_rc=$?
  images_pid=""
  sed 's/^/  /' "$images_log"
  if [ "$images_rc" -ne 0 ]; then
    echo "test.sh: scripts/build-test-images.sh --only distros failed (exit $images_rc)" >&2
    exit 1
  fi
  bash scripts/build-test-images.sh --only portmap
  step "Debian 11 and 13 root filesystems for the iptables-nft netlink read test (scripts/tests/userlands.sh)"
  PORTMAP_TEST_USERLANDS="$(bash scripts/tests/userlands.sh)"
  export PORTMAP_TEST_USERLANDS
fi
step "install-deps under sudo's reset PATH (scripts/tests/install-deps-sudo.sh)"
bash scripts/tests/install-deps-sudo.sh
step "the reusable action run for real with act (scripts/tests/action-selftest.sh)"
bash scripts/tests/action-selftest.sh
step "cargo test"
cargo test --workspace "$@"
