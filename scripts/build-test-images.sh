#!/usr/bin/env bash
# Builds the distro suite's images locally (no registry pulls): one minimal
# Debian root filesystem made with debootstrap, imported three
# ways with `docker import`:
#
#   portmap-test/iptables-legacy   no nftables at all: nft and the nf_tables
#                                  iptables variant removed, `iptables` is
#                                  legacy (a distribution lacking nftables)
#   portmap-test/nftables          nft only, no iptables package
#   portmap-test/both              nft and both iptables variants (Debian's
#                                  default: `iptables` is iptables-nft)
#   portmap-test/debian11          Debian 11 as installed: nft 0.9.8, iptables
#                                  1.8.7, glibc 2.31, CNI plugins 0.9.0
#
# and, from contrib/kubernetes/Containerfile (FROM scratch, the static
# binary): portmap-rs/portmap:VERSION (conformance/tests/kubernetes.rs).
# Every image but nftables (it depends on iptables) has Debian's
# containernetworking-plugins installed, and all keep its .deb under
# /var/cache/portmap-test/ (the packages test reinstalls it offline over
# ours: conformance/tests/packages/).
#
# Each image is labelled with a hash of this script; an image whose label
# matches is kept, so re-running is cheap. Needs root, debootstrap and a
# Docker engine (DOCKER_HOST as scripts/docker-engine.sh exports it).
#
# --only distros: the Debian images only (no build needed first, so
# scripts/test.sh runs it beside the compile); --only portmap: the
# Kubernetes image only (needs scripts/release.sh's binary).
set -euo pipefail
ONLY=all
case "${1:-}" in
  --only) ONLY="${2:-}" ;;
  "") ;;
  *) echo "usage: $0 [--only distros|portmap]" >&2; exit 2 ;;
esac
case "$ONLY" in
  all|distros|portmap) ;;
  *) echo "usage: $0 [--only distros|portmap]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "build-test-images.sh: needs root (debootstrap); run it as root, or: sudo $0" >&2
  exit 1
fi

# trixie: its glibc (2.41) runs binaries built on Debian 12 and Ubuntu
# 24.04 hosts alike, and its nft/iptables differ from the hosts' own.
# bullseye (Debian 11): an old userland (glibc 2.31, nft 0.9.8, iptables
# 1.8.7, CNI plugins 0.9.0 whose portmap is the reference there); it runs
# the static (musl) binaries that scripts/release.sh builds.
SUITE="${DEBIAN_SUITE:-trixie}"
OLD_SUITE=bullseye
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=iproute2,iptables,nftables,conntrack,procps,containernetworking-plugins
OLD_PACKAGES=$PACKAGES
RECIPE="$( (sha256sum <"$0"; echo "$SUITE $MIRROR") | sha256sum | cut -c1-16)"
WORK=/var/cache/portmap-test-images
IMAGES=(iptables-legacy nftables both debian11)

current() {
  [ "$(docker image inspect --format '{{index .Config.Labels "portmap.recipe"}}' "portmap-test/$1" 2>/dev/null)" = "$RECIPE" ]
}

# --- The Kubernetes image (contrib/kubernetes/Containerfile) -------------
# portmap-rs/portmap:VERSION, the tag contrib/kubernetes's DaemonSet names:
# FROM scratch, so nothing is pulled. Built for this host's architecture
# only (the classic builder, no buildx offline) from scripts/release.sh's
# static binary in target/<triple>/release; docker's layer cache makes a
# re-run cheap. The staged context holds every architecture built, so
# `docker buildx build --platform linux/amd64,linux/arm64` works from it.
build_portmap_image() {
  local repo version ctx arch triple host_arch=""
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)"
  ctx="$(mktemp -d)"
  cp -a "$repo/contrib/kubernetes/rootfs" "$ctx/rootfs"
  for arch in amd64 arm64; do
    case "$arch" in amd64) triple=x86_64-unknown-linux-musl ;; arm64) triple=aarch64-unknown-linux-musl ;; esac
    [ -f "$repo/target/$triple/release/portmap" ] || continue
    mkdir -p "$ctx/$arch"
    cp "$repo/target/$triple/release/portmap" "$ctx/$arch/portmap"
    [ "$(uname -m)" = "${triple%%-*}" ] && host_arch="$arch"
  done
  if [ -z "$host_arch" ]; then
    rm -rf "$ctx"
    echo "build-test-images: portmap-rs/portmap not built: no static portmap for $(uname -m) in target/ (run scripts/release.sh first)" >&2
    return 0
  fi
  echo "build-test-images: building portmap-rs/portmap:$version ($host_arch)"
  if ! docker build -q --build-arg "TARGETARCH=$host_arch" \
      -f "$repo/contrib/kubernetes/Containerfile" -t "portmap-rs/portmap:$version" "$ctx" >/dev/null; then
    rm -rf "$ctx"
    echo "build-test-images: docker build of portmap-rs/portmap:$version failed" >&2
    exit 1
  fi
  rm -rf "$ctx"
}
[ "$ONLY" = distros ] || build_portmap_image
[ "$ONLY" = portmap ] && exit 0
# --- end of the Kubernetes image --------------------------------------------

