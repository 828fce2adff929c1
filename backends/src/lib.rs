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
pub mod relayout;
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
    /// nftables only (iptables renders rules whatever it says). Absent in
    /// journals written before it existed, and left out for `rules`: the
    /// entry format stays what earlier releases read and write.
    #[serde(default, skip_serializing_if = "Layout::is_rules")]
    pub layout: Layout,
    /// iptables only (`iptablesLayout`), journaled like `layout`.
    #[serde(default, skip_serializing_if = "IptablesLayout::is_rules")]
    pub iptables_layout: IptablesLayout,
}

/// How the nftables backend carries single-port mappings: upstream's one
/// rule each, or one element each in a per-family map (`nftablesLayout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    #[default]
    Rules,
    Maps,
}

impl Layout {
    pub fn is_rules(&self) -> bool {
        *self == Layout::Rules
    }

    pub fn parse(name: &str) -> Option<Layout> {
        match name {
            "rules" => Some(Layout::Rules),
            "maps" => Some(Layout::Maps),
            _ => None,
        }
    }
}

/// How the iptables backend dispatches single host ports: upstream's entry
/// rule per container in `CNI-HOSTPORT-DNAT` (walked rule by rule), or a
/// port tree of chains (iptables/tree.rs) that upstream's DEL cannot undo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IptablesLayout {
    #[default]
    Rules,
    Tree,
}

impl IptablesLayout {
    pub fn is_rules(&self) -> bool {
        *self == IptablesLayout::Rules
    }

    pub fn parse(name: &str) -> Option<IptablesLayout> {
        match name {
            "rules" => Some(IptablesLayout::Rules),
            "tree" => Some(IptablesLayout::Tree),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            IptablesLayout::Rules => "rules",
            IptablesLayout::Tree => "tree",
        }
    }
}

/// What identifies a container's rules: iptables hashes both into the
/// chain name, nftables comments rules with the container ID alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerKey {
    pub network: String,
    pub container_id: String,
}

/// One attachment (container ID, network, interface) with its container
/// addresses: what a GC collects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub key: ContainerKey,
    pub addrs: Vec<IpAddr>,
}

/// What is known of one attachment's rules beyond its key (the plugin's
/// journal knows it). nftables rules carry only the container ID, so one
/// attachment's rules are told from another's of the same container by
/// the container address they lead to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The attachment's container addresses; `None`: not known (its
    /// journal entry is lost, or another binary made it).
    pub addrs: Option<Vec<IpAddr>>,
    /// The addresses of the container's other attachments.
    pub others: Vec<IpAddr>,
}

impl Known {
    /// Whether a rule of the container leading to `target` belongs to this
    /// attachment: its own address, yes; another attachment's, no; an
    /// address nobody claims, only when this attachment's are unknown (it
    /// may be any of them). A rule leading nowhere we can read belongs to
    /// it unless the container has other attachments.
    pub fn owns(&self, target: Option<IpAddr>) -> bool {
        let Some(target) = target else {
            return self.others.is_empty();
        };
        match &self.addrs {
            Some(addrs) if addrs.contains(&target) => true,
            _ if self.others.contains(&target) => false,
            addrs => addrs.is_none(),
        }
    }

    /// This knowledge with `addrs` added to the attachment's own (an ADD's
    /// new addresses: rules leading there are replaced too).
    pub fn with(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Known {
        let new: Vec<IpAddr> = addrs.into_iter().collect();
        Known {
            addrs: self.addrs.as_ref().map(|old| {
                let mut all = old.clone();
                all.extend(new.iter().filter(|a| !old.contains(a)));
                all
            }),
            others: self
                .others
                .iter()
                .filter(|a| !new.contains(a))
                .copied()
                .collect(),
        }
    }
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

/// What one DNAT rule says, read back from either backend: a host port
/// range (one port, or a run rendered as one rule) and its target.
pub struct DnatRule {
    pub family: Family,
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_ports: (u16, u16),
    pub container_ip: IpAddr,
    /// `None`: the rule keeps the destination port (a run's rendering).
    pub container_port: Option<u16>,
}

impl DnatRule {
    /// The mappings the rule stands for, one per host port.
    pub fn mappings(&self) -> Vec<InstalledMapping> {
        let (first, last) = self.host_ports;
        (first..=last)
            .map(|host_port| InstalledMapping {
                family: self.family,
                protocol: self.protocol,
                host_ip: self.host_ip,
                host_port,
                container_ip: self.container_ip,
                container_port: self.container_port.unwrap_or(host_port),
            })
            .collect()
    }
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

/// Which backend (and iptables variant): the one place their names are
/// spelled. The journal stores these names, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Nftables,
    IptablesNft,
    IptablesLegacy,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Nftables,
        BackendKind::IptablesNft,
        BackendKind::IptablesLegacy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Nftables => "nftables",
            BackendKind::IptablesNft => "iptables-nft",
            BackendKind::IptablesLegacy => "iptables-legacy",
        }
    }

