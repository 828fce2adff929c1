//! DEL and GC: by the ADD's receipt when it holds, else from a dump of
//! the table per family; one transaction either way.

use super::kernel;
use super::kernel::KernelRule;
use super::maps::{delete_elements_cmd, retire, Element};
use super::masq::{self, MasqElement};
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
use std::net::IpAddr;

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
        let mut extra = Vec::new();
        let mut closed = Vec::new();
        let mine = |owner: &str, target: Option<IpAddr>| owner == id && known.owns(target);
        let elements = self.elements_where(&mine)?;
        let mut families: BTreeSet<Family> = receipt.rules.iter().map(|r| r.family).collect();
        families.extend(elements.iter().filter(|m| m.takes_any()).map(|m| m.family));
        for family in families {
            let mut found = Vec::new();
            for r in receipt.rules.iter().filter(|r| r.family == family) {
                match kernel::rule(family, &r.chain, r.handle)? {
                    Some(k) if k.owner() == Some(id) && known.owns(k.target) => found.push(k),
                    _ => return Ok(None),
                }
            }
            let handles: Vec<u32> = found.iter().map(|k| k.handle).collect();
            let map = elements.iter().find(|m| m.family == family);
            let last_out = !kernel::others_than(family, &handles)? && map.is_none_or(|m| !m.others);
            let found: Vec<&KernelRule> = found.iter().collect();
            let retire = !last_out && map.is_some_and(MapDel::empties);
            closed.extend(delete(
                &mut batch, &mut extra, family, &found, map, last_out,
            ));
            if retire {
                extra = retire_map(extra, family)?;
            }
        }
        self.apply_with(batch, extra, &format!("delete rules of container {id}"))?;
        Ok(Some(closed))
    }

    /// Deletes, in one transaction, every rule of ours `doomed` picks;
    /// returns the closed ports and container IDs. DEL picks one
    /// attachment's, GC those of the attachments it collects: one netlink
    /// dump per family (no process) either way, and no transaction when
    /// nothing is ours.
    pub(super) fn del_where(
        &self,
        doomed: Doomed<'_>,
    ) -> Result<(Vec<ClosedPort>, BTreeSet<String>), NftError> {
        let mut batch = Batch::new();
        let mut extra = Vec::new();
        let mut closed = Vec::new();
        let mut ids = BTreeSet::new();
        let elements = self.elements_where(doomed)?;
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
                .partition(|r| r.owner().is_some_and(|o| doomed(o, r.target)));
            let map = elements.iter().find(|m| m.family == family);
            if ours.is_empty() && !map.is_some_and(MapDel::takes_any) {
                continue;
            }
            ids.extend(ours.iter().filter_map(|r| r.owner()).map(str::to_string));
            if let Some(m) = map {
                ids.extend(m.ours.iter().filter_map(|e| e.owner.clone()));
                ids.extend(m.masq_ours.iter().filter_map(|e| e.owner.clone()));
            }
            let last_out = others.is_empty() && map.is_none_or(|m| !m.others);
            closed.extend(delete(&mut batch, &mut extra, family, &ours, map, last_out));
            if !last_out && map.is_some_and(MapDel::empties) {
                extra = retire_map(extra, family)?;
            }
        }
        if !ids.is_empty() {
            let names: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.apply_with(
                batch,
                extra,
                &format!("delete rules of container {}", names.join(", ")),
            )?;
        }
        Ok((closed, ids))
    }
}

/// `extra` with the family's element deletions replaced by the removal
/// of the map and set they empty (and their lookup rules); unchanged
/// where another rule names them (maps.rs `retire`).
fn retire_map(
    extra: Vec<serde_json::Value>,
    family: Family,
) -> Result<Vec<serde_json::Value>, NftError> {
    let Some(retired) = retire(family)? else {
        return Ok(extra);
    };
    let mine = delete_elements_cmd(family, &[]);
    let same_map = |c: &serde_json::Value| {
        c.pointer("/delete/element/family") == mine.pointer("/delete/element/family")
    };
    let mut kept: Vec<serde_json::Value> = extra.into_iter().filter(|c| !same_map(c)).collect();
    kept.extend(retired);
    Ok(kept)
}

/// Which (owner, target) of ours a DEL or GC takes: rules and elements alike.
pub(super) type Doomed<'d> = &'d dyn Fn(&str, Option<IpAddr>) -> bool;

/// One family's map and masquerade set as a DEL sees them: the elements
/// it takes, and whether any other stays (then the table stays too).
pub(super) struct MapDel {
    family: Family,
    ours: Vec<Element>,
    masq_ours: Vec<MasqElement>,
    others: bool,
}

impl MapDel {
    fn takes_any(&self) -> bool {
        !self.ours.is_empty() || !self.masq_ours.is_empty()
    }

    /// Whether it takes the last elements (the layout then goes).
    fn empties(&self) -> bool {
        !self.others && self.takes_any()
    }
}

impl Nftables {
    /// Per family holding our map, the elements `doomed` picks (by the
    /// owner each carries and where it leads).
    fn elements_where(&self, doomed: Doomed<'_>) -> Result<Vec<MapDel>, NftError> {
        let mut found = Vec::new();
        for family in [Family::V4, Family::V6] {
            let (map, set) = (self.read_map(family)?, self.read_masq(family)?);
            if map.is_none() && set.is_none() {
                continue;
            }
            let elements = map.unwrap_or_default();
            let (ours, others): (Vec<Element>, Vec<Element>) = elements
                .into_iter()
                .partition(|e| e.owner.as_deref().is_some_and(|o| doomed(o, Some(e.addr))));
            let masq = set.unwrap_or_default();
            let (masq_ours, masq_others): (Vec<MasqElement>, Vec<MasqElement>) = masq
                .into_iter()
                .partition(|e| e.owner.as_deref().is_some_and(|o| doomed(o, Some(e.daddr))));
            found.push(MapDel {
                family,
                ours,
                masq_ours,
                others: !others.is_empty() || !masq_others.is_empty(),
            });
        }
        Ok(found)
    }
}

/// Adds to `batch` the deletion of `rules` by handle (and to `extra` of
/// the elements `map` takes, by key) or, for the last container out, of
/// the whole table (in the same transaction); returns the ports they mapped.
fn delete(
    batch: &mut Batch<'static>,
    extra: &mut Vec<serde_json::Value>,
    family: Family,
    rules: &[&KernelRule],
    map: Option<&MapDel>,
    last_out: bool,
) -> Vec<ClosedPort> {
    let elements = map.map(|m| m.ours.as_slice()).unwrap_or_default();
    let masq_elements = map.map(|m| m.masq_ours.as_slice()).unwrap_or_default();
    if last_out {
        batch.delete(NfListObject::Table(table_ref(family)));
    } else {
        for r in rules {
            batch.delete(NfListObject::Rule(rule_ref(family, &r.chain, r.handle)));
        }
        if !elements.is_empty() {
            extra.push(delete_elements_cmd(family, elements));
        }
        if !masq_elements.is_empty() {
            extra.push(masq::delete_cmd(family, masq_elements));
        }
    }
    let element_ports = elements.iter().map(|e| ClosedPort {
        family,
        protocol: e.protocol,
        host_port: e.port,
    });
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
        .chain(element_ports)
        .collect()
}
