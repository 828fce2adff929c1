//! The maps layout's masquerading: hairpin and localhost sources as
//! elements `saddr . daddr` of one set per family, matched by one
//! comment-less rule in `masquerading`. A rule per container there is
//! walked by every connection DNATed to any container (2 per container:
//! 1,000 containers cost a published port 1.5x). Each element carries the
//! container ID of its newest ADD, so a late DEL of an older container on
//! the same address leaves the newer one's; CHECK accepts any owner (the
//! element does the same whoever added it), DEL takes only its own.

use super::maps::{element_cmd, owned, unowned};
use super::nf_family_name;
use super::{MASQUERADING, TABLE};
use crate::nfnetlink::NetlinkError;
use crate::plan::{FamilyPlan, MasqSource};
use crate::Family;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// The set's name (one per family table, made with the map).
pub const MASQ_SET: &str = "hostports_masq";

/// One element: traffic from `saddr` to container `daddr` is masqueraded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct MasqElement {
    pub(super) saddr: IpAddr,
    pub(super) daddr: IpAddr,
    pub(super) owner: Option<String>,
}

impl MasqElement {
    fn key(&self) -> (IpAddr, IpAddr) {
        (self.saddr, self.daddr)
    }

    fn describe(&self) -> String {
        format!("element {} . {}", self.saddr, self.daddr)
    }
}

/// The elements `fam` (of container `id`) puts in its family's set.
pub(super) fn expected(fam: &FamilyPlan, id: &str) -> Vec<MasqElement> {
    let daddr = fam.container.addr;
    fam.masquerade_elements()
        .into_iter()
        .filter_map(|s| match s {
            MasqSource::Container => Some(daddr),
            MasqSource::Localhost => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            MasqSource::Any => None,
        })
        .map(|saddr| MasqElement {
            saddr,
            daddr,
            owner: Some(id.to_string()),
        })
        .collect()
}

/// The set's type in nft's text syntax (made with the map, maps.rs).
pub(super) fn set_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr . ipv4_addr",
        Family::V6 => "ipv6_addr . ipv6_addr",
    }
}

fn set_ref(family: Family) -> Value {
    json!({"family": nf_family_name(family), "table": TABLE, "name": MASQ_SET})
}

fn key(e: &MasqElement) -> Value {
    json!({"concat": [e.saddr.to_string(), e.daddr.to_string()]})
}

pub(super) fn add_cmd(family: Family, elems: &[MasqElement]) -> Value {
    let elem = elems.iter().map(|e| owned(key(e), e.owner.as_ref()));
    element_cmd("add", set_ref(family), elem.collect())
}

/// Deletes elements by key (callers pass only keys they read as theirs,
/// under the global lock).
pub(super) fn delete_cmd(family: Family, elems: &[MasqElement]) -> Value {
    element_cmd("delete", set_ref(family), elems.iter().map(key).collect())
}

pub(super) fn delete_set_cmd(family: Family) -> Value {
    json!({"delete": {"set": set_ref(family)}})
}

/// `ip saddr . ip daddr @hostports_masq masquerade`, appended to
/// `masquerading` with no comment: no container's DEL takes it.
pub(super) fn add_lookup(family: Family) -> Value {
    json!({"add": {"rule": {
        "family": nf_family_name(family),
        "table": TABLE,
        "chain": MASQUERADING,
        "expr": lookup_expr(family),
    }}})
}

/// The lookup rule's expressions, as nft also lists them.
pub(super) fn lookup_expr(family: Family) -> Value {
    let ipx = nf_family_name(family);
    let field = |f: &str| json!({"payload": {"protocol": ipx, "field": f}});
    json!([
        {"match": {"op": "==", "left": {"concat": [field("saddr"), field("daddr")]}, "right": format!("@{MASQ_SET}")}},
        {"masquerade": null},
    ])
}
/// Whether `<family> cni_hostport` has the set (one netlink request).
pub(super) fn has_set(family: Family) -> Result<bool, NetlinkError> {
    super::elements::has_set(family, MASQ_SET)
}

