//! The localnet guard, backend-neutral facts. ADD turns `route_localnet`
//! on for the interface towards an IPv4 container (so `127.0.0.1:hostPort`
//! can be DNATed); from then on the kernel routes packets to 127.0.0.0/8
//! that arrive on that interface to the host's loopback services, and a
//! container can reach them (the CVE-2020-8558 class). The guard drops,
//! before DNAT (priority mangle in prerouting, after conntrack):
//! - packets to 127.0.0.0/8 from a non-loopback interface that conntrack
//!   does not know as part of an established or related flow;
//! - packets from 127.0.0.0/8 from a non-loopback interface: without
//!   route_localnet the kernel drops them as martians, and none of ours
//!   needs them (localhost-to-container flows are masqueraded, so their
//!   replies come back to the host's interface address).
//!
//! It lives in a table (nftables) or chain (iptables, mangle) of its own,
//! which DEL never removes: route_localnet stays on after the last
//! container, as upstream leaves it, and so must the guard.

/// The loopback network the guard protects.
pub const LOOPBACK_NET: &str = "127.0.0.0/8";

/// Comment of the rule dropping new connections to 127.0.0.0/8.
pub const TO_LOOPBACK_COMMENT: &str =
    "CNI portmap localnet guard: new connections to 127.0.0.0/8 from outside";

/// Comment of the rule dropping 127.0.0.0/8 sources.
pub const FROM_LOOPBACK_COMMENT: &str =
    "CNI portmap localnet guard: 127.0.0.0/8 sources from outside";

/// Interfaces of this network namespace with `route_localnet` on
/// (`all` included), sorted: where the guard is needed.
pub fn route_localnet_on() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv4/conf") else {
        return Vec::new();
    };
    let mut on: Vec<String> = dir
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("route_localnet")).is_ok_and(|v| v.trim() == "1")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on.sort();
    on
}

/// Where the guard is installed whole in this network namespace, by
/// backend name. Reads nftables over netlink, and an iptables variant's
/// mangle table only where it exists (reading a legacy table would load it).
pub fn installed() -> Vec<&'static str> {
    use crate::iptables::{Iptables, Variant};
    use crate::Backend;
    let mut found = Vec::new();
    if crate::nftables::guard_intact().unwrap_or(false) {
        found.push(crate::BackendKind::Nftables.name());
    }
    let legacy_mangle = std::fs::read_to_string(crate::host::thread_net("ip_tables_names"))
        .is_ok_and(|s| s.lines().any(|l| l == "mangle"));
    let nft_mangle = crate::nfnetlink::has_chain(
        crate::Family::V4,
        "mangle",
        crate::iptables::guard::GUARD_CHAIN,
    )
    .unwrap_or(false);
    for (variant, present) in [(Variant::Nft, nft_mangle), (Variant::Legacy, legacy_mangle)] {
        let v4 = Iptables::variant(variant)
            .ok()
            .and_then(|i| i.only(&[crate::Family::V4]));
        if let Some(ipt) = v4.filter(|_| present) {
            if ipt.localnet_guard().unwrap_or(false) {
                found.push(ipt.name());
            }
        }
    }
    found
}

/// What `portmap status` and `portmap list` say of the guard.
pub fn report() -> Vec<String> {
    let on = route_localnet_on();
    let have = installed();
    let mut lines = Vec::new();
    if !have.is_empty() {
        lines.push(format!(
            "localnet guard: installed ({}); route_localnet on: {}",
            have.join(", "),
            if on.is_empty() {
                "none".to_string()
            } else {
                on.join(" ")
            }
        ));
    } else if on.is_empty() {
        lines.push("localnet guard: not needed (route_localnet is off everywhere)".to_string());
    } else {
        lines.push(format!(
            "warning: route_localnet is on ({}) but no localnet guard is installed: \
             containers on those interfaces can reach the host's 127.0.0.1 services \
             (the next ADD with snat, or `portmap restore`, installs it)",
            on.join(" ")
        ));
    }
    lines
}