todo=()
for image in "${IMAGES[@]}"; do
  current "$image" || todo+=("$image")
done
if [ "${#todo[@]}" -eq 0 ]; then
  echo "build-test-images: all images current (recipe $RECIPE)"
  exit 0
fi

mkdir -p "$WORK"
# base SUITE PACKAGES: prints the path of a cached root filesystem tar.
base() {
  local tar="$WORK/base-$1-$RECIPE.tar"
  if [ ! -f "$tar" ]; then
    local root
    root="$(mktemp -d "$WORK/root.XXXXXX")"
    echo "build-test-images: debootstrap $1 ($2) from $MIRROR" >&2
    if ! debootstrap --variant=minbase --include="$2" "$1" "$root" "$MIRROR" >"$WORK/debootstrap-$1.log" 2>&1; then
      tail -20 "$WORK/debootstrap-$1.log" >&2
      rm -rf "$root"
      exit 1
    fi
    # --- packages test: keep containernetworking-plugins' .deb (apt-get
    # install --reinstall of it must work with no network in the test).
    mkdir -p "$root/var/cache/portmap-test"
    cp "$root"/var/cache/apt/archives/containernetworking-plugins_*.deb "$root/var/cache/portmap-test/"
    # --- end packages test
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

# What each image removes from its base, run inside a chroot of it.
variant_script() {
  case "$1" in
    iptables-legacy)
      cat <<'EOF'
dpkg --purge nftables libnftables1
update-alternatives --set iptables /usr/sbin/iptables-legacy
update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy
rm -f /usr/sbin/xtables-nft-multi
find /usr/sbin -xtype l -delete
EOF
      ;;
    nftables) echo "dpkg --purge containernetworking-plugins iptables" ;;  # it depends on iptables
    both|debian11) echo "true" ;;
  esac
}

# Both suites' debootstraps at once: they wait on the mirror more than on
# the CPU. Each writes its own tar; the loop below finds them cached.
find "$WORK" -maxdepth 1 -name "base-*.tar" ! -name "base-*-$RECIPE.tar" -delete  # older recipes
pids=()
for image in "${todo[@]}"; do
  case "$image" in
    debian11) base "$OLD_SUITE" "$OLD_PACKAGES" >/dev/null & pids+=($!) ;;
    *) [ -n "${started_new:-}" ] || { started_new=1; base "$SUITE" "$PACKAGES" >/dev/null & pids+=($!); } ;;
  esac
done
for pid in "${pids[@]}"; do
  wait "$pid" || exit 1
done

for image in "${todo[@]}"; do
  case "$image" in
    debian11) tar_path="$(base "$OLD_SUITE" "$OLD_PACKAGES")" ;;
    *) tar_path="$(base "$SUITE" "$PACKAGES")" ;;
  esac
  root="$(mktemp -d "$WORK/$image.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  tar -C "$root" -xf "$tar_path"
  variant_script "$image" | chroot "$root" /bin/sh -e >/dev/null
  echo "build-test-images: importing portmap-test/$image"
  tar -C "$root" -c . | docker import \
    --change "LABEL portmap.recipe=$RECIPE" \
    --change 'CMD ["sleep", "infinity"]' \
    - "portmap-test/$image" >/dev/null
  rm -rf "$root"
  trap - EXIT
done
echo "build-test-images: built ${todo[*]} (recipe $RECIPE)"
