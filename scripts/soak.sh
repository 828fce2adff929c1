#!/usr/bin/env bash
# The watch soak in full (issue #24): `portmap watch` beside one ADD and
# one DEL of a container with a mapping per second, for MINUTES (default
# 10), in network namespaces of the test's own. Fails when watch uses 5%
# or more of one core (utime+stime from /proc/PID/stat), its VmRSS grows
# by more than 1 MiB, our own commands start a pass, or it no longer
# restores at the end. The suite runs the same test for 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
if [ "$(id -u)" -ne 0 ]; then
    echo "soak.sh needs root (network namespaces, nftables): sudo $0 $*" >&2
    exit 1
fi
source scripts/paths.sh
export CI="${CI:-1}"
PORTMAP_SOAK_SECS=$((minutes * 60)) \
    cargo test -p portmap --test watch_soak -- --nocapture --test-threads 1
