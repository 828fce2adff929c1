//! nftables backend: the upstream `cni_hostport` layout, applied as one
//! `nft -j` transaction, read back with one `nft -j list table` per family.
//! Parts: `render` (the plan as nftables objects), `read` (listing our
//! table back into containers and mappings), `conditions` (conditionsV4/V6
//! words into matches), and here the errors and the `Backend` commands.
//!
//! Where we differ from upstream on purpose: hostports rules are inserted
//! (newest container wins, as with iptables) and carry that container's
//! conditions (upstream keeps one global set: last ADD wins); masqAll is
//! honoured; CHECK compares exact rules instead of counting comments.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::plan::{Dnat, FamilyPlan, MasqSource, Plan};
use crate::{
    Backend, BackendError, ClosedPort, ContainerKey, Family, InstalledContainer, InstalledMapping,
    InstalledOptions, Protocol, Receipt, RuleRef,
};

mod conditions;
mod kernel;
mod read;
mod render;
#[cfg(test)]
mod tests;

pub use conditions::parse_conditions;
use kernel::KernelRule;
use read::*;
use render::*;

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
    Nft {
        action: String,
        #[source]
        source: NftablesError,
    },
    #[error("nftables: {action} failed")]
    Rejected { action: String, stderr: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
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
            NftError::Nft {
                source: NftablesError::NftFailed { stderr, .. },
                ..
            } => stderr.trim().to_string(),
            NftError::Nft { source, .. } => source.to_string(),
            NftError::Rejected { stderr, .. } => stderr.clone(),
            NftError::Spawn { source, .. } => source.to_string(),
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

/// An ADD transaction, and whether it leaves out a skeleton the read found
/// whole.
struct AddBatch<'b> {
    batch: Batch<'b>,
    trimmed: bool,
    /// How many rules of the container it adds.
    rules: usize,
}

