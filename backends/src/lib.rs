//! Port-mapping rules for nftables and iptables behind one [`Backend`] trait.
//!
//! This crate knows nothing about CNI: it takes a validated [`Request`],
//! turns it into a pure [`plan::Plan`] and lets a backend render and apply
//! that plan atomically. Everything above it (JSON, env, selection policy)
//! is backend-blind; everything here is CNI-blind.

pub mod exec;
pub mod guard;
pub mod host;
pub mod iptables;
pub mod migrate;
pub mod nfnetlink;
pub mod nftables;
pub mod plan;
pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use plan::Plan;

/// Address family of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Host bits of a full-length prefix (32 or 128).
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// Transport protocol of a mapping. Ordered by name, as upstream sorts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sctp,
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(name: &str) -> Option<Protocol> {
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `runtimeConfig.portMappings` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None` when absent or empty in the config.
    pub host_ip: Option<IpAddr>,
}

/// A container address with the prefix length of its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl ContainerAddr {
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// The network the address lives in (`10.88.0.5/16` → `10.88.0.0`).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }
}

/// How hairpin/localhost traffic gets marked for masquerade (iptables only;
/// nftables masquerades by address match and ignores this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasqMark {
    /// Our own `CNI-HOSTPORT-SETMARK` chain sets `1 << bit`.
    Bit(u8),
    /// Someone else's chain sets the mark; we only jump to it.
    ExternalChain(String),
}

impl MasqMark {
    /// Upstream's default `markMasqBit`.
    pub const DEFAULT_BIT: u8 = 13;
}

impl Default for MasqMark {
    fn default() -> Self {
        MasqMark::Bit(MasqMark::DEFAULT_BIT)
    }
}

/// Everything a backend needs for one container, already validated.
/// Serializable: `portmap restore` reinstalls containers from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub key: ContainerKey,
    pub v4: Option<ContainerAddr>,
    pub v6: Option<ContainerAddr>,
    pub mappings: Vec<PortMapping>,
    pub snat: bool,
    pub masq_all: bool,
    pub mark: MasqMark,
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
}

/// What identifies a container's rules: iptables hashes both into the
/// chain name, nftables comments rules with the container ID alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerKey {
    pub network: String,
    pub container_id: String,
}

/// One mapping as found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledMapping {
    pub family: Family,
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// Where one ADD put a container's rules, as its backend can find them
/// again (nftables: family, chain and handle of each rule).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Receipt {
    pub rules: Vec<RuleRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub family: Family,
    pub chain: String,
    pub handle: u64,
}

/// A host port a DEL closed: what the UDP conntrack flush after it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClosedPort {
    pub family: Family,
    pub protocol: Protocol,
    pub host_port: u16,
}

impl From<&InstalledMapping> for ClosedPort {
    fn from(m: &InstalledMapping) -> ClosedPort {
        ClosedPort {
            family: m.family,
            protocol: m.protocol,
            host_port: m.host_port,
        }
    }
}

/// The mappings of one container in one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledContainer {
    pub backend: &'static str,
    pub container_id: String,
    /// Known for iptables (in the entry-rule comment), not for nftables.
    pub network: Option<String>,
    pub mappings: Vec<InstalledMapping>,
    pub options: InstalledOptions,
}

/// What a container's rules say beyond the mappings: enough to re-create
/// them in another backend (`portmap migrate`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledOptions {
    /// Hairpin/localhost masquerade rules exist.
    pub snat: bool,
    /// The masquerade rule matches every source.
    pub masq_all: bool,
    /// iptables only: how the masquerade mark is set.
    pub mark: Option<MasqMark>,
    /// The rules carry match conditions (whose syntax is backend-specific).
    pub conditions: bool,
    /// Container prefix lengths, where the rules show them (iptables
    /// hairpin rules match the container subnet; nftables the address).
    pub prefix_len: BTreeMap<Family, u8>,
}

/// The one seam: both firewalls implement this.
pub trait Backend: Send + Sync {
    /// Stable name: `nftables`, `iptables-nft` or `iptables-legacy`.
    fn name(&self) -> &'static str;
    /// Whether rules are keyed by network as well as container ID
    /// (iptables hashes both into chain names; nftables uses the ID only).
    fn records_network(&self) -> bool;
    /// Installs (or replaces) the container's rules in one atomic batch per family.
    fn add(&self, plan: &Plan) -> Result<(), BackendError>;
    /// [`Backend::add`] as the plugin's ADD runs it. `fresh`: the container
    /// can have no rules yet (the plugin's journal has never seen its ID),
    /// so a backend may skip looking for earlier rules to replace, which
    /// costs O(containers). Returns where the rules went, if the backend
    /// can find them again by that (see [`Backend::del_receipted`]).
    fn install(&self, plan: &Plan, fresh: bool) -> Result<Option<Receipt>, BackendError> {
        let _ = fresh;
        self.add(plan).map(|()| None)
    }
    /// [`Backend::del`] of a container whose ADD returned `receipt`: a
    /// backend that can check the receipt against the kernel deletes by
    /// it without reading every container's rules, and falls back to
    /// [`Backend::del`] when it no longer holds.
    fn del_receipted(
        &self,
        key: &ContainerKey,
        receipt: &Receipt,
    ) -> Result<Vec<ClosedPort>, BackendError> {
        let _ = receipt;
        self.del(key)
    }
    /// Verifies that every rule of the plan is installed exactly. Not the
    /// localnet guard ([`Backend::localnet_guard`]): it is the host's, and
    /// upstream's containers have none, yet pass CHECK.
    fn check(&self, plan: &Plan) -> Result<(), BackendError>;
    /// Removes every rule of the container; succeeds when there is none.
    /// Returns the mappings it removed (for the conntrack flush).
    fn del(&self, key: &ContainerKey) -> Result<Vec<ClosedPort>, BackendError>;
    /// Lists installed mappings grouped by container.
    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError>;
    /// Removes the rules of every container of `network` not in `keep`;
    /// returns the removed container IDs.
    fn gc(&self, network: &str, keep: &BTreeSet<String>) -> Result<Vec<String>, BackendError>;
    /// Whether this backend's localnet guard ([`guard`]) is installed
    /// whole in this network namespace.
    fn localnet_guard(&self) -> Result<bool, BackendError>;
}

/// Errors any backend can return; module errors carry the detail.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Nftables(#[from] nftables::NftError),
    #[error(transparent)]
    Iptables(#[from] iptables::IptablesError),
    /// CHECK found the ruleset differing from the plan.
    #[error("{backend}: {what}")]
    CheckFailed { backend: &'static str, what: String },
}

impl BackendError {
    /// The underlying tool's own words (stderr), for CNI `details`.
    pub fn details(&self) -> String {
        match self {
            BackendError::Nftables(e) => e.details(),
            BackendError::Iptables(e) => e.details(),
            BackendError::CheckFailed { .. } => String::new(),
        }
    }
}
