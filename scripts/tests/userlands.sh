#!/usr/bin/env bash
# Unpacks the root filesystems of two distro test images, Debian 11
# (iptables 1.8.7) and Debian 13 (1.8.11), under target/userlands/ and
# prints them colon-separated: PORTMAP_TEST_USERLANDS for the test that
# renders iptables-nft rules read over netlink as each userland's own
# iptables-nft-save prints them (backends/src/iptables/netlink_tests.rs;
# its tools run chrooted there, inside the test's network namespace).
# Needs the images (scripts/build-test-images.sh) and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/../.."

roots=()
for pair in "debian11:portmap-test/debian11" "debian13:portmap-test/both"; do
  name="${pair%%:*}" image="${pair#*:}"
  root="target/userlands/$name"
  rm -rf "$root"
  mkdir -p "$root"
  id="$(docker create "$image")"
  docker export "$id" | tar -C "$root" -x
  docker rm "$id" >/dev/null
  roots+=("$PWD/$root")
done
(IFS=:; echo "${roots[*]}")
