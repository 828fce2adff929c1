#!/usr/bin/env bash
# Packs the static release binaries (dist/portmap-VERSION-ARCH-linux.tar.gz,
# written by scripts/release.sh) into a .deb and an .rpm per architecture:
#
#   dist/portmap-rs_VERSION-1_{amd64,arm64}.deb
#   dist/portmap-rs-VERSION-1.{x86_64,aarch64}.rpm
#
# and rewrites dist/SHA256SUMS over every asset. The packagers are the
# distributions' own, dpkg-deb and rpmbuild (Debian's `rpm` package): the
# .rpm needs a trigger on containernetworking-plugins (see
# contrib/packaging/rpm/portmap-rs.spec), which nfpm's and
# cargo-generate-rpm's documented options have no field for. No compile.
#
# .deb: /usr/lib/cni/portmap (diverting Debian's), the systemd units with
# ExecStart=/usr/lib/cni/portmap. .rpm: /opt/cni/bin/portmap, with
# /usr/libexec/cni/portmap taken over from RHEL's package, the units with
# ExecStart=/opt/cni/bin/portmap. Units are shipped, not enabled.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
DIST=dist
PACKAGING=contrib/packaging

need() { command -v "$1" >/dev/null 2>&1 || { echo "package.sh: $1 not found ($2)" >&2; exit 1; }; }
need dpkg-deb "apt-get install dpkg"
need rpmbuild "apt-get install rpm (scripts/install-deps.sh does)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# unit DEST PLUGIN_PATH: the shipped units, pointed at this package's binary.
units() {
  mkdir -p "$1"
  for unit in contrib/systemd/portmap-restore.service contrib/systemd/portmap-watch.service; do
    sed "s|/opt/cni/bin/portmap|$2|g" "$unit" >"$1/$(basename "$unit")"
  done
}

for pair in x86_64:amd64 aarch64:arm64; do
  arch="${pair%%:*}" debarch="${pair##*:}"
  tarball="$DIST/portmap-$VERSION-$arch-linux.tar.gz"
  [ -f "$tarball" ] || { echo "package.sh: $tarball missing: run scripts/release.sh first" >&2; exit 1; }
  src="$work/src-$arch"
  mkdir -p "$src"
  tar -C "$src" -xzf "$tarball"
  bin="$src/portmap-$VERSION-$arch-linux"

  echo "==> $DIST/portmap-rs_${VERSION}-1_$debarch.deb"
  root="$work/deb-$arch"
  install -D -m 0755 "$bin/portmap" "$root/usr/lib/cni/portmap"
  units "$root/usr/lib/systemd/system" /usr/lib/cni/portmap
  install -D -m 0644 "$bin/README.md" "$root/usr/share/doc/portmap-rs/README.md"
  install -d "$root/DEBIAN"
  install -m 0755 "$PACKAGING"/deb/{preinst,postinst,prerm,postrm} "$root/DEBIAN/"
  size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
  sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$debarch/" -e "s/@SIZE@/$size/" \
    "$PACKAGING/deb/control.in" >"$root/DEBIAN/control"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$DIST/portmap-rs_${VERSION}-1_$debarch.deb" >/dev/null

  echo "==> $DIST/portmap-rs-$VERSION-1.$arch.rpm"
  payload="$work/rpm-$arch"
  mkdir -p "$payload"
  cp "$bin/portmap" "$bin/README.md" "$payload/"
  units "$payload" /opt/cni/bin/portmap
  rpmbuild -bb --quiet --target "$arch-linux" \
    --define "_topdir $work/rpmbuild-$arch" \
    --define "version $VERSION" \
    --define "payload $payload" \
    "$PACKAGING/rpm/portmap-rs.spec" >/dev/null
  cp "$work/rpmbuild-$arch/RPMS/$arch/portmap-rs-$VERSION-1.$arch.rpm" "$DIST/"
done

(cd "$DIST" && sha256sum ./*.tar.gz ./*.deb ./*.rpm | sed 's| \./| |' >SHA256SUMS)
echo "==> $DIST"
cat "$DIST/SHA256SUMS"
