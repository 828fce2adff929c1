//! The opt-in port tree (`iptablesLayout: "tree"`, #24 item 3). Upstream's
//! layout gives every container an entry rule in `CNI-HOSTPORT-DNAT`, which
//! each new connection to a local address walks in turn; here single host
//! ports reach their container chain through chains keyed by the port's
//! hex digits, at most 16 rules a level over four levels:
//!
//! ```text
//! CNI-HOSTPORT-DNAT    -p tcp -j CNI-HOSTPORT-TCP                 (appended)
//! CNI-HOSTPORT-TCP     -p tcp -m tcp --dport 16384:20479 -j CNI-HOSTPORT-TCP-4
//! CNI-HOSTPORT-TCP-4   -p tcp -m tcp --dport 19968:20223 -j CNI-HOSTPORT-TCP-4E
//! CNI-HOSTPORT-TCP-4E  -p tcp -m tcp --dport 20000:20015 -j CNI-HOSTPORT-TCP-4E2
//! CNI-HOSTPORT-TCP-4E2 -p tcp -m tcp --dport 20000 -m comment --comment "dnat name: …" -j CNI-DN-…
//! ```
//!
//! Leaf rules carry the entry rule's comment and conditions and are
//! inserted on top (newest wins, as entry rules); runs of three or more
//! consecutive ports stay in an entry rule (one rule covers them). A chain
//! goes with its last rule. Upstream's DEL deletes jumps from
//! `CNI-HOSTPORT-DNAT` only, so it cannot delete a container chain a leaf
//! still jumps to: hence opt-in, with `portmap migrate --layout rules` back.

use crate::plan::{FamilyPlan, Plan};
use crate::{IptablesLayout, Protocol};

use super::rules::{self, DNAT_CHAIN};
use super::saved::SavedTable;

const TREE_PREFIX: &str = "CNI-HOSTPORT-";
const ROOTS: [&str; 3] = ["TCP", "UDP", "SCTP"];
/// Hex digits of a port a chain's name holds: root 0, leaf 3.
const LEAF_DEPTH: usize = 3;

/// The root chain of a protocol's tree.
pub fn root(proto: Protocol) -> String {
    format!("{TREE_PREFIX}{}", proto.as_str().to_uppercase())
}

/// The chain for the first `depth` hex digits of `port`.
fn node(proto: Protocol, port: u16, depth: usize) -> String {
    match depth {
        0 => root(proto),
        d => {
            let hex = format!("{port:04X}");
            format!("{}-{}", root(proto), &hex[..d])
        }
    }
}

pub fn leaf(proto: Protocol, port: u16) -> String {
    node(proto, port, LEAF_DEPTH)
}

/// How many hex digits the name of a tree chain holds; `None` for any
/// other chain.
fn depth(chain: &str) -> Option<usize> {
    let rest = chain.strip_prefix(TREE_PREFIX)?;
    let (proto, digits) = rest.split_once('-').unwrap_or((rest, ""));
    let hex = digits
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase());
    (ROOTS.contains(&proto) && hex && digits.len() <= LEAF_DEPTH).then_some(digits.len())
}

pub fn is_tree(chain: &str) -> bool {
    depth(chain).is_some()
}

pub fn is_leaf(chain: &str) -> bool {
    depth(chain) == Some(LEAF_DEPTH)
}

/// The chains above a tree chain, nearest first, the root last.
pub fn ancestors(chain: &str) -> Vec<String> {
    let mut up = Vec::new();
    let mut at = chain.to_string();
    while depth(&at).is_some_and(|d| d > 0) {
        at.pop();
        if at.ends_with('-') {
            at.pop();
        }
        up.push(at.clone());
    }
    up
}

/// The rules leading to `port`'s leaf, as `-A` lines, the root's jump first.
pub fn path_rules(proto: Protocol, port: u16) -> Vec<String> {
    let p = proto.as_str();
    let mut lines = vec![format!("-A {DNAT_CHAIN} -p {p} -j {}", root(proto))];
    for d in 1..=LEAF_DEPTH {
        let bits = 16 - 4 * d as u32;
        let first = (port >> bits) << bits;
        let last = first | ((1u16 << bits) - 1);
        lines.push(format!(
            "-A {} -p {p} -m {p} --dport {first}:{last} -j {}",
            node(proto, port, d - 1),
            node(proto, port, d)
        ));
    }
    lines
}

/// A protocol's host ports (config order) split into those entry rules
/// keep (runs of three or more adjacent consecutive ports, which one
/// multiport item covers) and those the tree takes (each once).
pub fn split(ports: &[u16]) -> (Vec<u16>, Vec<u16>) {
    let mut items: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match items.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(p) => *last = p,
            _ => items.push((p, p)),
        }
    }
    let (mut entry, mut tree) = (Vec::new(), Vec::new());
    for (first, last) in items {
        let run = first..=last;
        match last - first >= 2 {
            true => entry.extend(run),
            false => {
                for p in run {
                    if !tree.contains(&p) {
                        tree.push(p);
                    }
                }
            }
        }
    }
    (entry, tree)
}

/// The (protocol, port)s of `plan` the tree carries: none in the rules layout.
pub fn ports(plan: &Plan) -> Vec<(Protocol, u16)> {
    if plan.iptables_layout != IptablesLayout::Tree {
        return Vec::new();
    }
    plan.entry_ports
        .iter()
        .flat_map(|(proto, ports)| split(ports).1.into_iter().map(|p| (*proto, p)))
        .collect()
}

/// The leaf rules of a plan's family: (leaf chain, spec), spec without
/// its `-A CHAIN`.
pub fn leaf_specs(plan: &Plan, fam: &FamilyPlan) -> Vec<(String, String)> {
    let chain = rules::container_chain(&plan.key.network, &plan.key.container_id);
    let comment = rules::quote(&rules::entry_comment(
        &plan.key.network,
        &plan.key.container_id,
    ));
    let conditions: String = fam.conditions.iter().map(|c| format!("{c} ")).collect();
    ports(plan)
        .into_iter()
        .map(|(proto, port)| {
            let p = proto.as_str();
            let spec = format!(
                "-p {p} -m {p} --dport {port} -m comment --comment {comment} {conditions}-j {chain}"
            );
            (leaf(proto, port), spec)
        })
        .collect()
}

/// The lines deleting every tree chain `saved` holds that is left without
/// rules once `deleted` are gone and `added` are in, deepest first, each
/// with the rules jumping to it (recorded in `deleted`).
pub fn prune(
    saved: &SavedTable,
    deleted: &mut Vec<(String, String)>,
    added: &[(String, String)],
) -> Vec<String> {
    let mut tree: Vec<(usize, &String)> = saved
        .chains
        .iter()
        .filter_map(|c| Some((depth(c)?, c)))
        .collect();
    tree.sort_by(|a, b| b.cmp(a));
    let mut lines = Vec::new();
    for (_, chain) in tree {
        let gone = |c: &str, s: &str| deleted.iter().any(|(dc, ds)| dc == c && ds == s);
        let left = saved.rules_of(chain).iter().any(|spec| !gone(chain, spec))
            || added.iter().any(|(c, _)| c == chain);
        if left {
            continue;
        }
        let jumps: Vec<(String, String)> = saved
            .jumps_to(chain)
            .filter(|(from, spec)| !gone(from, spec))
            .map(|(from, spec)| (from.to_string(), spec.to_string()))
            .collect();
        for (from, spec) in jumps {
            lines.push(format!("-D {from} {spec}"));
            deleted.push((from, spec));
        }
        lines.push(format!("-X {chain}"));
    }
    lines
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
