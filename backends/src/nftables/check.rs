//! CHECK's comparison: a plan against the listed `cni_hostport` table of
//! each of its families. CHECK reads per plan; `portmap restore` reads
//! each family once and compares every journaled plan against that.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use super::decode::{self, Decoded};
use super::elements;
use super::maps_read::Elements;
use super::masq::{self, MasqIndex};
use super::read::{listed_target, Listed, Read};
use super::render::{describe, expected_rules, jump_target, wiring_rules};
use super::{
    is_ours, nf_family_name, owner, owner_of, NftError, Nftables, CONTAINER_CHAINS, TABLE,
};
use crate::plan::{FamilyPlan, Plan};
use crate::{Family, Verdict};

impl Nftables {
    pub(super) fn check_inner(&self, plan: &Plan) -> Result<Option<String>, NftError> {
        let id = plan.key.container_id.as_str();
        // The wiring chains' rules, and this container's own.
        let wanted = |chain: &str, comment: Option<&str>| {
            !CONTAINER_CHAINS.contains(&chain) || owner_of(chain, comment) == Some(id)
        };
        for fam in plan.families.iter().filter(|f| !f.dnats.is_empty()) {
            let read = self.read_all(fam.family, &wanted)?;
            if let Some(why) = compare(plan, fam, read.as_ref().map(|r| r.rules.as_slice()))? {
                return Ok(Some(why));
            }
            let Some(mut read) = read else { continue };
            let elements = read.take_elements();
            if let Some(why) = elements.compare(fam, id, &table_name(fam.family)) {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// Every plan against one read per family (only the families some plan
    /// needs), indexed by container; a plan that cannot be compared (its
    /// conditions do not render) is damaged, with why.
    pub(super) fn check_all_inner(&self, plans: &[&Plan]) -> Result<Vec<Verdict>, NftError> {
        let ids: BTreeSet<&str> = plans.iter().map(|p| p.key.container_id.as_str()).collect();
        let wanted = |chain: &str, comment: Option<&str>| {
            !CONTAINER_CHAINS.contains(&chain)
                || owner_of(chain, comment).is_some_and(|o| ids.contains(o))
        };
        let mut fast: BTreeMap<Family, Option<Fast>> = BTreeMap::new();
        let mut tables: BTreeMap<Family, Option<Indexed>> = BTreeMap::new();
        let mut verdicts = Vec::with_capacity(plans.len());
        for plan in plans {
            let mut verdict = Verdict::Whole;
            for fam in plan.families.iter().filter(|f| !f.dnats.is_empty()) {
                let proven = fast
                    .entry(fam.family)
                    .or_insert_with(|| self.fast_read(fam.family))
                    .as_ref()
                    .is_some_and(|f| f.proves(plan, fam));
                if proven {
                    continue;
                }
                let table = match tables.entry(fam.family) {
                    Entry::Occupied(t) => t.into_mut(),
                    Entry::Vacant(t) => {
                        let read = self.read_all(fam.family, &wanted)?;
                        t.insert(read.map(|r| Indexed::new(fam.family, r)))
                    }
                };
                let why = match table.as_ref() {
                    None => Ok(Some(missing(fam.family))),
                    Some(t) => match &t.wiring {
                        Some(why) => Ok(Some(why.clone())),
                        None => compare_ours(plan, fam, t.of(&plan.key.container_id)).map(|why| {
                            why.or_else(|| {
                                let table = table_name(fam.family);
                                t.elements.compare(fam, &plan.key.container_id, &table)
                            })
                        }),
                    },
                };
                match why {
                    Ok(None) => continue,
                    Ok(Some(why)) => verdict = Verdict::Damaged(why),
                    Err(e) => verdict = Verdict::Damaged(e.to_string()),
                }
                break;
            }
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }
}

impl Nftables {
    /// `fam`'s table over netlink, decoded; `None` (so `nft -j` decides)
    /// when its wiring is not proven, or the read failed, or the table is
    /// known to be missing, or the ruleset changed while it was read (the
    /// rules, map and set are three dumps: one generation for all).
    pub(super) fn fast_read(&self, family: Family) -> Option<Fast> {
        if self
            .tables_in
            .as_ref()
            .is_some_and(|f| !f.contains(&family))
        {
            return None;
        }
        let before = crate::nfnetlink::generation().ok()?;
        let fast = self.fast_read_at(family)?;
        (crate::nfnetlink::generation().ok()? == before).then_some(fast)
    }

    fn fast_read_at(&self, family: Family) -> Option<Fast> {
        let rules = decode::table(family).ok()?;
        let wired = decode::wiring().iter().all(|(chain, want)| {
            rules
                .iter()
                .any(|r| r.chain == *chain && r.decoded.as_ref() == Some(want))
        });
        if !wired {
            return None;
        }
        let lookup = rules.iter().any(|r| r.lookup);
        let masq_lookup = rules.iter().any(|r| r.masq_lookup);
        let masq = MasqIndex::new(masq::read(family).ok()?.unwrap_or_default(), masq_lookup);
        let mut by_owner: BTreeMap<String, Vec<(String, Option<Decoded>)>> = BTreeMap::new();
        for r in rules {
            if let Some(id) = r.owner() {
                let id = id.to_string();
                by_owner.entry(id).or_default().push((r.chain, r.decoded));
            }
        }
        Some(Fast {
            elements: Elements::new(elements::elements(family).ok()?, lookup, masq),
            by_owner,
        })
    }
}

/// One family's rules decoded over netlink (decode.rs), by owner: proves
/// plans whole without `nft -j`; what it cannot prove goes to [`Indexed`].
pub(super) struct Fast {
    by_owner: BTreeMap<String, Vec<(String, Option<Decoded>)>>,
    elements: Elements,
}

impl Fast {
    /// Whether the container's rules (of this attachment) are exactly
    /// `fam`'s, every one decoded, and its map elements too.
    pub(super) fn proves(&self, plan: &Plan, fam: &FamilyPlan) -> bool {
        let id = plan.key.container_id.as_str();
        let Some(expected) = decode::expected(fam) else {
            return false;
        };
        let listed = self.by_owner.get(id).map(Vec::as_slice).unwrap_or_default();
        let mut ours = Vec::with_capacity(expected.len());
        for (chain, decoded) in listed {
            let Some(d) = decoded else { return false };
            if d.target().is_none_or(|t| t == fam.container.addr) {
                ours.push((chain.as_str(), d));
            }
        }
        for (chain, want) in &expected {
            match ours.iter().position(|(c, d)| c == chain && *d == want) {
                Some(i) => {
                    ours.swap_remove(i);
                }
                None => return false,
            }
        }
        ours.is_empty()
            && self
                .elements
                .compare(fam, id, &table_name(fam.family))
                .is_none()
    }
}

/// One family's listed table, for many plans: the wiring checked once,
/// each container's rules found without a scan.
struct Indexed {
    listed: Vec<Listed>,
    elements: Elements,
    wiring: Option<String>,
    by_owner: BTreeMap<String, Vec<usize>>,
}

impl Indexed {
    fn new(family: Family, mut read: Read) -> Indexed {
        let elements = read.take_elements();
        let listed = read.rules;
        let mut by_owner: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in listed.iter().enumerate() {
            if let Some(id) = owner(r) {
                by_owner.entry(id.to_string()).or_default().push(i);
            }
        }
        Indexed {
            elements,
            wiring: wiring_missing(family, &listed),
            listed,
            by_owner,
        }
    }

    fn of<'t>(&'t self, id: &str) -> impl Iterator<Item = &'t Listed> + 't {
        let at = self.by_owner.get(id).map(Vec::as_slice).unwrap_or_default();
        at.iter().filter_map(|&i| self.listed.get(i))
    }
}

fn table_name(family: Family) -> String {
    format!("{} {TABLE}", nf_family_name(family))
}

fn missing(family: Family) -> String {
    format!("table {} is missing", table_name(family))
}

/// The first wiring rule (a hook chain's jump) the table lacks.
fn wiring_missing(family: Family, listed: &[Listed]) -> Option<String> {
    wiring_rules().into_iter().find_map(|(chain, expr)| {
        (!listed.iter().any(|r| r.chain == chain && r.expr == expr)).then(|| {
            format!(
                "table {}: chain {chain} lacks its jump to {}",
                table_name(family),
                jump_target(&expr)
            )
        })
    })
}

/// What of `fam`'s rules the listed table (`None`: missing) lacks or has
/// too many of; `None` when it is exact.
fn compare(
    plan: &Plan,
    fam: &FamilyPlan,
    listed: Option<&[Listed]>,
) -> Result<Option<String>, NftError> {
    let Some(listed) = listed else {
        return Ok(Some(missing(fam.family)));
    };
    if let Some(why) = wiring_missing(fam.family, listed) {
        return Ok(Some(why));
    }
    let id = plan.key.container_id.as_str();
    compare_ours(plan, fam, listed.iter().filter(|r| is_ours(r, id)))
}

/// [`compare`] of the container's own rules (`ours`, in table order).
fn compare_ours<'l>(
    plan: &Plan,
    fam: &FamilyPlan,
    ours: impl Iterator<Item = &'l Listed>,
) -> Result<Option<String>, NftError> {
    let table = table_name(fam.family);
    // This attachment's: the container's rules leading to its address
    // (another network's attachment has another).
    let mut ours: Vec<&Listed> = ours
        .filter(|r| listed_target(r).is_none_or(|t| t == fam.container.addr))
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
    Ok(None)
}
