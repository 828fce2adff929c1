//! DEL and GC: by the ADD's receipt when it holds, else from a dump of
//! the table per family; one transaction either way.

use super::kernel;
use super::kernel::KernelRule;
use super::render::rule_ref;
use super::table_ref;
use super::NftError;
use super::Nftables;
use crate::ClosedPort;
use crate::ContainerKey;
use crate::Family;
use crate::Known;
use crate::Receipt;
use nftables::batch::Batch;
use nftables::schema::NfListObject;
use std::collections::BTreeSet;

impl Nftables {
    /// DEL by a receipt: each rule fetched by its handle (one small request
    /// each) must still be this container's; then its rules go by handle,
    /// or the table with the last container. `None` when the receipt no
    /// longer holds (a reload, a restore, another binary): read it all.
    pub(super) fn del_by_receipt(
        &self,
        key: &ContainerKey,
        known: &Known,
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
                    Some(k) if k.owner() == Some(id) && known.owns(k.target) => found.push(k),
                    _ => return Ok(None),
                }
            }
            let handles: Vec<u32> = found.iter().map(|k| k.handle).collect();
            let last_out = !kernel::others_than(family, &handles)?;
            let found: Vec<&KernelRule> = found.iter().collect();
            closed.extend(delete(&mut batch, family, &found, last_out));
        }
        self.apply(batch, &format!("delete rules of container {id}"))?;
        Ok(Some(closed))
    }

    /// Deletes, in one transaction, every rule of ours `doomed` picks;
    /// returns the closed ports and container IDs. DEL picks one
    /// attachment's, GC those of the attachments it collects: one netlink
    /// dump per family (no process) either way, and no transaction when
    /// nothing is ours.
    pub(super) fn del_where(
        &self,
        doomed: impl Fn(&KernelRule) -> bool,
    ) -> Result<(Vec<ClosedPort>, BTreeSet<String>), NftError> {
        let mut batch = Batch::new();
        let mut closed = Vec::new();
        let mut ids = BTreeSet::new();
        for family in [Family::V4, Family::V6] {
            if self
                .tables_in
                .as_ref()
                .is_some_and(|t| !t.contains(&family))
            {
                continue;
            }
            let rules = kernel::rules(family, None)?;
            let (ours, others): (Vec<&KernelRule>, Vec<&KernelRule>) = rules
                .iter()
                .filter(|r| r.owner().is_some())
                .partition(|r| doomed(r));
            if ours.is_empty() {
                continue;
            }
            ids.extend(ours.iter().filter_map(|r| r.owner()).map(str::to_string));
            closed.extend(delete(&mut batch, family, &ours, others.is_empty()));
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
}

/// Adds to `batch` the deletion of `rules` by handle or, for the last
/// container out, of the whole table (in the same transaction); returns
/// the ports they mapped.
fn delete(
    batch: &mut Batch<'static>,
    family: Family,
    rules: &[&KernelRule],
    last_out: bool,
) -> Vec<ClosedPort> {
    if last_out {
        batch.delete(NfListObject::Table(table_ref(family)));
    } else {
        for r in rules {
            batch.delete(NfListObject::Rule(rule_ref(family, &r.chain, r.handle)));
        }
    }
    rules
        .iter()
        .filter_map(|r| r.port)
        .flat_map(|(protocol, first, last)| {
            (first..=last).map(move |host_port| ClosedPort {
                family,
                protocol,
                host_port,
            })
        })
        .collect()
}