    pub fn parse(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
    pub backend: BackendKind,
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
    /// nftables: some mappings are elements of our map (the maps layout),
    /// which upstream's binary cannot delete.
    pub map_elements: bool,
    /// iptables: some mappings are leaf rules of the port tree (the tree
    /// layout), which upstream's binary cannot delete.
    pub tree_leaves: bool,
}

/// The layout `portmap migrate --layout` puts one backend's containers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutChoice {
    Nftables(Layout),
    Iptables(IptablesLayout),
}

impl LayoutChoice {
    /// `req` in this layout (the other backend's layout as it was).
    pub fn apply(self, req: Request) -> Request {
        match self {
            LayoutChoice::Nftables(layout) => Request { layout, ..req },
            LayoutChoice::Iptables(iptables_layout) => Request {
                iptables_layout,
                ..req
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LayoutChoice::Nftables(Layout::Rules)
            | LayoutChoice::Iptables(IptablesLayout::Rules) => "rules",
            LayoutChoice::Nftables(Layout::Maps) => "maps",
            LayoutChoice::Iptables(IptablesLayout::Tree) => "tree",
        }
    }

    /// Whether relayout should try a container listed with `options`:
    /// conditions keep a container in upstream's layout (nftables) or
    /// cannot be read back (iptables), so it is left alone, unless it is
    /// in the opt-in layout already: then it is tried and fails, said.
    pub(crate) fn movable(self, options: &InstalledOptions) -> bool {
        match self {
            LayoutChoice::Nftables(_) => !options.conditions || options.map_elements,
            LayoutChoice::Iptables(_) => !options.conditions || options.tree_leaves,
        }
    }
}

/// The one seam: both firewalls implement this.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Its stable name (see [`BackendKind::name`]).
    fn name(&self) -> &'static str {
        self.kind().name()
    }
    /// Whether rules are keyed by network as well as container ID
    /// (iptables hashes both into chain names; nftables uses the ID only).
    fn records_network(&self) -> bool;
    /// Installs the attachment's rules in one atomic batch per family and
    /// returns where they went, if the backend can find them again by that
    /// (a receipt, for [`Backend::del`]). `earlier`: what is known of its
    /// earlier rules, which are replaced; `None` when it can have none (a
    /// backend may then skip looking for them, which costs O(containers)).
    fn install(
        &self,
        plan: &Plan,
        earlier: Option<&Known>,
    ) -> Result<Option<Receipt>, BackendError>;
    /// [`Backend::install`] of many attachments, in this order (a later
    /// one's rules win where they overlap an earlier one's), in as few
    /// writes as the backend can: one transaction (nftables), one batch
    /// per family (iptables), else one install each. An error may leave
    /// some installed (not nftables; iptables: the families written
    /// before the one that failed).
    fn install_all(
        &self,
        wanted: &[(&Plan, Option<&Known>)],
    ) -> Result<Vec<Option<Receipt>>, BackendError> {
        wanted.iter().map(|(p, k)| self.install(p, *k)).collect()
    }
    /// How many attachments one [`Backend::install_all`] should get (a
    /// restore pass holds the plugin lock for that many).
    fn install_chunk(&self) -> usize {
        1
    }
    /// [`Backend::install`] replacing every earlier rule of the container
    /// ID (migrate, tests: no journal to tell attachments apart).
    fn add(&self, plan: &Plan) -> Result<(), BackendError> {
        self.install(plan, Some(&Known::default())).map(|_| ())
    }
    /// Whether every rule of the plan is installed exactly (an error is a
    /// read that failed, not a verdict). Not the localnet guard
    /// ([`Backend::localnet_guard`]): it is the host's, and upstream's
    /// containers have none, yet pass CHECK.
    fn check(&self, plan: &Plan) -> Result<Verdict, BackendError>;
    /// [`Backend::check`] of many plans against one read of the firewall
    /// (`portmap restore`: one read per pass, not one per container). A
    /// plan that cannot be compared is `Damaged` with why; a read that
    /// fails fails them all.
    fn check_all(&self, plans: &[&Plan]) -> Result<Vec<Verdict>, BackendError> {
        plans.iter().map(|p| self.check(p)).collect()
    }
    /// Removes every rule of the attachment (those `known` owns, where the
    /// backend cannot tell attachments apart otherwise); succeeds when
    /// there is none. `receipt`: where its ADD put them, a hint the caller
    /// vouches is complete (checked against the kernel before it is used).
    /// Returns the mappings it removed (for the conntrack flush).
    fn del(
        &self,
        key: &ContainerKey,
        known: &Known,
        receipt: Option<&Receipt>,
    ) -> Result<Vec<ClosedPort>, BackendError>;
    /// Lists installed mappings grouped by container.
    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError>;
    /// Removes the rules of every container of `network` not in `keep`:
    /// where the rules record the network (iptables), those; where they do
    /// not (nftables), only the rules of `doomed`, the attachments of
    /// `network` known to be gone. Returns the removed container IDs.
    fn gc(
        &self,
        network: &str,
        keep: &BTreeSet<String>,
        doomed: &[Attachment],
    ) -> Result<Vec<String>, BackendError>;
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
}

