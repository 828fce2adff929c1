//! `portmap restore`'s check of many plans against one nat read per
//! family (iptables-nft: one netlink rule dump, netlink.rs, where it renders
//! whole; else the family's save): each family's table indexed once, each
//! plan compared (by the same `batch::check` CHECK runs) against a view
//! holding just what that check looks at, so a pass stays linear in the
//! number of containers.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use super::access::read_for_plan;
use super::netlink;
use super::rules::{self, DNAT_CHAIN, MASQ_CHAIN, SETMARK_CHAIN};
use super::runner::{Runner, Variant};
use super::saved::SavedTable;
use super::tree;
use super::{Iptables, IptablesError};
use crate::plan::Plan;
use crate::{Family, Verdict};

/// One family's saved nat table, indexed for many plans.
struct Indexed {
    chains: BTreeSet<String>,
    /// The shared chains `batch::check` looks for rules in, copied whole
    /// into every view. Other tools' chains (kube-proxy's thousands of
    /// rules) are not: a view is a plan's, its cost must not be the table's.
    read_whole: BTreeMap<String, Vec<String>>,
    /// The rules of the per-container chains, by chain.
    own: BTreeMap<String, Vec<String>>,
    /// Rules of the chains not copied whole that jump to a chain, by
    /// target, in order.
    jumps: BTreeMap<String, Vec<(String, String)>>,
}

pub(super) fn per_container(chain: &str) -> bool {
    chain.starts_with("CNI-DN-") || chain.starts_with("CNI-SN-")
}

/// The shared chains whose rules `batch::check` asks for by name.
pub(super) fn read_whole(chain: &str) -> bool {
    [
        "PREROUTING",
        "OUTPUT",
        "POSTROUTING",
        SETMARK_CHAIN,
        MASQ_CHAIN,
    ]
    .contains(&chain)
}

/// Whether the check reads a chain's rules at all (whole or its own): the
/// rest matters only for its jumps into a container's chain.
pub(super) fn read_by_check(chain: &str) -> bool {
    read_whole(chain) || per_container(chain) || chain == DNAT_CHAIN || tree::is_tree(chain)
}

impl Indexed {
    fn new(saved: SavedTable) -> Indexed {
        let (mut whole, mut own, mut jumps) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (chain, specs) in saved.rules {
            if read_whole(&chain) {
                whole.insert(chain, specs);
                continue;
            }
            for spec in &specs {
                if let Some(target) = rules::jump_target(spec) {
                    jumps
                        .entry(target.to_string())
                        .or_insert_with(Vec::new)
                        .push((chain.clone(), spec.clone()));
                }
            }
            if per_container(&chain) {
                own.insert(chain, specs);
            }
        }
        Indexed {
            chains: saved.chains.into_iter().collect(),
            read_whole: whole,
            own,
            jumps,
        }
    }

    /// What `batch::check` of a container whose chain is `chain` sees:
    /// whether the chain exists, the shared chains it reads, its own rules
    /// and the rules jumping to it.
    fn view(&self, chain: &str) -> SavedTable {
        let mut rules = self.read_whole.clone();
        if let Some(own) = self.own.get(chain) {
            rules.insert(chain.to_string(), own.clone());
        }
        let mut leaves = BTreeSet::new();
        for (from, spec) in self.jumps.get(chain).into_iter().flatten() {
            if from != chain {
                rules.entry(from.clone()).or_default().push(spec.clone());
            }
            if tree::is_leaf(from) {
                leaves.insert(from.clone());
            }
        }
        // The tree rules leading to its leaves: a few per leaf, whatever
        // the number of containers.
        let mut path: BTreeSet<String> = leaves.iter().cloned().collect();
        path.extend(leaves.iter().flat_map(|l| tree::ancestors(l)));
        for target in &path {
            for (from, spec) in self.jumps.get(target).into_iter().flatten() {
                rules.entry(from.clone()).or_default().push(spec.clone());
            }
        }
        SavedTable {
            chains: self.chains.get(chain).into_iter().cloned().collect(),
            rules,
        }
    }
}

/// iptables-nft's table over netlink where it renders whole, else the
/// family's save (read_for_plan).
fn read_indexed(runner: &Runner) -> Result<SavedTable, IptablesError> {
    if runner.variant == Variant::Nft {
        if let Some(table) = netlink::read_nat(runner.family) {
            return Ok(table);
        }
    }
    read_for_plan(runner)
}

impl Iptables {
    /// Every plan against one nat read per family; a plan this backend
    /// cannot check (no tools for a family it maps) is damaged, with why.
    pub(super) fn check_all_inner(&self, plans: &[&Plan]) -> Result<Vec<Verdict>, IptablesError> {
        let mut tables: BTreeMap<Family, Indexed> = BTreeMap::new();
        let mut verdicts = Vec::with_capacity(plans.len());
        for plan in plans {
            let runners = match self.plan_runners(plan) {
                Ok(runners) => runners,
                Err(e) => {
                    verdicts.push(Verdict::Damaged(e.to_string()));
                    continue;
                }
            };
            let chain = rules::container_chain(&plan.key.network, &plan.key.container_id);
            let mut verdict = Verdict::Whole;
            for (fam, runner) in runners {
                let table = match tables.entry(fam.family) {
                    Entry::Occupied(t) => t.into_mut(),
                    Entry::Vacant(t) => t.insert(Indexed::new(read_indexed(runner)?)),
                };
                if let Some(missing) = self.compare(plan, fam, &table.view(&chain)) {
                    verdict = Verdict::Damaged(missing);
                    break;
                }
            }
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }
}
