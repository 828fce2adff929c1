//! The maps layout read back: CHECK's index of one family's elements
//! (map and masquerade set) and `list`'s containers with their elements.

use super::maps::{expected_elements, Element, MAP};
use super::masq::{MasqElement, MasqIndex};
use super::HOSTPORTS;
use crate::plan::FamilyPlan;
use crate::{
    BackendKind, Family, InstalledContainer, InstalledMapping, InstalledOptions, Protocol,
};
use std::collections::BTreeMap;

/// One family's elements, by key and by owner, and its masquerade set
/// (CHECK of one plan or of every journaled one against one read).
#[derive(Debug, Default)]
pub(super) struct Elements {
    by_key: BTreeMap<(Protocol, u16), Element>,
    by_owner: BTreeMap<String, Vec<Element>>,
    lookup: bool,
    masq: MasqIndex,
}

impl Elements {
    pub(super) fn new(elements: Vec<Element>, lookup: bool, masq: MasqIndex) -> Elements {
        let mut index = Elements {
            lookup,
            masq,
            ..Elements::default()
        };
        for e in elements {
            if let Some(owner) = &e.owner {
                index
                    .by_owner
                    .entry(owner.clone())
                    .or_default()
                    .push(e.clone());
            }
            index.by_key.insert((e.protocol, e.port), e);
        }
        index
    }

    /// What of `fam`'s elements (container `id`) is missing, points
    /// elsewhere or is extra; `None` when exact. `table` names the table.
    pub(super) fn compare(&self, fam: &FamilyPlan, id: &str, table: &str) -> Option<String> {
        self.compare_map(fam, id, table)
            .or_else(|| self.masq.compare(fam, id, table))
    }

    fn compare_map(&self, fam: &FamilyPlan, id: &str, table: &str) -> Option<String> {
        let want = expected_elements(fam, id);
        if !want.is_empty() && !self.lookup {
            return Some(format!(
                "table {table}: chain {HOSTPORTS} lacks the lookup of map {MAP}"
            ));
        }
        for w in &want {
            match self.by_key.get(&(w.protocol, w.port)) {
                None => {
                    return Some(format!(
                        "table {table}: map {MAP} is missing the {} of container {id}",
                        w.describe()
                    ))
                }
                // A newer ADD's element for the key: shadowed, as a rule
                // behind a newer container's rule is (CHECK passes, and
                // a restore pass does not take the key back for the
                // older container, which would then flap between them).
                Some(e) if e.owner.as_ref().is_some_and(|o| o != id) => {}
                Some(e) if e != w => {
                    return Some(format!(
                    "table {table}: map {MAP} holds {} of container {} where container {id} has {}",
                    e.describe(),
                    e.owner.as_deref().unwrap_or("(none)"),
                    w.describe()
                ))
                }
                Some(_) => {}
            }
        }
        let own = self.by_owner.get(id).map(Vec::as_slice).unwrap_or_default();
        own.iter()
            .find(|e| e.addr == fam.container.addr && !want.contains(e))
            .map(|e| {
                format!(
                    "table {table}: map {MAP} has an unexpected {} for container {id}",
                    e.describe()
                )
            })
    }
}

/// `containers` (read from rules) with the mappings map elements hold
/// added to their owners (a container with elements only is listed too),
/// and snat for the owners of masquerade elements.
pub(super) fn with_elements(
    mut containers: Vec<InstalledContainer>,
    elements: &[(Family, Vec<Element>)],
    masq: &[MasqElement],
) -> Vec<InstalledContainer> {
    for (family, elements) in elements {
        for e in elements {
            let Some(owner) = &e.owner else { continue };
            let at = match containers.iter().position(|c| &c.container_id == owner) {
                Some(at) => at,
                None => {
                    containers.push(InstalledContainer {
                        backend: BackendKind::Nftables,
                        container_id: owner.clone(),
                        network: None,
                        mappings: Vec::new(),
                        options: InstalledOptions::default(),
                    });
                    containers.len() - 1
                }
            };
            if let Some(c) = containers.get_mut(at) {
                c.mappings.push(InstalledMapping {
                    family: *family,
                    protocol: e.protocol,
                    host_ip: None,
                    host_port: e.port,
                    container_ip: e.addr,
                    container_port: e.to_port,
                });
                c.options.map_elements = true;
            }
        }
    }
    for c in &mut containers {
        if masq
            .iter()
            .any(|e| e.owner.as_ref() == Some(&c.container_id))
        {
            c.options.snat = true;
            c.options.map_elements = true;
        }
        c.mappings.sort();
    }
    containers.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    containers
}
