//! nftables backend: the upstream `cni_hostport` layout, applied as one
//! `nft -j` transaction per command. Parts: `add` (what ADD reads, its
//! transaction and receipt), `del` (DEL and GC, by receipt or from dumps),
//! `kernel` (our rules over netlink), `decode` (the restore pass's strict
//! netlink decoding; `uapi` holds the netlink constants both use), `render` (the plan as nftables objects), `read`
//! (`nft -j list table` back into containers, for CHECK and `list`),
//! `check` (CHECK's comparison, one plan or many per read), `conditions`
//! (conditionsV4/V6 words into matches), `guard` (the localnet guard's
//! table), the opt-in maps layout: `maps` (map, lookup, ADD's element
//! commands), `masq` (its masquerade set), `maps_read` (CHECK's element
//! index, `list`), `elements` (map and set elements over netlink); and
//! here the errors and the `Backend` commands.
//!
//! Where we differ from upstream on purpose: hostports rules are inserted
//! (newest container wins, as with iptables) and carry that container's
//! conditions (upstream keeps one global set: last ADD wins); masqAll is
//! honoured; CHECK compares exact rules instead of counting comments.

use std::collections::BTreeSet;
use std::path::PathBuf;

use nftables::batch::Batch;
use nftables::schema::Table;
use nftables::types::NfFamily;

use crate::exec::{self, ExecError};
use crate::plan::Plan;
use crate::{
    Attachment, Backend, BackendError, BackendKind, ClosedPort, ContainerKey, Family,
    InstalledContainer, Known, Receipt, Verdict,
};

mod add;
mod check;
mod conditions;
pub(crate) mod decode;
mod del;
mod elements;
#[cfg(test)]
mod fast_tests;
mod guard;
mod kernel;
mod maps;
mod maps_read;
#[cfg(test)]
mod maps_tests;
mod masq;
#[cfg(test)]
mod masq_tests;
mod read;
mod render;
#[cfg(test)]
mod tests;
pub(crate) mod uapi;

#[cfg(test)]
use add::skeleton_intact;
pub use conditions::parse_conditions;
pub use guard::{guard_intact, GUARD_CHAIN, GUARD_TABLE};
pub use maps::MAP;
pub use masq::MASQ_SET;

/// Containers per restore transaction (see `Backend::install_chunk`).
const INSTALL_CHUNK: usize = 100;
use read::{containers, Listed};
use render::add_table_comment;

