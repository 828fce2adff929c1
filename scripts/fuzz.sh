#!/usr/bin/env bash
# Fuzzes config and prevResult parsing (fuzz/fuzz_targets/) for a bounded
# time with cargo fuzz (libFuzzer), on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS]    # default 60
#
# Exits non-zero when the fuzzer finds a crash; the input that did it is in
# fuzz/artifacts/. New interesting inputs go to fuzz/corpus/ (not committed);
# fuzz/seeds/ holds the committed starting points.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TO_RUN="${1:-60}"
TARGET=config_and_prev_result
CARGO_FUZZ_VERSION=0.13.1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

mkdir -p "fuzz/corpus/$TARGET"
# --sanitizer none: address sanitizing needs a nightly compiler; Rust code
# without unsafe gains little from it, and coverage-guided search with
# debug assertions still finds panics, overflows and broken invariants.
# Without a sanitizer cargo fuzz passes only stable -C flags.
cargo fuzz run --sanitizer none "$TARGET" \
  "fuzz/corpus/$TARGET" fuzz/seeds \
  -- -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
