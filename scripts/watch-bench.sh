#!/usr/bin/env bash
# Scale figures for restore and watch (issue #24): `portmap restore` with
# nothing missing at N containers (default 20,200,1000), then at the
# largest N the ADD/DEL latency of one more container, quiet and with
# `portmap watch` running, and how long watch takes to bring every
# container back after our table is removed. Per backend (default
# nftables and iptables-nft: BACKENDS="nftables nft"). Reports the targets
# (pass growth from the first size to the second, latency with watch
# against quiet: at most 3x each); PORTMAP_WATCH_BENCH_GATE=1 fails on a
# miss. About 3 minutes per backend on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${1:-20,200,1000}"
if [ "$(id -u)" -ne 0 ]; then
    echo "watch-bench.sh needs root (network namespaces, nftables): sudo $0 $*" >&2
    exit 1
fi
source scripts/paths.sh
export CI="${CI:-1}"
# The figures are the shipped (release) binary's.
cargo build --release -p portmap --bin portmap --quiet
export PORTMAP_WATCH_BIN="$PWD/target/release/portmap"
for backend in ${BACKENDS:-nftables nft}; do
    PORTMAP_WATCH_BENCH_SIZES="$sizes" PORTMAP_WATCH_BENCH_BACKEND="$backend" \
        cargo test -p portmap --test watch_bench -- --ignored --nocapture --test-threads 1
done