pub const TABLE: &str = "cni_hostport";
pub const TABLE_COMMENT: &str = "CNI portmap plugin";
pub const HOSTPORTS: &str = "hostports";
pub const HOSTIP_HOSTPORTS: &str = "hostip_hostports";
pub const HOSTPORTS_ALL: &str = "hostports_all";
pub const PREROUTING: &str = "prerouting";
pub const OUTPUT: &str = "output";
pub const MASQUERADING: &str = "masquerading";
/// Chains whose rules belong to one container (commented with its ID).
const CONTAINER_CHAINS: [&str; 3] = [HOSTPORTS, HOSTIP_HOSTPORTS, MASQUERADING];
const DSTNAT_PRIORITY: i32 = -100;
const SRCNAT_PRIORITY: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft binary not found in PATH")]
    NotFound,
    #[error("nftables: {action} failed")]
    Rejected { action: String, stderr: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// nft hung and was killed (for a transaction, what that leaves is
    /// said at `Nftables::apply`).
    #[error("nftables: {action}: nft did not finish within {timeout:?} and was killed")]
    Timeout {
        action: String,
        program: String,
        timeout: std::time::Duration,
    },
    #[error("nftables: reading our table over netlink failed: {0}")]
    Netlink(#[from] crate::nfnetlink::NetlinkError),
    #[error("nftables: cannot parse the output of nft: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("nftables: unsupported condition {condition:?}: {reason}")]
    Condition { condition: String, reason: String },
}

impl NftError {
    pub fn details(&self) -> String {
        match self {
            NftError::Rejected { stderr, .. } => stderr.clone(),
            NftError::Spawn { source, .. } => source.to_string(),
            NftError::Timeout {
                program, timeout, ..
            } => format!("{program} killed (with its process group) after {timeout:?}"),
            _ => String::new(),
        }
    }
}

/// The nftables backend, bound to one `nft` executable.
#[derive(Debug, Clone)]
pub struct Nftables {
    nft: PathBuf,
    /// Families known (from the kernel's table list) to hold our table;
    /// reads of the others are skipped. `None`: not known, read every family.
    tables_in: Option<Vec<Family>>,
}

/// Picks, by chain and comment, the listed rules whose expressions a
/// caller needs.
type Wanted<'w> = &'w dyn Fn(&str, Option<&str>) -> bool;

impl Nftables {
    pub fn new(nft: PathBuf) -> Nftables {
        Nftables {
            nft,
            tables_in: None,
        }
    }

    /// This backend, reading only `families` (where the kernel has our
    /// table): a DEL then spawns no process for a family with nothing.
    pub fn with_tables_in(self, families: Vec<Family>) -> Nftables {
        Nftables {
            tables_in: Some(families),
            ..self
        }
    }

    /// Uses the `nft` found in PATH.
    pub fn from_path() -> Result<Nftables, NftError> {
        which::which("nft")
            .map(Nftables::new)
            .map_err(|_| NftError::NotFound)
    }

    pub fn binary(&self) -> &std::path::Path {
        &self.nft
    }

    /// Runs this nft with `args` (and `input`) within `timeout`. Every nft
    /// we start goes through here; not the crate's helpers, which have no
    /// timeout and let nft's stderr through to ours (nft's own words
    /// belong in the CNI error's details).
    pub(crate) fn run(
        &self,
        args: &[&str],
        input: Option<&str>,
        timeout: std::time::Duration,
        action: &str,
    ) -> Result<std::process::Output, NftError> {
        let program = self.nft.display().to_string();
        exec::run(&self.nft, args, input.map(str::as_bytes), timeout).map_err(|e| match e {
            ExecError::Timeout { timeout, .. } => NftError::Timeout {
                action: action.to_string(),
                program,
                timeout,
            },
            ExecError::Spawn { source, .. } | ExecError::Io { source, .. } => {
                NftError::Spawn { program, source }
            }
        })
    }

    /// One `nft -j -f -` transaction. nft killed at its timeout has
    /// applied nothing: it sends the whole transaction as one netlink
    /// batch, which the kernel commits or aborts as a whole. A kill lands
    /// before that, or, had nft hung after, finds the whole batch in,
    /// which the runtime's DEL after our failed ADD removes (DEL finds
    /// rules by container ID).
    /// `extra`: raw commands after the batch's (map elements, which the
    /// crate's schema cannot carry with comments).
    fn apply_with(
        &self,
        batch: Batch<'_>,
        extra: Vec<serde_json::Value>,
        action: &str,
    ) -> Result<(), NftError> {
        let mut doc = serde_json::to_value(batch.to_nftables())?;
        add_table_comment(&mut doc);
        if let Some(cmds) = doc.get_mut("nftables").and_then(|v| v.as_array_mut()) {
            cmds.extend(extra);
        }
        let payload = serde_json::to_string(&doc)?;
        let out = self.run(&["-j", "-f", "-"], Some(&payload), exec::NFT_APPLY, action)?;
        if !out.status.success() {
            return Err(NftError::Rejected {
                action: action.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    fn list_inner(&self) -> Result<Vec<InstalledContainer>, NftError> {
        let mut tables = Vec::new();
        let mut elements = Vec::new();
        let mut masq = Vec::new();
        for family in [Family::V4, Family::V6] {
            let read = self.read_all(family, &|_, _| true)?.unwrap_or_default();
            elements.push((family, read.elements));
            masq.extend(read.masq);
            tables.push((family, read.rules));
        }
        Ok(maps_read::with_elements(
            containers(&tables),
            &elements,
            &masq,
        ))
    }
}

impl Backend for Nftables {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    fn records_network(&self) -> bool {
        false
    }

    fn install(
        &self,
        plan: &Plan,
        earlier: Option<&Known>,
    ) -> Result<Option<Receipt>, BackendError> {
        Ok(self.add_inner(plan, earlier)?)
    }

    fn install_all(
        &self,
        wanted: &[(&Plan, Option<&Known>)],
    ) -> Result<Vec<Option<Receipt>>, BackendError> {
        Ok(self.add_all(wanted)?)
    }

    fn install_chunk(&self) -> usize {
        // One transaction of 100 containers takes well under a second.
        INSTALL_CHUNK
    }

    fn check(&self, plan: &Plan) -> Result<Verdict, BackendError> {
        Ok(self
            .check_inner(plan)?
            .map_or(Verdict::Whole, Verdict::Damaged))
    }

    fn check_all(&self, plans: &[&Plan]) -> Result<Vec<Verdict>, BackendError> {
        Ok(self.check_all_inner(plans)?)
    }

    fn del(
        &self,
        key: &ContainerKey,
        known: &Known,
        receipt: Option<&Receipt>,
    ) -> Result<Vec<ClosedPort>, BackendError> {
        if let Some(receipt) = receipt {
            if let Some(closed) = self.del_by_receipt(key, known, receipt)? {
                return Ok(closed);
            }
        }
        let id = key.container_id.as_str();
        Ok(self
            .del_where(&|owner, target| owner == id && known.owns(target))?
            .0)
    }

    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError> {
        Ok(self.list_inner()?)
    }

    fn gc(
        &self,
        _network: &str,
        keep: &BTreeSet<String>,
        doomed: &[Attachment],
    ) -> Result<Vec<String>, BackendError> {
        // Rules carry only the container ID (upstream's format), not the
        // network: only attachments known to be the network's go, each by
        // the addresses its rules lead to.
        let (_, ids) = self.del_where(&|id, target| {
            !keep.contains(id)
                && doomed.iter().any(|a| {
                    a.key.container_id == id && target.is_some_and(|t| a.addrs.contains(&t))
                })
        })?;
        Ok(ids.into_iter().collect())
    }

    fn localnet_guard(&self) -> Result<bool, BackendError> {
        Ok(guard_intact().map_err(NftError::from)?)
    }
}

/// The container a rule belongs to: its comment, in a per-container chain.
fn owner(r: &Listed) -> Option<&str> {
    owner_of(&r.chain, r.comment.as_deref())
}

/// The container a rule in `chain` with `comment` belongs to: only the
/// per-container chains carry container IDs.
fn owner_of<'c>(chain: &str, comment: Option<&'c str>) -> Option<&'c str> {
    comment.filter(|_| CONTAINER_CHAINS.contains(&chain))
}

fn is_ours(r: &Listed, container_id: &str) -> bool {
    owner(r) == Some(container_id)
}

pub fn nf_family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn table_ref(family: Family) -> Table<'static> {
    Table {
        family: nf_family(family),
        name: TABLE.into(),
        handle: None,
    }
}

fn nf_family(family: Family) -> NfFamily {
    match family {
        Family::V4 => NfFamily::IP,
        Family::V6 => NfFamily::IP6,
    }
}
