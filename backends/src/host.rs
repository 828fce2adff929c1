//! Host side effects that belong to port mapping but not to any firewall:
//! `route_localnet` (so 127.0.0.1:hostPort can be DNATed) and flushing
//! stale UDP conntrack entries. Both backends share them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::exec;
use crate::nfnetlink::conntrack;
use crate::plan::Plan;
use crate::{Family, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("failed to set {path}: {source}")]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("UDP conntrack flush ({family}) abandoned: {source}")]
    Conntrack {
        family: Family,
        #[source]
        source: crate::nfnetlink::conntrack::ConntrackError,
    },
}

/// `/proc/thread-self/net/<file>`: this thread's network namespace
/// (`/proc/net` follows the main thread's, and a caller may have entered
/// another one on this thread). Linux before 3.17 has no thread-self; the
/// same file is under `/proc/self/task/<tid>/net` there.
pub fn thread_net(file: &str) -> PathBuf {
    thread_proc(&format!("net/{file}"))
}

/// `/proc/thread-self/<path>`, or `/proc/self/task/<tid>/<path>` where the
/// kernel predates thread-self.
fn thread_proc(path: &str) -> PathBuf {
    let thread_self = std::path::Path::new("/proc/thread-self");
    if thread_self.exists() {
        thread_self.join(path)
    } else {
        PathBuf::from(format!("/proc/self/task/{}/{path}", nix::unistd::gettid()))
    }
}

/// This thread's network namespace as `netns-<dev>-<inode>`: where rules
/// we install live, so that state about them is kept per namespace.
pub fn netns_id() -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(thread_proc("ns/net"))?;
    Ok(format!("netns-{}-{}", meta.dev(), meta.ino()))
}

/// Sets `net.ipv4.conf.<dev>.route_localnet=1` on the interface that routes
/// to `container` (falling back to `all`), as upstream does with snat.
pub fn enable_route_localnet(container: Ipv4Addr) -> Result<(), HostError> {
    let routes = std::fs::read_to_string(thread_net("route")).unwrap_or_default();
    let dev = route_interface(&routes, container).unwrap_or_else(|| "all".to_string());
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{dev}/route_localnet"));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| HostError::Sysctl { path, source })
}

/// One `/proc/net/route` entry: (interface, destination, gateway, mask).
struct V4Route<'a> {
    dev: &'a str,
    dest: u32,
    gateway: u32,
    mask: u32,
}

/// The entries of `/proc/net/route` (hex, host byte order).
fn v4_routes(table: &str) -> impl Iterator<Item = V4Route<'_>> {
    let hex = |s: Option<&&str>| u32::from_str_radix(s?, 16).ok().map(u32::swap_bytes);
    table.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        Some(V4Route {
            dev: cols.first()?,
            dest: hex(cols.get(1))?,
            gateway: hex(cols.get(2))?,
            mask: hex(cols.get(7))?,
        })
    })
}

/// Longest-prefix match over `/proc/net/route`.
fn route_interface(table: &str, dst: Ipv4Addr) -> Option<String> {
    let dst = u32::from(dst);
    v4_routes(table)
        .filter(|r| dst & r.mask == r.dest)
        .max_by_key(|r| r.mask.count_ones())
        .map(|r| r.dev.to_string())
}

/// Prefix length of the on-link route that reaches `addr` (the
/// container's subnet as the host sees it), if there is one.
pub fn connected_prefix(addr: IpAddr) -> Option<u8> {
    match addr {
        IpAddr::V4(a) => {
            let routes = std::fs::read_to_string(thread_net("route")).ok()?;
            connected_prefix_v4(&routes, a)
        }
        IpAddr::V6(a) => {
            let routes = std::fs::read_to_string(thread_net("ipv6_route")).ok()?;
            connected_prefix_v6(&routes, a)
        }
    }
}

/// Longest match among `/proc/net/route` entries without a gateway.
fn connected_prefix_v4(table: &str, dst: Ipv4Addr) -> Option<u8> {
    let dst = u32::from(dst);
    v4_routes(table)
        .filter(|r| r.gateway == 0 && dst & r.mask == r.dest)
        .map(|r| r.mask.count_ones() as u8)
        .max()
}

/// Longest match among `/proc/net/ipv6_route` entries without a next hop
/// that are not local addresses (flag RTF_LOCAL).
fn connected_prefix_v6(table: &str, dst: Ipv6Addr) -> Option<u8> {
    const RTF_LOCAL: u32 = 0x8000_0000;
    let dst = u128::from(dst);
    table
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let dest = u128::from_str_radix(cols.first()?, 16).ok()?;
            let len = u8::from_str_radix(cols.get(1)?, 16).ok()?;
            let next_hop = u128::from_str_radix(cols.get(4)?, 16).ok()?;
            let flags = u32::from_str_radix(cols.get(8)?, 16).ok()?;
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            (next_hop == 0 && flags & RTF_LOCAL == 0 && dst & mask == dest).then_some(len)
        })
        .max()
}