/// What CHECK found of a plan's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every rule is installed exactly.
    Whole,
    /// The first thing missing or different.
    Damaged(String),
}

impl BackendError {
    /// The underlying tool's own words (stderr), for CNI `details`.
    pub fn details(&self) -> String {
        match self {
            BackendError::Nftables(e) => e.details(),
            BackendError::Iptables(e) => e.details(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_attachment_owns_its_addresses_and_nobody_elses() {
        let (a, b, c) = (ip("10.88.0.5"), ip("10.89.0.5"), ip("10.90.0.5"));
        let net_a = Known {
            addrs: Some(vec![a]),
            others: vec![b],
        };
        assert!(net_a.owns(Some(a)));
        assert!(!net_a.owns(Some(b)), "the other network's attachment");
        assert!(
            !net_a.owns(Some(c)),
            "known addresses: an unclaimed one is not ours"
        );
        assert!(!net_a.owns(None), "unreadable, and there are others");
        // Its own entry lost: everything but the others' is possibly ours.
        let lost = Known {
            addrs: None,
            others: vec![b],
        };
        assert!(lost.owns(Some(a)) && lost.owns(Some(c)) && !lost.owns(Some(b)));
        // Nothing known at all: the whole container (upstream's DEL).
        assert!(Known::default().owns(Some(b)) && Known::default().owns(None));
    }

    #[test]
    fn an_add_also_owns_its_new_addresses() {
        let (a, b, new) = (ip("10.88.0.5"), ip("10.89.0.5"), ip("10.88.0.9"));
        let k = Known {
            addrs: Some(vec![a]),
            others: vec![b],
        }
        .with([new]);
        assert!(k.owns(Some(a)) && k.owns(Some(new)) && !k.owns(Some(b)));
        // A new address another attachment had is this one's now.
        let moved = Known {
            addrs: Some(vec![a]),
            others: vec![b],
        }
        .with([b]);
        assert!(moved.owns(Some(b)));
        assert_eq!(Known::default().with([a]), Known::default());
    }
}

#[cfg(test)]
mod layout_choice_tests {
    use super::*;

    #[test]
    fn relayout_tries_what_it_can_read_back_or_must_report() {
        let plain = InstalledOptions::default();
        let conditions = InstalledOptions {
            conditions: true,
            ..plain.clone()
        };
        let leaves = InstalledOptions {
            tree_leaves: true,
            ..conditions.clone()
        };
        let back = LayoutChoice::Iptables(IptablesLayout::Rules);
        assert!(back.movable(&plain));
        assert!(!back.movable(&conditions), "stays in upstream's layout");
        assert!(
            back.movable(&leaves),
            "a tree it cannot move is a failure, said"
        );
        let req = Request {
            iptables_layout: IptablesLayout::Tree,
            ..crate::plan::tests::golden_request()
        };
        assert_eq!(
            back.apply(req.clone()).iptables_layout,
            IptablesLayout::Rules
        );
        let maps = LayoutChoice::Nftables(Layout::Maps).apply(req);
        assert_eq!(
            (maps.layout, maps.iptables_layout),
            (Layout::Maps, IptablesLayout::Tree)
        );
    }
}
