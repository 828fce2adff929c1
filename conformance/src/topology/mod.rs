//! A host namespace with a bridge (like the CNI `bridge` plugin makes) and
//! containers attached by veth, dual-stack. A second bridge, made when a
//! scenario first asks for it, is a second network (a pod's `net1`, or a
//! container of another network). Extra host-only addresses on loopback
//! serve hostIP tests. Everything lives in namespaces the topology owns
//! and is removed on drop.
//!
//! Parts, each depending on the ones before it and none on this module:
//! `network` (the address plan, plain values), `veth` (the built-in
//! attachment) and `chain` (attachment by the CNI bridge plugin). This
//! module puts them together ([`Topology`], [`Container`], [`Setup`]) and
//! re-exports the address plan.

pub mod chain;
mod network;
mod veth;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use self::chain::Attachment;
pub use self::network::{
    Network, BRIDGE, BRIDGE_B, EXTRA_V4, EXTRA_V6, HOST_B_V4, HOST_B_V6, HOST_V4, HOST_V6, IFNAME,
    REMOTE_V4,
};
use crate::cni::Call;
use crate::netns::{Netns, NetnsError};

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
    /// Whether the second network's bridge exists yet.
    secondary: Mutex<bool>,
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

/// A container namespace with `eth0` on one of the host's networks.
pub struct Container {
    /// Declared before `ns`: detached while the namespace still exists.
    link: Link,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A further interface of a container (`net1`, …) on another network
/// ([`Topology::attach`]). Drop it before its container.
pub struct Interface {
    link: Link,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// One interface's attachment: how it was made, so it can be undone, and
/// what its prevResult says.
struct Link {
    attached: Attached,
    network: Network,
    ifname: String,
    sandbox: PathBuf,
}

enum Attached {
    Veth { host: String, veth: String },
    Chain { att: Attachment, result: Value },
}

/// Deleting the host side takes the pair down at once. Namespace teardown
/// alone is deferred by the kernel: a dead container's veth could still
/// sit on the bridge holding the address a new container reuses. A chain
/// container gets its bridge DEL, as a runtime would run it.
impl Drop for Link {
    fn drop(&mut self) {
        match &self.attached {
            Attached::Veth { host, veth } => veth::detach(host, veth),
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
        veth::add_bridge(&host, Network::Primary)?;
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
            secondary: Mutex::new(false),
            ipam_dir,
            cni_version: cni_version.to_string(),
        })
    }

    /// Attaches a container with addresses `10.88.0.<last>` and `fd00:88::<last>`.
    pub fn container(&self, label: &str, last: u8) -> Result<Container, TopologyError> {
        self.container_on(label, last, Network::Primary)
    }

    /// A container whose `eth0` (and default route) is on `network`.
    pub fn container_on(
        &self,
        label: &str,
        last: u8,
        network: Network,
    ) -> Result<Container, TopologyError> {
        self.ensure(network)?;
        let ns = Netns::new(label)?;
        let (link, v4, v6) = self.link(label, &ns, network, IFNAME, last, true)?;
        Ok(Container { link, ns, v4, v6 })
    }

    /// A further interface `ifname` of `container` on `network`, as a
    /// second network's plugin chain (a Multus delegate, podman's second
    /// `--network`) makes it: addresses `.<last>`, no default route.
    pub fn attach(
        &self,
        container: &Container,
        network: Network,
        ifname: &str,
        last: u8,
    ) -> Result<Interface, TopologyError> {
        self.ensure(network)?;
        let (link, v4, v6) = self.link(ifname, &container.ns, network, ifname, last, false)?;
        Ok(Interface { link, v4, v6 })
    }

    /// Creates the second network's bridge the first time it is asked for.
    fn ensure(&self, network: Network) -> Result<(), TopologyError> {
        if network == Network::Primary {
            return Ok(());
        }
        let mut made = self
            .secondary
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !*made {
            veth::add_bridge(&self.host, network)?;
            *made = true;
        }
        Ok(())
    }

