//! `portmap restore`'s check of many plans against one nat read per
//! family: each family's table indexed once, each plan compared (by the
//! same `batch::check` CHECK runs) against a view holding just what that
//! check looks at, so a pass stays linear in the number of containers.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use super::access::read_for_plan;
use super::rules::{self, DNAT_CHAIN};
use super::saved::SavedTable;
use super::{Iptables, IptablesError};
use crate::plan::Plan;
use crate::{Family, Verdict};

/// One family's saved nat table, indexed for many plans.
struct Indexed {
    chains: BTreeSet<String>,
    /// Chains copied whole into every view: all but the per-container
    /// chains and CNI-HOSTPORT-DNAT (what every plan's check reads).
    shared: BTreeMap<String, Vec<String>>,
    /// The rules of the other chains, by chain.
    rest: BTreeMap<String, Vec<String>>,
    /// Rules of the other chains jumping to a chain, by target, in order.
    jumps: BTreeMap<String, Vec<(String, String)>>,
}

fn per_container(chain: &str) -> bool {
    chain == DNAT_CHAIN || chain.starts_with("CNI-DN-") || chain.starts_with("CNI-SN-")
}

impl Indexed {
    fn new(saved: SavedTable) -> Indexed {
        let (mut shared, mut rest, mut jumps) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (chain, specs) in saved.rules {
            if !per_container(&chain) {
                shared.insert(chain, specs);
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
            rest.insert(chain, specs);
        }
        Indexed {
            chains: saved.chains.into_iter().collect(),
            shared,
            rest,
            jumps,
        }
    }

    /// What `batch::check` of a container whose chain is `chain` sees:
    /// whether the chain exists, the shared chains, its own rules and the
    /// rules jumping to it.
    fn view(&self, chain: &str) -> SavedTable {
        let mut rules = self.shared.clone();
        if let Some(own) = self.rest.get(chain) {
            rules.insert(chain.to_string(), own.clone());
        }
        for (from, spec) in self.jumps.get(chain).into_iter().flatten() {
            if from != chain {
                rules.entry(from.clone()).or_default().push(spec.clone());
            }
        }
        SavedTable {
            chains: self.chains.get(chain).into_iter().cloned().collect(),
            rules,
        }
    }
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
                    Entry::Vacant(t) => t.insert(Indexed::new(read_for_plan(runner)?)),
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
