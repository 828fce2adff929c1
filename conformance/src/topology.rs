//! A host namespace with a bridge (like the CNI `bridge` plugin makes) and
//! containers attached by veth, dual-stack. Extra host-only addresses on
//! loopback serve hostIP tests. Everything lives in namespaces the
//! topology owns and is removed on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use crate::chain::{self, Attachment};
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

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot create the IPAM state directory {dir}: {source}")]
    IpamDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {label}: {reason}")]
    Chain { label: String, reason: String },
}

/// How containers are attached (and so where their prevResult comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Built in: a veth on the bridge, addresses set directly, prevResult
    /// written as the bridge plugin would.
    Veth,
    /// A real CNI chain: Debian's `bridge` + `host-local`, its result
    /// threaded into portmap (see `chain`).
    Chain,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Veth => "veth",
            Setup::Chain => "chain",
        }
    }

    pub fn parse(s: &str) -> Option<Setup> {
        [Setup::Veth, Setup::Chain]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

pub struct Topology {
    pub host: Netns,
    setup: Setup,
    /// host-local's state (chain setup), removed on drop.
    ipam_dir: Option<PathBuf>,
    /// The chain plugins' config version.
    cni_version: String,
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(dir) = &self.ipam_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A container namespace with `eth0` on the host bridge.
pub struct Container {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    attached: Attached,
}

enum Attached {
    Veth { host: String, veth: String },
    Chain { att: Attachment, result: Value },
}

/// Deleting the host side takes the pair down at once. Namespace teardown
/// alone is deferred by the kernel: a dead container's veth could still
/// sit on the bridge holding the address a new container reuses. A chain
/// container gets its bridge DEL, as a runtime would run it.
impl Drop for Container {
    fn drop(&mut self) {
        match &self.attached {
            Attached::Veth { host, veth } => {
                let _ = std::process::Command::new("ip")
                    .args(["-n", host, "link", "del", veth])
                    .output();
            }
            Attached::Chain { att, .. } => {
                let _ = att.del();
            }
        }
    }
}

impl Topology {
    pub fn new() -> Result<Topology, TopologyError> {
        Topology::with_setup(Setup::Veth)
    }

    pub fn with_setup(setup: Setup) -> Result<Topology, TopologyError> {
        Topology::speaking(setup, crate::cni::DEFAULT_VERSION)
    }

    /// A topology whose chain plugins run at `cni_version`.
    pub fn speaking(setup: Setup, cni_version: &str) -> Result<Topology, TopologyError> {
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
        let ipam_dir = match setup {
            Setup::Veth => None,
            Setup::Chain => {
                let dir = std::env::temp_dir().join(format!("portmap-ipam-{}", host.name()));
                if let Err(source) = std::fs::create_dir_all(&dir) {
                    return Err(TopologyError::IpamDir { dir, source });
                }
                Some(dir)
            }
        };
        Ok(Topology {
            host,
            setup,
            ipam_dir,
            cni_version: cni_version.to_string(),
        })
    }

    /// Attaches a container with addresses `10.88.0.<last>` and `fd00:88::<last>`.
    pub fn container(&self, label: &str, last: u8) -> Result<Container, TopologyError> {
        match (&self.ipam_dir, self.setup) {
            (Some(dir), Setup::Chain) => self.chain_container(label, last, dir),
            _ => self.veth_container(label, last),
        }
    }

    fn chain_container(
        &self,
        label: &str,
        last: u8,
        dir: &Path,
    ) -> Result<Container, TopologyError> {
        let ns = Netns::new(label)?;
        let (v4, v6) = addresses(last);
        let config = chain::bridge_config(v4, v6, dir, &self.cni_version);
        let id = format!("{}-{label}", ns.name());
        let (att, result) = Attachment::add(&self.host, &ns, &id, config).map_err(|reason| {
            TopologyError::Chain {
                label: label.to_string(),
                reason,
            }
        })?;
        Ok(Container {
            ns,
            v4,
            v6,
            attached: Attached::Chain { att, result },
        })
    }

    fn veth_container(&self, label: &str, last: u8) -> Result<Container, TopologyError> {
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
        let (v4, v6) = addresses(last);
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", IFNAME])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", IFNAME, "nodad"])?;
        ns.ip(&["link", "set", IFNAME, "up"])?;
        ns.ip(&["route", "add", "default", "via", &HOST_V4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &HOST_V6.to_string()])?;
        Ok(Container {
            ns,
            v4,
            v6,
            attached: Attached::Veth {
                host: self.host.name().to_string(),
                veth,
            },
        })
    }
}

fn addresses(last: u8) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(10, 88, 0, last),
        Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, u16::from(last)),
    )
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
    /// The prevResult for portmap with addresses of the wanted families:
    /// the bridge plugin's own result (chain setup), or one written as it
    /// would return it (veth setup).
    pub fn prev_result(&self, v4: bool, v6: bool) -> Value {
        if let Attached::Chain { result, .. } = &self.attached {
            return chain::with_families(result, v4, v6);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::prerequisites;

    /// The chain setup really runs the bridge plugin: its result names the
    /// container's interface with a MAC and sandbox, host-local records
    /// the address, and teardown (bridge DEL) releases it.
    #[test]
    fn chain_containers_come_from_the_bridge_plugin_and_are_released() {
        if !prerequisites(&[chain::BRIDGE_PLUGIN, "/usr/lib/cni/host-local"]) {
            return;
        }
        let topo = Topology::with_setup(Setup::Chain).expect("topology");
        let dir = topo.ipam_dir.clone().expect("ipam dir");
        let c = topo.container("ch", 7).expect("container");
        let prev = c.prev_result(true, true);
        let sandbox = &prev["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .find(|i| i["name"] == IFNAME)
            .expect("eth0 in the result")["sandbox"];
        assert_eq!(sandbox, &json!(c.ns.path().display().to_string()));
        assert_eq!(prev["ips"][0]["address"], "10.88.0.7/24");
        assert_eq!(prev["ips"][1]["address"], "fd00:88::7/64");
        let leased = dir.join("conformance-chain").join("10.88.0.7");
        assert!(leased.exists(), "host-local lease {}", leased.display());
        let addrs =
            c.ns.exec("ip", &["-4", "addr", "show", IFNAME])
                .expect("ip");
        assert!(addrs.contains("10.88.0.7/24"), "{addrs}");
        drop(c);
        assert!(!leased.exists(), "bridge DEL released the lease");
        drop(topo);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
