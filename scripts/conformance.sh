#!/usr/bin/env bash
# The main job: build release binaries and run the conformance matrix
# (every scenario x nftables, iptables-nft, iptables-legacy, auto, with
# containers attached both by the built-in veth setup and by a real
# bridge + host-local CNI chain) with real traffic in network namespaces,
# against our portmap and, side by side, the upstream reference binary
# when it is installed.
# Reports land in target/conformance/ (JSON, JUnit XML, Markdown).
# Extra arguments go to `portmap-conformance run` (e.g. --scenario tcp).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "conformance.sh: needs root (it creates network namespaces); try: sudo $0" >&2
  exit 1
fi

cargo build --release --workspace --quiet
out=target/conformance
mkdir -p "$out"
args=(--plugin target/release/portmap --json "$out/report.json" --junit "$out/junit.xml" --markdown "$out/summary.md")
reference=${PORTMAP_REFERENCE:-/usr/lib/cni/portmap}
if [ -x "$reference" ]; then
  args+=(--reference "$reference")
fi
status=0
target/release/portmap-conformance run "${args[@]}" "$@" || status=$?
echo "reports: $out/report.json $out/junit.xml $out/summary.md"
exit "$status"
