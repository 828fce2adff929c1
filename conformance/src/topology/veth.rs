//! The built-in attachment: a container's interface is one end of a veth
//! pair whose host end is on the network's bridge, addresses set
//! directly, and a prevResult written as the bridge plugin would return
//! it. Also the host's bridges, and the remote namespace's routed link.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use super::network::{Network, IFNAME, REMOTE_V4};
use crate::netns::{Netns, NetnsError};

static VETH: AtomicU32 = AtomicU32::new(0);

/// Attaches interface `ifname` of `ns` to `network`'s bridge in `host`
/// with addresses `v4`, `v6` (and default routes via the host if
/// `default_route`); returns the host end's name.
pub(super) fn attach(
    host: &Netns,
    ns: &Netns,
    network: Network,
    ifname: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    default_route: bool,
) -> Result<String, NetnsError> {
    let veth = peer(host, ns, "vh", ifname)?;
    let bridge = network.bridge();
    host.ip(&["link", "set", &veth, "master", bridge])?;
    // Hairpin: a container reaching its own host port comes back out
    // of the same bridge port (the bridge plugin's hairpinMode).
    host.ip(&[
        "link",
        "set",
        &veth,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])?;
    host.ip(&["link", "set", &veth, "up"])?;
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
    ns.ip(&["link", "set", ifname, "up"])?;
    if default_route {
        let (gw4, gw6) = (network.host_v4().to_string(), network.host_v6().to_string());
        ns.ip(&["route", "add", "default", "via", &gw4])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6])?;
    }
    Ok(veth)
}

/// Deletes the host end `veth` in namespace `host`: the pair goes at once.
pub(super) fn detach(host: &str, veth: &str) {
    let _ = std::process::Command::new("ip")
        .args(["-n", host, "link", "del", veth])
        .output();
}

/// A bridge for `network` in `host`, holding the network's `.1`s.
pub(super) fn add_bridge(host: &Netns, network: Network) -> Result<(), NetnsError> {
    let bridge = network.bridge();
    host.ip(&[
        "link",
        "add",
        bridge,
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])?;
    let v4 = format!("{}/24", network.host_v4());
    host.ip(&["addr", "add", &v4, "dev", bridge])?;
    let v6 = format!("{}/64", network.host_v6());
    host.ip(&["addr", "add", &v6, "dev", bridge, "nodad"])?;
    host.ip(&["link", "set", bridge, "up"])
}

/// A veth pair: a new host interface (returned) whose peer is
/// `ifname` in `ns`.
fn peer(host: &Netns, ns: &Netns, prefix: &str, ifname: &str) -> Result<String, NetnsError> {
    let veth = format!("{prefix}{}", VETH.fetch_add(1, Ordering::Relaxed));
    host.ip(&[
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        ifname,
        "netns",
        ns.name(),
    ])?;
    Ok(veth)
}

/// A namespace on its own link to `host`, reachable only by routing.
pub(super) fn remote(host: &Netns) -> Result<Netns, NetnsError> {
    let ns = Netns::new("remote")?;
    let veth = peer(host, &ns, "vr", IFNAME)?;
    host.ip(&["addr", "add", "10.77.0.1/24", "dev", &veth])?;
    host.ip(&["link", "set", &veth, "up"])?;
    ns.ip(&["addr", "add", &format!("{REMOTE_V4}/24"), "dev", IFNAME])?;
    ns.ip(&["link", "set", IFNAME, "up"])?;
    ns.ip(&["route", "add", "default", "via", "10.77.0.1"])?;
    Ok(ns)
}

/// The prevResult of interface `ifname` (addresses `a4`, `a6`) of the
/// namespace at `sandbox` on `net`, as the bridge plugin would return it,
/// with addresses of the wanted families.
pub(super) fn prev_result(
    net: Network,
    ifname: &str,
    sandbox: &Path,
    a4: Ipv4Addr,
    a6: Ipv6Addr,
    v4: bool,
    v6: bool,
) -> Value {
    let mut ips = Vec::new();
    if v4 {
        ips.push(json!({"address": format!("{a4}/24"), "gateway": net.host_v4().to_string(), "interface": 1}));
    }
    if v6 {
        ips.push(json!({"address": format!("{a6}/64"), "gateway": net.host_v6().to_string(), "interface": 1}));
    }
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": net.bridge()},
            {"name": ifname, "sandbox": sandbox.display().to_string()}
        ],
        "ips": ips
    })
}
