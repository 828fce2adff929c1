# Sourced by install-deps.sh and the scripts that run after it (test.sh,
# release-env.sh): makes cargo, rustup and actionlint resolvable where the
# caller's PATH does not name them.
#
# Under sudo, Ubuntu's `secure_path` replaces PATH (even with -E), so the
# invoking user's ~/.cargo/bin is gone: when cargo is not in PATH, look in
# $SUDO_USER's home and in /root. A toolchain that belongs to another user
# keeps its RUSTUP_HOME/CARGO_HOME, and TOOLCHAIN_OWNER names that user so
# that changes to it (rustup component/target add) run as its owner.
#
# actionlint lives in a venv the project owns (PORTMAP_TOOLS_VENV): the
# system Python refuses `pip install` outside one (PEP 668).
PORTMAP_TOOLS_VENV=${PORTMAP_TOOLS_VENV:-/opt/portmap-tools/venv}
TOOLCHAIN_OWNER=""
if ! command -v cargo >/dev/null 2>&1; then
  cargo_homes=()
  if [ -n "${SUDO_USER:-}" ]; then
    sudo_home="$(getent passwd "$SUDO_USER" | cut -d: -f6 || true)"
    [ -n "$sudo_home" ] && cargo_homes+=("$sudo_home")
  fi
  cargo_homes+=(/root)
  for h in "${cargo_homes[@]}"; do
    if [ -x "$h/.cargo/bin/cargo" ]; then
      export PATH="$h/.cargo/bin:$PATH"
      if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$h/.rustup" ]; then export RUSTUP_HOME="$h/.rustup"; fi
      if [ -z "${CARGO_HOME:-}" ]; then export CARGO_HOME="$h/.cargo"; fi
      owner="$(stat -c %U "$h/.cargo/bin/cargo")"
      [ "$owner" != "$(id -un)" ] && TOOLCHAIN_OWNER="$owner"
      break
    fi
  done
  unset cargo_homes sudo_home h owner
fi
if ! command -v actionlint >/dev/null 2>&1 && [ -x "$PORTMAP_TOOLS_VENV/bin/actionlint" ]; then
  export PATH="$PATH:$PORTMAP_TOOLS_VENV/bin"
fi
