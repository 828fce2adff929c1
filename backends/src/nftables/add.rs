//! ADD: read what the kernel shows of the skeleton (and, for a re-ADD,
//! the container's earlier rules), build one transaction, apply it and
//! keep the handles the kernel announced as the container's receipt.
//! `portmap restore` sends many containers in one such transaction.

use super::guard;
use super::kernel;
use super::kernel::KernelRule;
use super::render::add_skeleton;
use super::render::expected_rules;
use super::render::rule;
use super::render::rule_ref;
use super::render::wiring_shapes;
use super::NftError;
use super::Nftables;
use super::HOSTPORTS;
use super::MASQUERADING;
use std::collections::{BTreeMap, BTreeSet};

use crate::plan::Plan;
use crate::Family;
use crate::Known;
use crate::Receipt;
use crate::RuleRef;
use nftables::batch::Batch;
use nftables::schema::NfCmd;
use nftables::schema::NfListObject;

/// One attachment to install: its plan and what is known of its earlier
/// rules (see [`crate::Backend::install`]).
pub(super) type Wanted<'a> = (&'a Plan, Option<&'a Known>);

/// An ADD transaction (of one or many attachments), and whether it leaves
/// out a skeleton the read found whole.
struct AddBatch<'b> {
    batch: Batch<'b>,
    /// Map commands, after the batch's (maps.rs).
    extra: Vec<serde_json::Value>,
    trimmed: bool,
    /// How many rules of each attachment it adds.
    rules: Vec<usize>,
}

