# Sourced by the scripts that run release binaries as root (conformance.sh,
# bench.sh): installs dependencies, insists on root, builds, and sets
# REFERENCE_ARGS to `--reference <upstream>` when upstream's binary is
# installed (PORTMAP_REFERENCE overrides its path).
if [ "$(id -u)" -ne 0 ]; then
  echo "$(basename "$0"): needs root (it creates network namespaces); run it as root, or: sudo $0" >&2
  exit 1
fi
bash scripts/install-deps.sh
source scripts/paths.sh
cargo build --release --workspace --quiet
REFERENCE_ARGS=()
reference=${PORTMAP_REFERENCE:-/usr/lib/cni/portmap}
if [ -x "$reference" ]; then
  REFERENCE_ARGS=(--reference "$reference")
fi