    fn link(
        &self,
        label: &str,
        ns: &Netns,
        network: Network,
        ifname: &str,
        last: u8,
        default_route: bool,
    ) -> Result<(Link, Ipv4Addr, Ipv6Addr), TopologyError> {
        let (v4, v6) = network.addresses(last);
        let attached = match (&self.ipam_dir, self.setup) {
            (Some(dir), Setup::Chain) => {
                let config =
                    chain::bridge_config(network, v4, v6, dir, &self.cni_version, default_route);
                let id = format!("{}-{label}", ns.name());
                let (att, result) =
                    Attachment::add(&self.host, ns, &id, ifname, config).map_err(|reason| {
                        TopologyError::Chain {
                            label: label.to_string(),
                            reason,
                        }
                    })?;
                Attached::Chain { att, result }
            }
            _ => Attached::Veth {
                host: self.host.name().to_string(),
                veth: veth::attach(&self.host, ns, network, ifname, v4, v6, default_route)?,
            },
        };
        let link = Link {
            attached,
            network,
            ifname: ifname.to_string(),
            sandbox: ns.path(),
        };
        Ok((link, v4, v6))
    }
}

impl Topology {
    /// A namespace on its own link to the host, reachable only by routing.
    pub fn remote(&self) -> Result<Netns, NetnsError> {
        veth::remote(&self.host)
    }
}

impl<'a> Call<'a> {
    /// A call about `container` on `eth0`; `None` leaves `CNI_NETNS` empty
    /// (as runtimes do on a DEL after the namespace is gone).
    pub fn new(
        command: &'a str,
        container_id: &'a str,
        container: Option<&Container>,
        path: &'a Path,
        config: &'a Value,
    ) -> Call<'a> {
        let netns = container
            .map(|c| c.ns.path().display().to_string())
            .unwrap_or_default();
        Call::on(command, container_id, netns, IFNAME, path, config)
    }
}

impl Container {
    /// The prevResult for portmap with addresses of the wanted families:
    /// the bridge plugin's own result (chain setup), or one written as it
    /// would return it (veth setup).
    pub fn prev_result(&self, v4: bool, v6: bool) -> Value {
        self.link.prev_result(self.v4, self.v6, v4, v6)
    }

    pub fn addr(&self, v6: bool) -> IpAddr {
        addr(self.v4, self.v6, v6)
    }

    /// The network `eth0` is on.
    pub fn network(&self) -> Network {
        self.link.network
    }
}

impl Interface {
    /// The prevResult of this interface's network chain (see
    /// [`Container::prev_result`]).
    pub fn prev_result(&self, v4: bool, v6: bool) -> Value {
        self.link.prev_result(self.v4, self.v6, v4, v6)
    }

    pub fn addr(&self, v6: bool) -> IpAddr {
        addr(self.v4, self.v6, v6)
    }

    pub fn ifname(&self) -> &str {
        &self.link.ifname
    }

    pub fn network(&self) -> Network {
        self.link.network
    }
}

fn addr(v4: Ipv4Addr, v6: Ipv6Addr, want_v6: bool) -> IpAddr {
    if want_v6 {
        IpAddr::V6(v6)
    } else {
        IpAddr::V4(v4)
    }
}

impl Link {
    fn prev_result(&self, a4: Ipv4Addr, a6: Ipv6Addr, v4: bool, v6: bool) -> Value {
        match &self.attached {
            Attached::Chain { result, .. } => chain::with_families(result, v4, v6),
            Attached::Veth { .. } => {
                veth::prev_result(self.network, &self.ifname, &self.sandbox, a4, a6, v4, v6)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::netns::prerequisites;

    /// A second interface on the second network (made on first use):
    /// its own veth, its prevResult naming its interface and bridge.
    #[test]
    fn veth_containers_get_a_second_interface_on_the_second_bridge() {
        if !prerequisites(&[]) {
            return;
        }
        let topo = Topology::new().expect("topology");
        let c = topo.container("two", 7).expect("container");
        let net1 = topo
            .attach(&c, Network::Secondary, "net1", 7)
            .expect("net1");
        let prev = net1.prev_result(true, true);
        assert_eq!(prev["interfaces"][0]["name"], BRIDGE_B);
        assert_eq!(prev["interfaces"][1]["name"], "net1");
        assert_eq!(prev["ips"][0]["address"], "10.87.0.7/24");
        assert_eq!(prev["ips"][1]["address"], "fd00:87::7/64");
        let addrs =
            c.ns.exec("ip", &["-4", "addr", "show", "net1"])
                .expect("ip");
        assert!(addrs.contains("10.87.0.7/24"), "{addrs}");
        let other = topo
            .container_on("other", 8, Network::Secondary)
            .expect("container on the second network");
        assert_eq!(other.network(), Network::Secondary);
        assert_eq!(
            other.prev_result(true, false)["ips"][0]["gateway"],
            "10.87.0.1"
        );
    }

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
        // A second interface: the second bridge network's own lease, no
        // default route of its own (eth0's stays).
        let net1 = topo
            .attach(&c, Network::Secondary, "net1", 7)
            .expect("net1");
        assert_eq!(
            net1.prev_result(true, false)["ips"][0]["address"],
            "10.87.0.7/24"
        );
        let leased_b = dir
            .join(chain::network_name(Network::Secondary))
            .join("10.87.0.7");
        assert!(leased_b.exists(), "host-local lease {}", leased_b.display());
        let routes =
            c.ns.exec("ip", &["-4", "route", "show", "default"])
                .expect("ip");
        assert!(routes.contains("via 10.88.0.1 dev eth0"), "{routes}");
        drop(net1);
        assert!(!leased_b.exists(), "bridge DEL released net1's lease");
        drop(c);
        assert!(!leased.exists(), "bridge DEL released the lease");
        drop(topo);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
