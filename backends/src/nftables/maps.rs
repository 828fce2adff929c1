//! The opt-in maps layout (`nftablesLayout: "maps"`): single-port
//! mappings as elements of one map per family, looked up by one
//! comment-less rule at the end of `hostports` (rules inserted at its head
//! stay in front). Each element carries its container ID as comment, so
//! DEL removes only its own keys and a newer container's element for the
//! same key survives an older one's late DEL. Written as raw nft JSON: the
//! nftables crate has no element comments. Masquerading goes in a set made
//! with the map (masq.rs); the two go, with their lookups, when both empty.

use super::kernel::{self, Shape};
use super::masq::{self, MasqElement};
use super::nf_family_name;
use super::NftError;
use super::Nftables;
use super::HOSTPORTS;
use super::MASQUERADING;
use super::TABLE;
use super::TABLE_COMMENT;
use crate::exec;
use crate::nfnetlink::NetlinkError;
use crate::plan::FamilyPlan;
use crate::{Family, Known, Protocol};
use serde_json::{json, Value};

use std::net::IpAddr;

/// The map's name (one per family table).
pub const MAP: &str = "hostports_map";

/// One map element: `protocol . port : addr . to_port`, owned by `owner`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Element {
    pub(super) protocol: Protocol,
    pub(super) port: u16,
    pub(super) addr: IpAddr,
    pub(super) to_port: u16,
    pub(super) owner: Option<String>,
}

impl Element {
    pub(super) fn same_key(&self, other: &Element) -> bool {
        (self.protocol, self.port) == (other.protocol, other.port)
    }

    pub(super) fn describe(&self) -> String {
        let to = std::net::SocketAddr::new(self.addr, self.to_port);
        format!("element {} . {} : {to}", self.protocol.as_str(), self.port)
    }
}

/// The elements `fam` (of container `id`) puts in its family's map.
pub(super) fn expected_elements(fam: &FamilyPlan, id: &str) -> Vec<Element> {
    fam.element_runs()
        .into_iter()
        .map(|r| Element {
            protocol: r.protocol,
            port: r.first,
            addr: fam.container.addr,
            to_port: r.container_port,
            owner: Some(id.to_string()),
        })
        .collect()
}

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn map_ref(family: Family) -> Value {
    json!({"family": nf_family_name(family), "table": TABLE, "name": MAP})
}

/// Its lookup rule, appended: after every rule of `hostports`, and with no
/// comment, so no container's DEL (ours or upstream's) takes it.
pub(super) fn add_lookup(family: Family) -> Value {
    json!({"add": {"rule": {
        "family": nf_family_name(family),
        "table": TABLE,
        "chain": HOSTPORTS,
        "expr": [lookup_dnat(family)],
    }}})
}

/// `dnat ip to meta l4proto . th dport map @hostports_map`, as nft lists it.
pub(super) fn lookup_dnat(family: Family) -> Value {
    json!({"dnat": {
        "family": nf_family_name(family),
        "addr": {"map": {
            "key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]},
            "data": format!("@{MAP}"),
        }},
    }})
}

fn key(e: &Element) -> Value {
    json!({"concat": [e.protocol.as_str(), e.port]})
}

/// A key with its owner as comment (nft JSON's element form).
pub(super) fn owned(key: Value, owner: Option<&String>) -> Value {
    match owner {
        Some(id) => json!({"elem": {"val": key, "comment": id}}),
        None => key,
    }
}

/// [`owned`] read back: an element's key and its owner's comment, if any.
pub(super) fn unowned(elem: &Value) -> Option<(&Value, Option<&str>)> {
    match elem.get("elem") {
        Some(e) => Some((e.get("val")?, e.get("comment").and_then(Value::as_str))),
        None => Some((elem, None)),
    }
}

/// `{"<verb>": {"element": <set> + elem}}`: elements added to or deleted
/// from the map or set `set` (a `map_ref`-shaped object).
pub(super) fn element_cmd(verb: &str, mut set: Value, elem: Vec<Value>) -> Value {
    set["elem"] = Value::Array(elem);
    json!({ verb: {"element": set} })
}

