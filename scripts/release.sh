#!/usr/bin/env bash
# Builds static (musl) release binaries of `portmap` and `portmap-conformance`
# for x86_64 and aarch64 and packs them:
#
#   dist/portmap-VERSION-x86_64-linux.tar.gz
#   dist/portmap-VERSION-aarch64-linux.tar.gz
#   dist/SHA256SUMS
#
# Static binaries need no glibc at all, so one build serves every userland
# from CentOS 7 (glibc 2.17) on; a glibc build would need the build host's
# glibc (2.34+ on Debian 12). aarch64 links with rust-lld, shipped with the
# toolchain: no cross gcc. Each binary is smoke-tested: x86_64 natively,
# aarch64 under qemu-aarch64-static (Debian's qemu-user-static): the CNI
# VERSION answer and `portmap status` (read-only, in a scratch network
# namespace when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
DIST=dist

need() { command -v "$1" >/dev/null 2>&1 || { echo "release.sh: $1 not found ($2)" >&2; exit 1; }; }
need rustup "install a Rust toolchain with rustup"
need qemu-aarch64-static "apt-get install qemu-user-static"

rustup target add "${TARGETS[@]}" >/dev/null
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
rm -rf "$DIST"
mkdir -p "$DIST"

smoke() { # smoke ARCH BINARY_DIR
  local run=() ns=""
  [ "$1" = aarch64 ] && run=(qemu-aarch64-static)
  local version
  version="$(echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION "${run[@]}" "$2/portmap")"
  case "$version" in
    *'"supportedVersions"'*) echo "  $1 VERSION: $version" ;;
    *) echo "release.sh: $1 portmap VERSION answered: $version" >&2; exit 1 ;;
  esac
  if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
    ns="portmap-release-$$"
    ip netns add "$ns"
    trap 'ip netns del "$ns" 2>/dev/null' RETURN
    ip netns exec "$ns" "${run[@]}" "$2/portmap" status | sed "s/^/  $1 status: /"
  else
    "${run[@]}" "$2/portmap" status | sed "s/^/  $1 status: /"
  fi
  "${run[@]}" "$2/portmap-conformance" --version | sed "s/^/  $1 /"
}

for target in "${TARGETS[@]}"; do
  arch="${target%%-*}"
  echo "==> $target"
  cargo build --release --locked --target "$target" -p portmap -p portmap-conformance
  name="portmap-$VERSION-$arch-linux"
  stage="$DIST/$name"
  mkdir -p "$stage"
  cp "target/$target/release/portmap" "target/$target/release/portmap-conformance" "$stage/"
  cp README.md "$stage/"
  if file "$stage/portmap" | grep -q 'dynamically linked'; then
    echo "release.sh: $stage/portmap is not static" >&2
    exit 1
  fi
  smoke "$arch" "$stage"
  tar -C "$DIST" -czf "$DIST/$name.tar.gz" "$name"
  rm -rf "$stage"
done
(cd "$DIST" && sha256sum ./*.tar.gz | sed 's| \./| |' > SHA256SUMS)
echo "==> $DIST"
cat "$DIST/SHA256SUMS"
