#!/usr/bin/env bash
# Prints what the test suite must leave as it found it in the root network
# namespace: forwarding and route_localnet sysctls, the firewall (nftables,
# iptables-nft, and iptables-legacy where its tables exist: listing them
# would load them), the named network namespaces, and the host-wide state
# a portmap keeps (its lock, its journal under /run/cni/portmap: tests give
# every binary their own). scripts/test.sh compares a run's before and after.
set -uo pipefail

for key in net/ipv4/ip_forward net/ipv6/conf/all/forwarding \
           net/ipv6/conf/default/forwarding net/ipv4/conf/all/route_localnet \
           net/ipv4/conf/default/route_localnet; do
  printf '%s = %s\n' "${key//\//.}" "$(cat "/proc/sys/$key" 2>/dev/null || echo absent)"
done

# Counters change with any traffic: not part of the state.
strip_counters() { sed -E 's/\[[0-9]+:[0-9]+\]/[0:0]/; /^#/d; s/counter packets [0-9]+ bytes [0-9]+/counter/g'; }

echo "--- nft list ruleset"
command -v nft >/dev/null && nft list ruleset 2>&1 | strip_counters
for save in iptables-nft-save ip6tables-nft-save; do
  echo "--- $save"
  command -v "$save" >/dev/null && "$save" 2>/dev/null | strip_counters
done
for family in ip ip6; do
  names="/proc/net/${family}_tables_names"
  if [ -s "$names" ] && command -v "${family}tables-legacy-save" >/dev/null; then
    echo "--- ${family}tables-legacy-save ($(tr '\n' ' ' < "$names"))"
    "${family}tables-legacy-save" 2>/dev/null | strip_counters
  fi
done
echo "--- ip netns list"
ip netns list 2>/dev/null
echo "--- portmap's host state (/run/portmap.lock, /run/cni/portmap)"
ls -d /run/portmap.lock 2>/dev/null
[ -d /run/cni/portmap ] && find /run/cni/portmap | sort
exit 0
