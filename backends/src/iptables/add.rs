//! ADDs: one ([`Iptables::add_inner`]), or many in one write per family
//! (`portmap restore` reinstalling a chunk of containers): one read, one
//! `iptables-restore --noflush` batch that leaves what the ADDs one by one
//! would (pure, see [`add_all`]; the writing is [`Iptables::add_all`]).

use std::collections::{BTreeMap, BTreeSet};

use super::access::{read_for_plan, Sought};
use super::batch::{self, add_own, add_shared, note_shared, own_chain, Writes};
use super::guard;
use super::runner::Runner;
use super::saved::SavedTable;
use super::{Iptables, IptablesError};
use crate::plan::{FamilyPlan, Plan};
use crate::{ContainerKey, Family};

/// Containers per chunk (see `Backend::install_chunk`): the plugin lock is
/// held for one chunk's read and write.
pub const INSTALL_CHUNK: usize = 100;

/// The one batch for `wanted` (one family's part of each plan, in order)
/// against what `saved` holds. Shared chains and rules are added where the
/// table, or an earlier plan of the chunk, lacks them; each container
/// chain is declared (so flushed) where it first appears, and filled with
/// its entry rules inserted on top where its attachment last appears: a
/// later ADD of the same attachment would rewrite both.
pub fn add_all(wanted: &[(&Plan, &FamilyPlan)], saved: &SavedTable) -> String {
    let last: BTreeMap<&ContainerKey, usize> = wanted
        .iter()
        .enumerate()
        .map(|(i, (plan, _))| (&plan.key, i))
        .collect();
    let mut table = saved.clone();
    let mut declared = BTreeSet::new();
    // Each plan's declarations just before its lines (iptables-restore
    // takes them anywhere in a table): iptables-nft creates chains in
    // this order, which `nft list ruleset` shows, as the ADDs one by one.
    let mut out = Writes::default();
    for (i, (plan, fam)) in wanted.iter().enumerate() {
        let mut mine = Writes::default();
        add_shared(plan, fam, &table, &mut mine);
        note_shared(&mut table, &mine);
        let chain = own_chain(plan);
        if declared.insert(chain.clone()) {
            mine.decls.push(chain);
        }
        if last.get(&plan.key) == Some(&i) {
            // Only the table's own entry rules are deleted: earlier plans
            // of the same attachment wrote none.
            add_own(plan, fam, saved, &mut mine);
        }
        out.lines
            .extend(mine.decls.iter().map(|d| batch::declaration(d)));
        out.lines.extend(mine.lines);
    }
    out.render()
}

/// One family's runner and its part of each plan of the chunk.
type FamilyChunk<'p> = (&'p Runner, Vec<(&'p Plan, &'p FamilyPlan)>);

impl Iptables {
    /// The IPv4 mangle table, where the guard is, when `fam` needs it.
    pub(super) fn guard_read(
        plan: &Plan,
        fam: &FamilyPlan,
        runner: &Runner,
    ) -> Result<Option<SavedTable>, IptablesError> {
        if fam.family != Family::V4 || plan.localnet_container().is_none() {
            return Ok(None);
        }
        let text = runner.read_table(guard::GUARD_TABLE)?;
        Ok(Some(SavedTable::parse(&text)))
    }

    pub(super) fn add_inner(&self, plan: &Plan) -> Result<(), IptablesError> {
        let families = self.plan_families(plan)?;
        let mut guards = Vec::new();
        for (fam, runner, _) in &families {
            guards.push(Self::guard_read(plan, fam, runner)?);
        }
        let mut applied: Vec<&Runner> = Vec::new();
        for ((fam, runner, saved), mangle) in families.iter().zip(guards) {
            // The guard's section comes first: should nat's part fail,
            // what stays is the guard alone, which only ever drops what
            // route_localnet (not yet turned on by this ADD) would let in.
            let guard = mangle
                .and_then(|mangle| guard::repair(&mangle))
                .unwrap_or_default();
            if let Err(e) = runner.restore(&(guard + &batch::add(plan, fam, saved))) {
                Self::roll_back(&applied, &plan.key);
                return Err(e);
            }
            applied.push(runner);
        }
        Ok(())
    }

    /// Takes the container out of the families a failed ADD had already
    /// written (each family is its own batch): a failed ADD leaves none of
    /// its rules. Should that fail too, the runtime's DEL after the failed
    /// ADD is what removes them.
    fn roll_back(applied: &[&Runner], key: &ContainerKey) {
        let sought = Sought::Container(key);
        if let Err(e) = Self::del_where(applied, sought, |_| vec![key.clone()]) {
            eprintln!("portmap: warning: rolling back the failed ADD: {e}");
        }
    }

    /// The ADDs of `plans`, in order, in one read and one restore per
    /// family: all plans' families and tables are read before anything is
    /// written, each family's batch is atomic. A family that fails leaves
    /// the families written before it as written (restore's caller then
    /// installs each plan alone, which rolls back what it must).
    pub(super) fn add_all(&self, plans: &[&Plan]) -> Result<(), IptablesError> {
        let mut families: BTreeMap<Family, FamilyChunk> = BTreeMap::new();
        for plan in plans {
            for (fam, runner) in self.plan_runners(plan)? {
                families
                    .entry(fam.family)
                    .or_insert_with(|| (runner, Vec::new()))
                    .1
                    .push((plan, fam));
            }
        }
        let mut batches = Vec::new();
        for (runner, wanted) in families.values() {
            let saved = read_for_plan(runner)?;
            let guard = match wanted
                .iter()
                .find(|(p, _)| p.localnet_container().is_some())
            {
                Some((plan, fam)) => Self::guard_read(plan, fam, runner)?
                    .and_then(|mangle| guard::repair(&mangle))
                    .unwrap_or_default(),
                None => String::new(),
            };
            // The guard first, as for one ADD (see `add_inner`).
            batches.push((*runner, guard + &add_all(wanted, &saved)));
        }
        for (runner, batch) in batches {
            runner.restore(&batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "add_tests.rs"]
mod tests;
