//! A host namespace with a bridge (like the CNI `bridge` plugin makes) and
//! containers attached by veth, dual-stack. Extra host-only addresses on
//! loopback serve hostIP tests. Everything lives in namespaces the
//! topology owns and is removed on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use crate::netns::{Netns, NetnsError};

pub const BRIDGE: &str = "br0";
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1);
/// Host-only addresses (on lo): `[0]` is used as hostIP, `[1]`
/// proves that other local addresses do not answer.
pub const EXTRA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2)];
pub const EXTRA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2),
];
pub const IFNAME: &str = "eth0";

static VETH: AtomicU32 = AtomicU32::new(0);

pub struct Topology {
    pub host: Netns,
}

/// A container namespace with `eth0` on the host bridge.
pub struct Container {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    host: String,
    veth: String,
}

/// Deleting the host side takes the pair down at once. Namespace teardown
/// alone is deferred by the kernel: a dead container's veth could still
/// sit on the bridge holding the address a new container reuses.
impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.host, "link", "del", &self.veth])
            .output();
    }
}

impl Topology {
    pub fn new() -> Result<Topology, NetnsError> {
        let host = Netns::new("host")?;
        host.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        host.ip(&["addr", "add", &format!("{HOST_V4}/24"), "dev", BRIDGE])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{HOST_V6}/64"),
            "dev",
            BRIDGE,
            "nodad",
        ])?;
        host.ip(&["link", "set", BRIDGE, "up"])?;
        // On lo: some kernels (this CI's among them) ship no dummy driver.
        for a in EXTRA_V4 {
            host.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        for a in EXTRA_V6 {
            host.ip(&["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"])?;
        }
        host.sysctl("net.ipv4.ip_forward", "1")?;
        host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(Topology { host })
    }

    /// Attaches a container with addresses `10.88.0.<last>` and `fd00:88::<last>`.
    pub fn container(&self, label: &str, last: u8) -> Result<Container, NetnsError> {
        let (ns, veth) = self.linked_namespace(label, "vh")?;
        self.host.ip(&["link", "set", &veth, "master", BRIDGE])?;
        // Hairpin: a container reaching its own host port comes back out
        // of the same bridge port (the bridge plugin's hairpinMode).
        self.host.ip(&[
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        self.host.ip(&["link", "set", &veth, "up"])?;
        let v4 = Ipv4Addr::new(10, 88, 0, last);
        let v6 = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, u16::from(last));
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", IFNAME])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", IFNAME, "nodad"])?;
        ns.ip(&["link", "set", IFNAME, "up"])?;
        ns.ip(&["route", "add", "default", "via", &HOST_V4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &HOST_V6.to_string()])?;
        Ok(Container {
            ns,
            v4,
            v6,
            host: self.host.name().to_string(),
            veth,
        })
    }
}

/// A network beyond the host (10.77.0.0/24, routed through it), for
/// traffic that the host merely forwards.
pub const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

impl Topology {
    /// A new namespace whose `eth0` is a veth peer of a host interface.
    fn linked_namespace(&self, label: &str, prefix: &str) -> Result<(Netns, String), NetnsError> {
        let ns = Netns::new(label)?;
        let veth = format!("{prefix}{}", VETH.fetch_add(1, Ordering::Relaxed));
        self.host.ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            IFNAME,
            "netns",
            ns.name(),
        ])?;
        Ok((ns, veth))
    }

    /// A namespace on its own link to the host, reachable only by routing.
    pub fn remote(&self) -> Result<Netns, NetnsError> {
        let (ns, veth) = self.linked_namespace("remote", "vr")?;
        self.host
            .ip(&["addr", "add", "10.77.0.1/24", "dev", &veth])?;
        self.host.ip(&["link", "set", &veth, "up"])?;
        ns.ip(&["addr", "add", &format!("{REMOTE_V4}/24"), "dev", IFNAME])?;
        ns.ip(&["link", "set", IFNAME, "up"])?;
        ns.ip(&["route", "add", "default", "via", "10.77.0.1"])?;
        Ok(ns)
    }
}

impl Container {
    /// A 1.0.0 prevResult as the bridge plugin would return it.
    pub fn prev_result(&self, v4: bool, v6: bool) -> Value {
        let mut ips = Vec::new();
        if v4 {
            ips.push(json!({"address": format!("{}/24", self.v4), "gateway": HOST_V4.to_string(), "interface": 1}));
        }
        if v6 {
            ips.push(json!({"address": format!("{}/64", self.v6), "gateway": HOST_V6.to_string(), "interface": 1}));
        }
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": BRIDGE},
                {"name": IFNAME, "sandbox": self.ns.path().display().to_string()}
            ],
            "ips": ips
        })
    }

    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}
