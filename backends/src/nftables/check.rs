//! CHECK's comparison: a plan against the listed `cni_hostport` table of
//! each of its families. CHECK reads per plan; `portmap restore` reads
//! each family once and compares every journaled plan against that.

use std::collections::{BTreeMap, BTreeSet};

use super::read::{listed_target, Listed};
use super::render::{describe, expected_rules, jump_target, wiring_rules};
use super::{is_ours, nf_family_name, owner_of, NftError, Nftables, CONTAINER_CHAINS, TABLE};
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
            let listed = self.read(fam.family, &wanted)?;
            if let Some(why) = compare(plan, fam, listed.as_deref())? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// Every plan against one read per family (only the families some plan
    /// needs); a plan that cannot be compared (its conditions do not
    /// render) is damaged, with why.
    pub(super) fn check_all_inner(&self, plans: &[&Plan]) -> Result<Vec<Verdict>, NftError> {
        let ids: BTreeSet<&str> = plans.iter().map(|p| p.key.container_id.as_str()).collect();
        let wanted = |chain: &str, comment: Option<&str>| {
            !CONTAINER_CHAINS.contains(&chain)
                || owner_of(chain, comment).is_some_and(|o| ids.contains(o))
        };
        let mut tables: BTreeMap<Family, Option<Vec<Listed>>> = BTreeMap::new();
        let mut verdicts = Vec::with_capacity(plans.len());
        for plan in plans {
            let mut verdict = Verdict::Whole;
            for fam in plan.families.iter().filter(|f| !f.dnats.is_empty()) {
                if !tables.contains_key(&fam.family) {
                    tables.insert(fam.family, self.read(fam.family, &wanted)?);
                }
                let listed = tables.get(&fam.family).and_then(Option::as_deref);
                match compare(plan, fam, listed) {
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

/// What of `fam`'s rules the listed table (`None`: missing) lacks or has
/// too many of; `None` when it is exact.
fn compare(
    plan: &Plan,
    fam: &FamilyPlan,
    listed: Option<&[Listed]>,
) -> Result<Option<String>, NftError> {
    let table = format!("{} {TABLE}", nf_family_name(fam.family));
    let Some(listed) = listed else {
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
    // This attachment's: the container's rules leading to its address
    // (another network's attachment has another).
    let mut ours: Vec<&Listed> = listed
        .iter()
        .filter(|r| is_ours(r, &plan.key.container_id))
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
