#!/usr/bin/env bash
# Benchmarks our portmap (beside the upstream binary where it applies) in
# one run, on nftables, iptables-nft and iptables-legacy, each section in
# fresh network namespaces:
#  - latency: ADD and DEL (median, p95 over 20 operations per cell) with
#    N = 0, 100 and 1000 other containers installed, ours and upstream,
#    and the processes each ADD/DEL starts (counted with strace);
#  - mappings: one container with 1,000 UDP vs 1,000 TCP mappings, and
#    5,000 consecutive TCP mappings vs one (ours only);
#  - dataplane: new TCP connections from a client namespace to an
#    unpublished and a published host port, with the probe alone, beside
#    5,000 mappings, beside 1,000 containers;
#  - restore: `portmap restore` with nothing missing at N = 20, 200, 1000,
#    and ADD/DEL beside `portmap watch` at 1,000 against the quiet host
#    (a restore pass over 60 s is stopped and reported as "> 60 s").
# Prints a table per section and each target met or MISSED, and writes
# target/bench/bench.json, latency.svg and dataplane.svg.
# Extra arguments go to `portmap-conformance bench` (e.g. --sections
# mappings,dataplane; --sizes 0,100 --ops 10 for a quick look; --gate to
# exit 3 on a missed target). Takes about 13 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/release-env.sh
out=target/bench
mkdir -p "$out"
args=(--plugin target/release/portmap "${REFERENCE_ARGS[@]}" --json "$out/bench.json"
  --plot "$out/latency.svg" --dataplane-plot "$out/dataplane.svg")
target/release/portmap-conformance bench "${args[@]}" "$@"
echo "reports: $out/bench.json $out/latency.svg $out/dataplane.svg"