pub(super) fn add_elements_cmd(family: Family, elems: &[Element]) -> Value {
    let elem = elems.iter().map(|e| {
        let value = json!({"concat": [e.addr.to_string(), e.to_port]});
        json!([owned(key(e), e.owner.as_ref()), value])
    });
    element_cmd("add", map_ref(family), elem.collect())
}

/// Deletes elements by key (the kernel deletes whatever value it holds:
/// callers only pass keys they read as theirs, under the global lock).
pub(super) fn delete_elements_cmd(family: Family, elems: &[Element]) -> Value {
    element_cmd("delete", map_ref(family), elems.iter().map(key).collect())
}

/// The elements of a listed `{"map": ...}` object of ours (`None` for
/// another set or map).
pub(super) fn parse_map(map: &Value) -> Option<Vec<Element>> {
    if map.get("name")?.as_str()? != MAP {
        return None;
    }
    let elems = map.get("elem").and_then(Value::as_array);
    Some(
        elems
            .into_iter()
            .flatten()
            .filter_map(parse_element)
            .collect(),
    )
}

fn parse_element(pair: &Value) -> Option<Element> {
    let [k, v] = pair.as_array()?.as_slice() else {
        return None;
    };
    let (k, owner) = unowned(k)?;
    let pair = |c: &Value| -> Option<(Value, u16)> {
        let [a, b] = c.get("concat")?.as_array()?.as_slice() else {
            return None;
        };
        Some((a.clone(), u16::try_from(b.as_u64()?).ok()?))
    };
    let (protocol, port) = pair(k)?;
    let (addr, to_port) = pair(v)?;
    Some(Element {
        protocol: Protocol::parse(protocol.as_str()?)?,
        port,
        addr: addr.as_str()?.parse().ok()?,
        to_port,
        owner: owner.map(str::to_string),
    })
}

/// Removes the map, the masquerade set and their lookup rules (neither
/// holds an element any more): the layout leaves nothing behind that
/// upstream's binary could not remove, and `portmap status` stops warning.
/// `None` while another rule names the map or set: the kernel would refuse
/// the delete (EBUSY) and fail the DEL with it, every retry; the layout
/// then stays, empty, and the DEL deletes elements only.
pub(super) fn retire(family: Family) -> Result<Option<Vec<Value>>, NftError> {
    let rules = kernel::rules(family, None)?;
    let ours = |r: &kernel::KernelRule| {
        (r.chain == HOSTPORTS && r.shape == Shape::MapLookup)
            || (r.chain == MASQUERADING && r.shape == Shape::MasqLookup)
    };
    let held = rules
        .iter()
        .any(|r| !ours(r) && r.sets.iter().any(|s| s == MAP || s == masq::MASQ_SET));
    if held {
        return Ok(None);
    }
    let mut cmds: Vec<Value> = rules
        .iter()
        .filter(|r| ours(r))
        .map(|r| {
            json!({"delete": {"rule": {
                "family": nf_family_name(family), "table": TABLE, "chain": r.chain, "handle": r.handle,
            }}})
        })
        .collect();
    cmds.push(json!({"delete": {"map": map_ref(family)}}));
    if masq::has_set(family)? {
        cmds.push(masq::delete_set_cmd(family));
    }
    Ok(Some(cmds))
}

fn has_lookup(family: Family, chain: &str, shape: Shape) -> Result<bool, NftError> {
    Ok(kernel::rules(family, Some(chain))?
        .iter()
        .any(|r| r.shape == shape))
}

/// Whether `<family> cni_hostport` has our map (one netlink request).
pub(super) fn has_map(family: Family) -> Result<bool, NetlinkError> {
    super::elements::has_set(family, MAP)
}

