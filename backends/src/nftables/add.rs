//! ADD: read what the kernel shows of the skeleton (and, for a re-ADD,
//! the container's earlier rules), build one transaction, apply it and
//! keep the handles the kernel announced as the container's receipt.

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
use crate::plan::Plan;
use crate::Family;
use crate::Known;
use crate::Receipt;
use crate::RuleRef;
use nftables::batch::Batch;
use nftables::schema::NfCmd;
use nftables::schema::NfListObject;

/// An ADD transaction, and whether it leaves out a skeleton the read found
/// whole.
struct AddBatch<'b> {
    batch: Batch<'b>,
    /// Map commands, after the batch's (maps.rs).
    extra: Vec<serde_json::Value>,
    trimmed: bool,
    /// How many rules of the container it adds.
    rules: usize,
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
        let earlier = earlier.map(|k| k.with(plan.families.iter().map(|f| f.container.addr)));
        let earlier = earlier.as_ref();
        let first = self.add_batch(plan, earlier, false)?;
        let trimmed = first.trimmed;
        match self.apply_recorded(first, plan) {
            // The skeleton was left out because the read found it whole; a
            // reload or another tool may have removed it since. Nothing
            // was applied: read again and send the whole skeleton. Not
            // after a hung nft: the retry would hang as long again.
            Err(e) if trimmed && !matches!(e, NftError::Timeout { .. }) => {
                self.apply_recorded(self.add_batch(plan, earlier, true)?, plan)
            }
            done => done,
        }
    }

    /// Applies an ADD's batch and collects the handles the kernel gave its
    /// rules (a receipt only when every one was seen).
    fn apply_recorded(&self, add: AddBatch<'_>, plan: &Plan) -> Result<Option<Receipt>, NftError> {
        let id = plan.key.container_id.as_str();
        // Without a subscription the ADD still works; DEL then reads more.
        let events = crate::nfnetlink::RuleEvents::subscribe().ok();
        self.apply_with(
            add.batch,
            add.extra,
            &format!("add rules for container {id}"),
        )?;
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

    fn add_batch(
        &self,
        plan: &Plan,
        earlier: Option<&Known>,
        whole_skeleton: bool,
    ) -> Result<AddBatch<'static>, NftError> {
        let mut batch = Batch::new();
        let mut extra = Vec::new();
        let mut trimmed = false;
        let mut rules = 0;
        // The guard goes in with the first ADD that will turn route_localnet
        // on, in the same transaction; after that it is only read.
        if plan.localnet_container().is_some() {
            if whole_skeleton || !guard::guard_intact()? {
                guard::add_guard(&mut batch);
            } else {
                trimmed = true;
            }
        }
        for fam in &plan.families {
            if fam.dnats.is_empty() {
                continue;
            }
            let expected = expected_rules(fam)?;
            let earlier_known = earlier;
            let masquerade = !fam.masquerade.is_empty();
            let id = plan.key.container_id.as_str();
            let earlier: Vec<KernelRule> = match earlier_known {
                Some(known) => kernel::rules(fam.family, None)?
                    .into_iter()
                    .filter(|r| r.owner() == Some(id) && known.owns(r.target))
                    .collect(),
                None => Vec::new(),
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
            self.add_elements(fam, id, earlier_known, &mut extra)?;
        }
        Ok(AddBatch {
            batch,
            extra,
            trimmed,
            rules,
        })
    }
}