/// The set's elements, `None` when the family has no set.
pub(super) fn read(family: Family) -> Result<Option<Vec<MasqElement>>, NetlinkError> {
    if !has_set(family)? {
        return Ok(None);
    }
    super::elements::masq_elements(family).map(Some)
}

/// The elements of a listed `{"set": ...}` object (`None` for another set).
pub(super) fn parse_set(set: &Value) -> Option<Vec<MasqElement>> {
    if set.get("name")?.as_str()? != MASQ_SET {
        return None;
    }
    let elems = set.get("elem").and_then(Value::as_array);
    Some(elems.into_iter().flatten().filter_map(parse_elem).collect())
}

fn parse_elem(e: &Value) -> Option<MasqElement> {
    let (k, owner) = unowned(e)?;
    let [s, d] = k.get("concat")?.as_array()?.as_slice() else {
        return None;
    };
    Some(MasqElement {
        saddr: s.as_str()?.parse().ok()?,
        daddr: d.as_str()?.parse().ok()?,
        owner: owner.map(str::to_string),
    })
}

/// What ADD changes in the set for `want` (container `id`): the keys it
/// takes over (held by another owner: newest wins) and, for a re-ADD
/// (`own_earlier` tells its earlier addresses), its own it no longer
/// wants; then what is new.
pub(super) fn plan_changes(
    held: &[MasqElement],
    want: &[MasqElement],
    id: &str,
    own_earlier: &dyn Fn(IpAddr) -> bool,
) -> (Vec<MasqElement>, Vec<MasqElement>) {
    let wanted: BTreeSet<(IpAddr, IpAddr)> = want.iter().map(MasqElement::key).collect();
    let gone = held
        .iter()
        .filter(|e| {
            let key_wanted = wanted.contains(&e.key());
            let own = e.owner.as_deref() == Some(id) && own_earlier(e.daddr);
            (key_wanted && !want.contains(e)) || (own && !key_wanted)
        })
        .cloned()
        .collect();
    let new = want.iter().filter(|w| !held.contains(w)).cloned().collect();
    (gone, new)
}

/// One family's set, for CHECK: keys, each container's own, the lookup.
#[derive(Debug, Default)]
pub(super) struct MasqIndex {
    keys: BTreeSet<(IpAddr, IpAddr)>,
    by_owner: BTreeMap<String, Vec<MasqElement>>,
    lookup: bool,
}

impl MasqIndex {
    pub(super) fn new(elements: Vec<MasqElement>, lookup: bool) -> MasqIndex {
        let mut index = MasqIndex {
            lookup,
            ..MasqIndex::default()
        };
        for e in elements {
            index.keys.insert(e.key());
            if let Some(owner) = &e.owner {
                index.by_owner.entry(owner.clone()).or_default().push(e);
            }
        }
        index
    }

    /// What of `fam`'s masquerading (container `id`) is missing or extra.
    pub(super) fn compare(&self, fam: &FamilyPlan, id: &str, table: &str) -> Option<String> {
        let want = expected(fam, id);
        if !want.is_empty() && !self.lookup {
            return Some(format!(
                "table {table}: chain {MASQUERADING} lacks the lookup of set {MASQ_SET}"
            ));
        }
        if let Some(w) = want.iter().find(|w| !self.keys.contains(&w.key())) {
            return Some(format!(
                "table {table}: set {MASQ_SET} is missing the {} of container {id}",
                w.describe()
            ));
        }
        let own = self.by_owner.get(id).map(Vec::as_slice).unwrap_or_default();
        let wanted: BTreeSet<(IpAddr, IpAddr)> = want.iter().map(MasqElement::key).collect();
        own.iter()
            .find(|e| e.daddr == fam.container.addr && !wanted.contains(&e.key()))
            .map(|e| {
                format!(
                    "table {table}: set {MASQ_SET} has an unexpected {} for container {id}",
                    e.describe()
                )
            })
    }
}