/// Whether `<family> cni_hostport` has the chains and exactly the wiring
/// rules an ADD would install: three small reads (the wiring chains) and,
/// with masquerading, one chain lookup, whatever the number of containers.
pub(super) fn skeleton_intact(family: Family, masquerade: bool) -> Result<bool, NftError> {
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

impl Nftables {
    /// ADD in one transaction. `earlier`: the attachment may have rules
    /// already (a re-ADD), found with a dump of the table and replaced
    /// where `earlier` (with the plan's own addresses) owns them; `None`:
    /// only the wiring chains are read (flat in N). Returns where the
    /// rules went, from the kernel's notifications.
    pub(super) fn add_inner(
        &self,
        plan: &Plan,
        earlier: Option<&Known>,
    ) -> Result<Option<Receipt>, NftError> {
        Ok(self.add_all(&[(plan, earlier)])?.pop().flatten())
    }

    /// [`Nftables::add_inner`] of many attachments in one transaction
    /// (one read of the skeleton and of earlier rules per family), each
    /// inserted after the one before it: the last one's rules come first.
    /// Attachments of one container ID are not told apart by their rules'
    /// comments, and map and masquerade elements are planned against the
    /// map and set as read (two attachments may claim one key, or both
    /// create the map): those go one transaction each.
    pub(super) fn add_all(&self, wanted: &[Wanted<'_>]) -> Result<Vec<Option<Receipt>>, NftError> {
        let ids: BTreeSet<&str> = wanted
            .iter()
            .map(|(p, _)| p.key.container_id.as_str())
            .collect();
        let elements = wanted.iter().any(|(p, _)| {
            p.families
                .iter()
                .any(|f| !f.element_runs().is_empty() || !f.masquerade_elements().is_empty())
        });
        if wanted.len() > 1 && (ids.len() < wanted.len() || elements) {
            return wanted
                .iter()
                .map(|w| {
                    self.add_all(std::slice::from_ref(w))
                        .map(|mut r| r.pop().flatten())
                })
                .collect();
        }
        let owned: Vec<Option<Known>> = wanted
            .iter()
            .map(|(plan, earlier)| {
                earlier.map(|k| k.with(plan.families.iter().map(|f| f.container.addr)))
            })
            .collect();
        let wanted: Vec<Wanted<'_>> = wanted
            .iter()
            .zip(&owned)
            .map(|((plan, _), known)| (*plan, known.as_ref()))
            .collect();
        let first = self.add_batch(&wanted, false)?;
        let trimmed = first.trimmed;
        match self.apply_recorded(first, &wanted) {
            // The skeleton was left out because the read found it whole; a
            // reload or another tool may have removed it since. Nothing
            // was applied: read again and send the whole skeleton. Not
            // after a hung nft: the retry would hang as long again.
            Err(e) if trimmed && !matches!(e, NftError::Timeout { .. }) => {
                self.apply_recorded(self.add_batch(&wanted, true)?, &wanted)
            }
            done => done,
        }
    }

    /// Applies an ADD's batch and collects the handles the kernel gave each
    /// attachment's rules (a receipt only when every one was seen).
    fn apply_recorded(
        &self,
        add: AddBatch<'_>,
        wanted: &[Wanted<'_>],
    ) -> Result<Vec<Option<Receipt>>, NftError> {
        let at: BTreeMap<&str, usize> = wanted
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (p.key.container_id.as_str(), i))
            .collect();
        // Without a subscription the ADD still works; DEL then reads more.
        let events = crate::nfnetlink::RuleEvents::subscribe().ok();
        let action = match wanted {
            [(plan, _)] => format!("add rules for container {}", plan.key.container_id),
            _ => format!("add rules for {} containers", wanted.len()),
        };
        self.apply_with(add.batch, add.extra, &action)?;
        let mut rules: Vec<Vec<RuleRef>> = vec![Vec::new(); wanted.len()];
        let whole = events.is_some_and(|e| {
            e.drain_new(&mut |body| {
                let family = kernel::family_of(body);
                if let (Some(family), Some(r)) = (family, kernel::parse_rule(body)) {
                    if let Some(&i) = r.owner().and_then(|id| at.get(id)) {
                        rules[i].push(RuleRef {
                            family,
                            chain: r.chain,
                            handle: u64::from(r.handle),
                        });
                    }
                }
            })
            .unwrap_or(false)
        });
        Ok(rules
            .into_iter()
            .zip(&add.rules)
            .map(|(rules, &n)| (whole && rules.len() == n).then_some(Receipt { rules }))
            .collect())
    }

    fn add_batch(
        &self,
        wanted: &[Wanted<'_>],
        whole_skeleton: bool,
    ) -> Result<AddBatch<'static>, NftError> {
        let mut batch = Batch::new();
        let mut extra = Vec::new();
        let mut trimmed = false;
        let mut rules = vec![0; wanted.len()];
        // The guard goes in with the first ADD that will turn route_localnet
        // on, in the same transaction; after that it is only read.
        if wanted.iter().any(|(p, _)| p.localnet_container().is_some()) {
            if whole_skeleton || !guard::guard_intact()? {
                guard::add_guard(&mut batch);
            } else {
                trimmed = true;
            }
        }
        // Per family: whether any attachment masquerades, whether any may
        // have earlier rules (then one dump of the table).
        let mut families: BTreeMap<Family, (bool, bool)> = BTreeMap::new();
        for (plan, earlier) in wanted {
            for fam in plan.families.iter().filter(|f| !f.dnats.is_empty()) {
                let at = families.entry(fam.family).or_default();
                at.0 |= !fam.masquerade.is_empty();
                at.1 |= earlier.is_some();
            }
        }
        let mut dumps: BTreeMap<Family, Vec<KernelRule>> = BTreeMap::new();
        for (&family, &(masquerade, dump)) in &families {
            if dump {
                dumps.insert(family, kernel::rules(family, None)?);
            }
            // Re-adding existing chains and re-writing the wiring would cost
            // every ADD a wait for an RCU grace period in the kernel (8-16 ms
            // when nft closes its socket): send them only where missing.
            if whole_skeleton || !skeleton_intact(family, masquerade)? {
                add_skeleton(&mut batch, family, masquerade);
            } else {
                trimmed = true;
            }
        }
        for ((plan, earlier), rules) in wanted.iter().zip(&mut rules) {
            let id = plan.key.container_id.as_str();
            for fam in plan.families.iter().filter(|f| !f.dnats.is_empty()) {
                let expected = expected_rules(fam)?;
                if let (Some(known), Some(dump)) = (earlier, dumps.get(&fam.family)) {
                    let old = dump
                        .iter()
                        .filter(|r| r.owner() == Some(id) && known.owns(r.target));
                    for old in old {
                        batch.delete(NfListObject::Rule(rule_ref(
                            fam.family, &old.chain, old.handle,
                        )));
                    }
                }
                // Inserted in reverse so the container's rules keep config order
                // at the head of the chain: the newest container wins.
                for (chain, expr) in expected.iter().rev().filter(|(c, _)| *c == HOSTPORTS) {
                    *rules += 1;
                    batch.add_cmd(NfCmd::Insert(NfListObject::Rule(rule(
                        fam.family,
                        chain,
                        expr.clone(),
                        &plan.key.container_id,
                    ))));
                }
                for (chain, expr) in expected.iter().filter(|(c, _)| *c == MASQUERADING) {
                    *rules += 1;
                    batch.add(NfListObject::Rule(rule(
                        fam.family,
                        chain,
                        expr.clone(),
                        &plan.key.container_id,
                    )));
                }
                self.add_elements(fam, id, *earlier, &mut extra)?;
            }
        }
        Ok(AddBatch {
            batch,
            extra,
            trimmed,
            rules,
        })
    }
}
