#!/usr/bin/env bash
# Benchmarks our portmap against the upstream binary side by side in one
# run: ADD and DEL latency (median, p95 over 30 operations per cell) with
# N = 0, 100 and 1000 other containers installed, on nftables,
# iptables-nft and iptables-legacy, each in a fresh network namespace, and
# the processes each ADD/DEL starts (counted with strace). Prints a table
# with ours/upstream ratios and the README's targets, and writes
# target/bench/bench.json and target/bench/latency.svg.
# Extra arguments go to `portmap-conformance bench` (e.g. --sizes 0,100
# --ops 10 for a quick look, --gate to exit 3 on a missed target).
# Takes about five minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/release-env.sh
out=target/bench
mkdir -p "$out"
args=(--plugin target/release/portmap "${REFERENCE_ARGS[@]}" --json "$out/bench.json" --plot "$out/latency.svg")
target/release/portmap-conformance bench "${args[@]}" "$@"
echo "reports: $out/bench.json $out/latency.svg"