impl Nftables {
    /// ADD's map commands for `fam` (container `id`): the map and lookup
    /// where missing, the keys it takes over deleted (an older container's
    /// element for the same key: newest wins) and, for a re-ADD (`earlier`),
    /// its own elements it no longer wants; then its new elements.
    pub(super) fn add_elements(
        &self,
        fam: &FamilyPlan,
        id: &str,
        earlier: Option<&Known>,
        extra: &mut Vec<Value>,
    ) -> Result<(), NftError> {
        let want = expected_elements(fam, id);
        let want_masq = masq::expected(fam, id);
        if want.is_empty() && want_masq.is_empty() && earlier.is_none() {
            return Ok(());
        }
        let family = fam.family;
        let current = self.read_map(family)?;
        // Read apart from the map: a set left without it (damage) still
        // has owners to take keys from.
        let current_masq = self.read_masq(family)?;
        let own_earlier = |addr: IpAddr| earlier.is_some_and(|k| k.owns(Some(addr)));
        let stale = |e: &Element| {
            let key_wanted = want.iter().any(|w| w.same_key(e));
            let own = e.owner.as_deref() == Some(id) && own_earlier(e.addr);
            (key_wanted && !want.contains(e)) || (own && !key_wanted)
        };
        let held = current.as_deref().unwrap_or_default();
        let gone: Vec<Element> = held.iter().filter(|e| stale(e)).cloned().collect();
        let new: Vec<Element> = want.iter().filter(|w| !held.contains(w)).cloned().collect();
        let held_masq = current_masq.as_deref().unwrap_or_default();
        let (gone_masq, new_masq) = masq::plan_changes(held_masq, &want_masq, id, &own_earlier);
        if !want.is_empty() || !want_masq.is_empty() {
            if current.is_none() || current_masq.is_none() {
                self.create_layout(family)?;
            }
            if current.is_none() || !has_lookup(family, HOSTPORTS, Shape::MapLookup)? {
                extra.push(add_lookup(family));
            }
            if !want_masq.is_empty()
                && (current_masq.is_none() || !has_lookup(family, MASQUERADING, Shape::MasqLookup)?)
            {
                extra.push(masq::add_lookup(family));
            }
        }
        let empties = |gone: usize, new: usize, held: usize| new == 0 && gone == held;
        if current.is_some()
            && empties(gone.len(), new.len(), held.len())
            && empties(gone_masq.len(), new_masq.len(), held_masq.len())
        {
            if let Some(retired) = retire(family)? {
                extra.extend(retired);
                return Ok(());
            }
        }
        if !gone.is_empty() {
            extra.push(delete_elements_cmd(family, &gone));
        }
        if !gone_masq.is_empty() {
            extra.push(masq::delete_cmd(family, &gone_masq));
        }
        if !new.is_empty() {
            extra.push(add_elements_cmd(family, &new));
        }
        if !new_masq.is_empty() {
            extra.push(masq::add_cmd(family, &new_masq));
        }
        Ok(())
    }

    /// Creates the (empty) map and masquerade set, and the table and chain
    /// they need, in a transaction of its own before ADD's: nft 1.0.6's
    /// JSON input cannot declare a map whose values are a concatenation
    /// (it makes a set), its text syntax can. Empty and not yet looked
    /// up, they change no packet's fate; ADD's transaction then adds the
    /// lookups and elements. `add` of what exists changes nothing.
    fn create_layout(&self, family: Family) -> Result<(), NftError> {
        let fam = nf_family_name(family);
        let text = format!(
            "add table {fam} {TABLE} {{ comment \"{TABLE_COMMENT}\"; }}\n\
             add chain {fam} {TABLE} {HOSTPORTS}\n\
             add map {fam} {TABLE} {MAP} {{ type inet_proto . inet_service : {} . inet_service; }}\n\
             add set {fam} {TABLE} {} {{ type {}; }}\n",
            addr_type(family),
            masq::MASQ_SET,
            masq::set_type(family),
        );
        let action = format!("create map {fam} {TABLE} {MAP}");
        let out = self.run(&["-f", "-"], Some(&text), exec::NFT_APPLY, &action)?;
        if !out.status.success() {
            return Err(NftError::Rejected {
                action,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// The masquerade set's elements over netlink; `None` when the family
    /// has no set.
    pub(super) fn read_masq(&self, family: Family) -> Result<Option<Vec<MasqElement>>, NftError> {
        if self
            .tables_in
            .as_ref()
            .is_some_and(|f| !f.contains(&family))
        {
            return Ok(None);
        }
        Ok(masq::read(family)?)
    }

    /// The map's elements, over netlink (elements.rs: no process); `None`
    /// when the family has no map.
    pub(super) fn read_map(&self, family: Family) -> Result<Option<Vec<Element>>, NftError> {
        if self
            .tables_in
            .as_ref()
            .is_some_and(|f| !f.contains(&family))
            || !has_map(family)?
        {
            return Ok(None);
        }
        Ok(Some(super::elements::elements(family)?))
    }
}