/// Whether `<family> cni_hostport` has the chains and exactly the wiring
/// rules an ADD would install: three small reads (the wiring chains) and,
/// with masquerading, one chain lookup, whatever the number of containers.
fn skeleton_intact(family: Family, masquerade: bool) -> Result<bool, NftError> {
    for (chain, shapes) in wiring_shapes() {
        let found: Vec<kernel::Shape> = kernel::rules(family, Some(chain))?
            .into_iter()
            .map(|r| r.shape)
            .collect();
        if found != shapes {
            return Ok(false);
        }
    }
    // The jumps prove the other chains exist; masquerading may not.
    Ok(!masquerade || kernel::has_chain(family, MASQUERADING)?)
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

    /// One `nft -j -f -` transaction. Not the crate's `apply_ruleset`: it
    /// lets nft's stderr through to ours, and nft's own words belong in
    /// the CNI error's details.
    fn apply(&self, batch: Batch<'_>, action: &str) -> Result<(), NftError> {
        let mut doc = serde_json::to_value(batch.to_nftables())?;
        add_table_comment(&mut doc);
        let payload = serde_json::to_string(&doc)?;
        let out = crate::exec::run_with_stdin(&self.nft, &["-j", "-f", "-"], &payload).map_err(
            |source| NftError::Spawn {
                program: self.nft.display().to_string(),
                source,
            },
        )?;
        if !out.status.success() {
            return Err(NftError::Rejected {
                action: action.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// ADD in one transaction. `replacing`: the container may have rules
    /// already (a re-ADD), found with dumps of the container chains and
    /// replaced; otherwise only the wiring chains are read (flat in N).
    /// Returns where the rules went, from the kernel's notifications.
    fn add_inner(&self, plan: &Plan, replacing: bool) -> Result<Option<Receipt>, NftError> {
        let first = self.add_batch(plan, replacing, false)?;
        let trimmed = first.trimmed;
        match self.apply_recorded(first, plan) {
            // The skeleton was left out because the read found it whole; a
            // reload or another tool may have removed it since. Nothing
            // was applied: read again and send the whole skeleton.
            Err(_) if trimmed => self.apply_recorded(self.add_batch(plan, replacing, true)?, plan),
            done => done,
        }
    }

    /// Applies an ADD's batch and collects the handles the kernel gave its
    /// rules (a receipt only when every one was seen).
    fn apply_recorded(&self, add: AddBatch<'_>, plan: &Plan) -> Result<Option<Receipt>, NftError> {
        let id = plan.key.container_id.as_str();
        // Without a subscription the ADD still works; DEL then reads more.
        let events = crate::nfnetlink::RuleEvents::subscribe().ok();
        self.apply(add.batch, &format!("add rules for container {id}"))?;
        let mut rules = Vec::new();
        let whole = events.is_some_and(|e| {
            e.drain_new(&mut |body| {
                let family = kernel::family_of(body);
                if let (Some(family), Some(r)) = (family, kernel::parse_rule(body)) {
                    if r.owner() == Some(id) {
                        rules.push(RuleRef {
                            family,
                            chain: r.chain,
                            handle: u64::from(r.handle),
                        });
                    }
                }
            })
            .unwrap_or(false)
        });
        Ok((whole && rules.len() == add.rules).then_some(Receipt { rules }))
    }

    /// DEL by a receipt: each rule fetched by its handle (one small request
    /// each) must still be this container's; then its rules go by handle,
    /// or the table with the last container. `None` when the receipt no
    /// longer holds (a reload, a restore, another binary): read it all.
    fn del_by_receipt(
        &self,
        key: &ContainerKey,
        receipt: &Receipt,
    ) -> Result<Option<Vec<ClosedPort>>, NftError> {
        let id = key.container_id.as_str();
        if receipt.rules.is_empty() {
            return Ok(None);
        }
        let mut batch = Batch::new();
        let mut closed = Vec::new();
        let families: BTreeSet<Family> = receipt.rules.iter().map(|r| r.family).collect();
        for family in families {
            let mut found = Vec::new();
            for r in receipt.rules.iter().filter(|r| r.family == family) {
                match kernel::rule(family, &r.chain, r.handle)? {
                    Some(k) if k.owner() == Some(id) => found.push(k),
                    _ => return Ok(None),
                }
            }
            closed.extend(found.iter().filter_map(|r| {
                r.port.map(|(protocol, host_port)| ClosedPort {
                    family,
                    protocol,
                    host_port,
                })
            }));
            if kernel::others_than(family, id)? {
                for r in &found {
                    batch.delete(NfListObject::Rule(rule_ref(family, &r.chain, r.handle)));
                }
            } else {
                batch.delete(NfListObject::Table(table_ref(family)));
            }
        }
        self.apply(batch, &format!("delete rules of container {id}"))?;
        Ok(Some(closed))
    }

    fn add_batch(
        &self,
        plan: &Plan,
        replacing: bool,
        whole_skeleton: bool,
    ) -> Result<AddBatch<'static>, NftError> {
        let mut batch = Batch::new();
        let mut trimmed = false;
        let mut rules = 0;
        for fam in &plan.families {
            if fam.dnats.is_empty() {
                continue;
            }
            let expected = expected_rules(fam)?;
            let masquerade = !fam.masquerade.is_empty();
            let earlier = if replacing {
                kernel::container_rules(&[fam.family])?
                    .into_iter()
                    .flat_map(|(_, rules)| rules)
                    .filter(|r| r.owner() == Some(plan.key.container_id.as_str()))
                    .collect()
            } else {
                Vec::new()
            };
            // Re-adding existing chains and re-writing the wiring would cost
            // every ADD a wait for an RCU grace period in the kernel (8-16 ms
            // when nft closes its socket): send them only where missing.
            if whole_skeleton || !skeleton_intact(fam.family, masquerade)? {
                add_skeleton(&mut batch, fam.family, masquerade);
            } else {
                trimmed = true;
            }
            for old in &earlier {
                batch.delete(NfListObject::Rule(rule_ref(
                    fam.family, &old.chain, old.handle,
                )));
            }
            // Inserted in reverse so the container's rules keep config order
            // at the head of the chain: the newest container wins.
            for (chain, expr) in expected.iter().rev().filter(|(c, _)| *c == HOSTPORTS) {
                rules += 1;
                batch.add_cmd(NfCmd::Insert(NfListObject::Rule(rule(
                    fam.family,
                    chain,
                    expr.clone(),
                    &plan.key.container_id,
                ))));
            }
            for (chain, expr) in expected.iter().filter(|(c, _)| *c == MASQUERADING) {
                rules += 1;
                batch.add(NfListObject::Rule(rule(
                    fam.family,
                    chain,
                    expr.clone(),
                    &plan.key.container_id,
                )));
            }
        }
        Ok(AddBatch {
            batch,
            trimmed,
            rules,
        })
    }

    fn check_inner(&self, plan: &Plan) -> Result<Option<String>, NftError> {
        for fam in &plan.families {
            if fam.dnats.is_empty() {
                continue;
            }
            let table = format!("{} {TABLE}", nf_family_name(fam.family));
            let id = plan.key.container_id.as_str();
            // The wiring chains' rules, and this container's own.
            let wanted = |chain: &str, comment: Option<&str>| {
                !CONTAINER_CHAINS.contains(&chain) || owner_of(chain, comment) == Some(id)
            };
            let Some(listed) = self.read(fam.family, &wanted)? else {
                return Ok(Some(format!("table {table} is missing")));
            };
            for (chain, expr) in wiring_rules() {
                if !listed.iter().any(|r| r.chain == chain && r.expr == expr) {
                    return Ok(Some(format!(
                        "table {table}: chain {chain} lacks its jump to {}",
                        jump_target(&expr)
                    )));
                }
            }
            let mut ours: Vec<&Listed> = listed
                .iter()
                .filter(|r| is_ours(r, &plan.key.container_id))
                .collect();
            for (chain, expr) in expected_rules(fam)? {
                match ours.iter().position(|r| r.chain == chain && r.expr == expr) {
                    Some(i) => {
                        ours.remove(i);
                    }
                    None => {
                        return Ok(Some(format!(
                            "table {table}: chain {chain} is missing the rule for {}",
                            describe(fam, chain, &expr)
                        )))
                    }
                }
            }
            if let Some(extra) = ours.first() {
                return Ok(Some(format!(
                    "table {table}: chain {} has an unexpected rule (handle {}) for container {}",
                    extra.chain, extra.handle, plan.key.container_id
                )));
            }
        }
        Ok(None)
    }

    /// Deletes, in one transaction, the rules of every container `doomed`
    /// picks; returns the closed ports and container IDs. DEL picks one
    /// container, GC every one not kept: netlink dumps of the container
    /// chains (no process) either way, and no transaction when nothing is
    /// ours.
    fn del_where(
        &self,
        doomed: impl Fn(&str) -> bool,
    ) -> Result<(Vec<ClosedPort>, BTreeSet<String>), NftError> {
        let mut batch = Batch::new();
        let mut closed = Vec::new();
        let mut ids = BTreeSet::new();
        let families: Vec<Family> = [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| self.tables_in.as_ref().is_none_or(|t| t.contains(f)))
            .collect();
        for (family, rules) in kernel::container_rules(&families)? {
            let (ours, others): (Vec<&KernelRule>, Vec<&KernelRule>) = rules
                .iter()
                .filter(|r| r.owner().is_some())
                .partition(|r| r.owner().is_some_and(&doomed));
            if ours.is_empty() {
                continue;
            }
            ids.extend(ours.iter().filter_map(|r| r.owner()).map(str::to_string));
            closed.extend(ours.iter().filter_map(|r| {
                r.port.map(|(protocol, host_port)| ClosedPort {
                    family,
                    protocol,
                    host_port,
                })
            }));
            if others.is_empty() {
                // Last container out: the whole table goes, in the same transaction.
                batch.delete(NfListObject::Table(table_ref(family)));
            } else {
                for r in ours {
                    batch.delete(NfListObject::Rule(rule_ref(family, &r.chain, r.handle)));
                }
            }
        }
        if !ids.is_empty() {
            let names: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.apply(
                batch,
                &format!("delete rules of container {}", names.join(", ")),
            )?;
        }
        Ok((closed, ids))
    }

    fn list_inner(&self) -> Result<Vec<InstalledContainer>, NftError> {
        let mut tables = Vec::new();
        for family in [Family::V4, Family::V6] {
            tables.push((family, self.read(family, &|_, _| true)?.unwrap_or_default()));
        }
        Ok(containers(&tables))
    }
}

pub const NAME: &str = "nftables";

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        NAME
    }

    fn records_network(&self) -> bool {
        false
    }

    fn add(&self, plan: &Plan) -> Result<(), BackendError> {
        self.add_inner(plan, true)?;
        Ok(())
    }

    fn install(&self, plan: &Plan, fresh: bool) -> Result<Option<Receipt>, BackendError> {
        Ok(self.add_inner(plan, !fresh)?)
    }

    fn check(&self, plan: &Plan) -> Result<(), BackendError> {
        match self.check_inner(plan)? {
            None => Ok(()),
            Some(what) => Err(BackendError::CheckFailed {
                backend: NAME,
                what,
            }),
        }
    }

    fn del(&self, key: &ContainerKey) -> Result<Vec<ClosedPort>, BackendError> {
        Ok(self.del_where(|id| id == key.container_id)?.0)
    }

    fn del_receipted(
        &self,
        key: &ContainerKey,
        receipt: &Receipt,
    ) -> Result<Vec<ClosedPort>, BackendError> {
        match self.del_by_receipt(key, receipt)? {
            Some(closed) => Ok(closed),
            None => self.del(key),
        }
    }

    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError> {
        Ok(self.list_inner()?)
    }

    fn gc(&self, _network: &str, keep: &BTreeSet<String>) -> Result<Vec<String>, BackendError> {
        // nftables rules carry only the container ID (upstream format), so
        // every container not kept is collected, whatever its network.
        let (_, ids) = self.del_where(|id| !keep.contains(id))?;
        Ok(ids.into_iter().collect())
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
