#!/usr/bin/env bash
# The main job: build release binaries and run the conformance matrix
# (every scenario x nftables, nftables-maps (our opt-in maps layout),
# iptables-nft, iptables-nft-tree (our opt-in port tree), iptables-legacy,
# auto, with
# containers attached both by the built-in veth setup and by a real
# bridge + host-local CNI chain) with real traffic in network namespaces,
# against our portmap and, side by side, the upstream reference binary
# when it is installed.
# Reports land in target/conformance/ (JSON, JUnit XML, Markdown).
# Extra arguments go to `portmap-conformance run` (e.g. --scenario tcp).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/release-env.sh
out=target/conformance
mkdir -p "$out"
args=(--plugin target/release/portmap "${REFERENCE_ARGS[@]}" --json "$out/report.json" --junit "$out/junit.xml" --markdown "$out/summary.md")
status=0
target/release/portmap-conformance run "${args[@]}" "$@" || status=$?
echo "reports: $out/report.json $out/junit.xml $out/summary.md"
exit "$status"