/// Deletes UDP conntrack entries towards each (family, UDP host port), so
/// a flow does not keep going to a container that is gone: one ctnetlink
/// dump and the deletes of its matches per family, whatever the number
/// of ports (see [`crate::nfnetlink::conntrack`]). Best effort: a kernel
/// without conntrack has nothing to flush; a family that fails or runs
/// past [`exec::CONNTRACK`] is abandoned (the error says which) and the
/// other family still flushed.
///
/// No `conntrack` tool, not even as a fallback: the tool is a ctnetlink
/// client itself (libnetfilter_conntrack), so where netlink is refused
/// (no ctnetlink, no CAP_NET_ADMIN) the tool is refused too.
pub fn flush_udp_conntrack(
    udp_ports: impl IntoIterator<Item = (Family, u16)>,
) -> Result<(), HostError> {
    let mut by_family: BTreeMap<Family, BTreeSet<u16>> = BTreeMap::new();
    for (family, port) in udp_ports {
        by_family.entry(family).or_default().insert(port);
    }
    let mut first = None;
    for (family, ports) in by_family {
        let budget = exec::timeout(exec::CONNTRACK);
        if let Err(source) = conntrack::flush_udp(family, &ports, budget) {
            first.get_or_insert(HostError::Conntrack { family, source });
        }
    }
    first.map_or(Ok(()), Err)
}

/// A stale conntrack entry misroutes one UDP flow until it expires; a
/// failed ADD or DEL would be worse (the runtime retries a DEL forever),
/// so a flush that failed or hung is a warning on stderr, which runtimes
/// log.
fn warn(e: HostError) {
    eprintln!("portmap: warning: {e}");
}

/// Applies the host side effects of an ADD.
pub fn after_add(plan: &Plan) -> Result<(), HostError> {
    if let Some(v4) = plan.localnet_container() {
        enable_route_localnet(v4)?;
    }
    flush_udp_conntrack(plan.families.iter().flat_map(|f| {
        f.dnats
            .iter()
            .filter(|d| d.protocol == Protocol::Udp)
            .map(move |d| (f.family, d.host_port))
    }))
    .unwrap_or_else(warn);
    Ok(())
}

/// The host side effects of a DEL: flush conntrack of removed UDP mappings.
pub fn after_del(removed: &[crate::ClosedPort]) {
    flush_udp_conntrack(
        removed
            .iter()
            .filter(|m| m.protocol == Protocol::Udp)
            .map(|m| (m.family, m.host_port)),
    )
    .unwrap_or_else(warn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_net_names_this_threads_namespace_files() {
        let path = thread_net("route");
        assert!(path.ends_with("net/route"), "{}", path.display());
        assert!(std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with("Iface")));
        // The pre-3.17 spelling reads the same namespace.
        let task = PathBuf::from(format!(
            "/proc/self/task/{}/net/route",
            nix::unistd::gettid()
        ));
        assert_eq!(
            std::fs::read_to_string(task).ok(),
            std::fs::read_to_string(path).ok()
        );
    }

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
cni0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
vh1\t0500580A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            route_interface(TABLE, "10.88.0.5".parse().expect("ip")).as_deref(),
            Some("vh1")
        );
        assert_eq!(
            route_interface(TABLE, "10.88.0.6".parse().expect("ip")).as_deref(),
            Some("cni0")
        );
        assert_eq!(
            route_interface(TABLE, "8.8.8.8".parse().expect("ip")).as_deref(),
            Some("eth0")
        );
    }

    #[test]
    fn connected_prefix_ignores_gateways_and_local_addresses() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        let ip6 = |s: &str| s.parse::<Ipv6Addr>().expect("ip");
        assert_eq!(connected_prefix_v4(TABLE, ip("10.88.0.6")), Some(16));
        assert_eq!(connected_prefix_v4(TABLE, ip("10.88.0.5")), Some(32));
        assert_eq!(connected_prefix_v4(TABLE, ip("8.8.8.8")), None);
        let v6 = "fd000088000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001      br0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0
fd000088000000000000000000000005 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001      br0
";
        assert_eq!(connected_prefix_v6(v6, ip6("fd00:88::5")), Some(64));
        assert_eq!(connected_prefix_v6(v6, ip6("2001:db8::1")), None);
    }

    #[test]
    fn no_route_means_none() {
        let only_header = TABLE.lines().next().expect("header");
        assert_eq!(
            route_interface(only_header, "10.0.0.1".parse().expect("ip")),
            None
        );
    }
}
