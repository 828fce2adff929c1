#!/usr/bin/env bash
# install-deps.sh as `sudo bash scripts/install-deps.sh` runs it on Ubuntu:
# sudo's secure_path leaves neither ~/.cargo/bin nor a Python user's bin in
# PATH. It must still exit 0 and leave cargo and actionlint resolvable (for
# the scripts that source paths.sh after it), and a second run must install
# nothing (idempotent). Needs root (we play sudo's part); skipped without.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps-sudo: not root; skipped" >&2
  exit 0
fi
# Under a real sudo (CI: `sudo bash scripts/tests/install-deps-sudo.sh`)
# the toolchain is $SUDO_USER's; run as root directly, root plays it.
user=${SUDO_USER:-root}
sudo_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SUDO_USER="$user" HOME=/root TERM=dumb)
fail() { echo "install-deps-sudo: FAILED: $*" >&2; exit 1; }

for run in 1 2; do
  out="$("${sudo_env[@]}" bash scripts/install-deps.sh 2>&1)" || fail "run $run exited $?: $out"
  if [ "$run" = 2 ] && grep -q 'installing' <<<"$out"; then
    fail "the second run installed something again: $out"
  fi
done
found="$("${sudo_env[@]}" bash -c 'set -eu; source scripts/paths.sh; command -v cargo; command -v actionlint; cargo --version >/dev/null; actionlint -version >/dev/null')" \
  || fail "cargo or actionlint not resolvable after paths.sh: $found"
echo "install-deps-sudo: ok ($(tr '\n' ' ' <<<"$found"))"
