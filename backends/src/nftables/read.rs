//! Reading our table back: `nft -j list table` per family, expressions
//! parsed only for the rules a command needs, and the rules turned back
//! into containers, mappings and options (`list`, `migrate`, DEL's
//! conntrack flush).

use super::maps::{lookup_dnat, parse_map, Element};
use super::maps_read::Elements;
use super::masq::{self, parse_set, MasqElement, MasqIndex};
use super::nf_family_name;
use super::owner;
use super::NftError;
use super::Nftables;
use super::Wanted;
use super::HOSTPORTS;
use super::MASQUERADING;
use super::TABLE;
use crate::exec;
use crate::BackendKind;
use crate::Family;
use crate::InstalledContainer;
use crate::InstalledMapping;
use crate::InstalledOptions;
use crate::Protocol;
use nftables::expr::Expression;
use nftables::expr::NamedExpression;
use nftables::expr::Payload;
use nftables::stmt::Match;
use nftables::stmt::Operator;
use nftables::stmt::Statement;
use nftables::stmt::NAT;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `nft -j list table` output, expressions left unparsed.
#[derive(serde::Deserialize)]
pub(super) struct ListedDoc<'a> {
    #[serde(borrow)]
    nftables: Vec<ListedItem<'a>>,
}

#[derive(serde::Deserialize)]
pub(super) struct ListedItem<'a> {
    #[serde(borrow, default)]
    rule: Option<ListedRule<'a>>,
    #[serde(default)]
    map: Option<serde_json::Value>,
    #[serde(default)]
    set: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
pub(super) struct ListedRule<'a> {
    chain: String,
    #[serde(default)]
    handle: u32,
    #[serde(default)]
    comment: Option<String>,
    #[serde(borrow)]
    expr: &'a serde_json::value::RawValue,
}

/// A rule as listed from the kernel; `expr` empty unless it was wanted.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) chain: String,
    pub(super) handle: u32,
    pub(super) comment: Option<String>,
    pub(super) expr: Vec<Statement<'static>>,
}

/// One family's listed table: rules, and the maps layout's elements (map
/// and masquerade set) and whether their lookup rules are there.
#[derive(Debug, Clone, Default)]
pub(super) struct Read {
    pub(super) rules: Vec<Listed>,
    pub(super) elements: Vec<Element>,
    pub(super) lookup: bool,
    pub(super) masq: Vec<MasqElement>,
    pub(super) masq_lookup: bool,
}

impl Read {
    /// The elements, indexed for CHECK (taken out of the read).
    pub(super) fn take_elements(&mut self) -> Elements {
        let masq = MasqIndex::new(std::mem::take(&mut self.masq), self.masq_lookup);
        Elements::new(std::mem::take(&mut self.elements), self.lookup, masq)
    }
}

impl Nftables {
    /// Lists the rules of `<family> cni_hostport` and its map; `None` when
    /// the table is missing. Only rules `wanted` (by chain and
    /// comment) get their expressions: parsing them is most of a read's
    /// cost with many containers, and most callers need few. The lookup
    /// rule is told by its map reference and left unparsed.
    pub(super) fn read_all(
        &self,
        family: Family,
        wanted: Wanted<'_>,
    ) -> Result<Option<Read>, NftError> {
        if self
            .tables_in
            .as_ref()
            .is_some_and(|f| !f.contains(&family))
        {
            return Ok(None);
        }
        let action = format!("list table {} {TABLE}", nf_family_name(family));
        let args = ["-j", "list", "table", nf_family_name(family), TABLE];
        let out = self.run(&args, None, exec::READ, &action)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NftError::Rejected { action, stderr });
        }
        let raw = String::from_utf8_lossy(&out.stdout);
        let doc: ListedDoc<'_> = serde_json::from_str(&raw)?;
        let mut read = Read::default();
        let mut rules = Vec::new();
        for item in doc.nftables {
            if let Some(elements) = item.map.as_ref().and_then(parse_map) {
                read.elements = elements;
            }
            if let Some(elements) = item.set.as_ref().and_then(parse_set) {
                read.masq = elements;
            }
            let Some(r) = item.rule else { continue };
            // Exactly the lookup rules we write (nft lists them as sent).
            let looks_up = |chain: &str, expr: serde_json::Value| {
                r.chain == chain
                    && r.comment.is_none()
                    && serde_json::from_str::<serde_json::Value>(r.expr.get()).ok() == Some(expr)
            };
            if looks_up(HOSTPORTS, json!([lookup_dnat(family)])) {
                read.lookup = true;
                continue;
            }
            if looks_up(MASQUERADING, masq::lookup_expr(family)) {
                read.masq_lookup = true;
                continue;
            }
            let expr = if wanted(&r.chain, r.comment.as_deref()) {
                serde_json::from_str(r.expr.get())?
            } else {
                Vec::new()
            };
            rules.push(Listed {
                chain: r.chain,
                handle: r.handle,
                comment: r.comment,
                expr,
            });
        }
        read.rules = rules;
        Ok(Some(read))
    }
}

/// The containers whose rules the listed tables hold.
pub(super) fn containers(tables: &[(Family, Vec<Listed>)]) -> Vec<InstalledContainer> {
    let mut by_id: BTreeMap<String, (Vec<InstalledMapping>, InstalledOptions)> = BTreeMap::new();
    for (family, rules) in tables {
        for r in rules {
            let Some(id) = owner(r).map(str::to_string) else {
                continue;
            };
            let (mappings, options) = by_id.entry(id).or_default();
            mappings.extend(parse_mapping(*family, r));
            read_options(r, options);
        }
    }
    by_id
        .into_iter()
        .map(|(container_id, (mut mappings, options))| {
            mappings.sort();
            InstalledContainer {
                backend: BackendKind::Nftables,
                container_id,
                network: None,
                mappings,
                options,
            }
        })
        .collect()
}

/// Reads a DNAT rule back into its mappings (a port range: one per port,
/// each to the same port); masquerade rules yield nothing.
pub(super) fn parse_mapping(family: Family, r: &Listed) -> Vec<InstalledMapping> {
    let mut protocol = None;
    let mut ports = None;
    let mut host_ip = None;
    let mut target = None;
    let port = |e: &Expression<'_>| match e {
        Expression::Number(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    for s in &r.expr {
        match s {
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
                right,
                op: Operator::EQ,
            }) => match (p.field.as_ref(), right) {
                ("dport", Expression::Number(_)) => {
                    protocol = Protocol::parse(&p.protocol);
                    ports = port(right).map(|n| (n, n));
                }
                ("dport", Expression::Range(range)) => {
                    protocol = Protocol::parse(&p.protocol);
                    let [a, b] = &range.range;
                    ports = port(a).zip(port(b)).filter(|(a, b)| a <= b);
                }
                ("daddr", Expression::String(a)) => host_ip = a.parse().ok(),
                _ => {}
            },
            Statement::DNAT(Some(NAT {
                addr: Some(Expression::String(a)),
                port: to,
                ..
            })) => {
                let Ok(addr) = a.parse::<IpAddr>() else {
                    return Vec::new();
                };
                // No port: the destination port is kept.
                target = match to {
                    None => Some((addr, None)),
                    Some(p) => port(p).map(|p| (addr, Some(p))),
                };
            }
            _ => {}
        }
    }
    let (Some((container_ip, container_port)), Some(protocol), Some(host_ports)) =
        (target, protocol, ports)
    else {
        return Vec::new();
    };
    crate::DnatRule {
        family,
        protocol,
        host_ip,
        host_ports,
        container_ip,
        container_port,
    }
    .mappings()
}

/// The container address a listed rule leads to (see `KernelRule::target`):
/// where its DNAT sends, or the destination its masquerade matches.
pub(super) fn listed_target(r: &Listed) -> Option<IpAddr> {
    r.expr.iter().find_map(|s| match s {
        Statement::DNAT(Some(NAT {
            addr: Some(Expression::String(a)),
            ..
        })) => a.parse().ok(),
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
            right: Expression::String(a),
            op: Operator::EQ,
        }) if r.chain == MASQUERADING && p.field == "daddr" => a.parse().ok(),
        _ => None,
    })
}

/// Adds what one rule says about snat, masqAll and conditions to `options`.
pub(super) fn read_options(r: &Listed, options: &mut InstalledOptions) {
    let payload_matches = r.expr.iter().filter_map(|s| match s {
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
            right,
            op,
        }) => Some((p.field.as_ref(), right, op)),
        _ => None,
    });
    if r.chain == MASQUERADING {
        options.snat = true;
        for (field, right, _) in payload_matches {
            if let ("saddr", Expression::Named(NamedExpression::Prefix(p))) = (field, right) {
                options.masq_all |= p.len == 0;
            }
        }
        return;
    }
    // A DNAT rule we write matches one dport and at most one daddr; any
    // other match came from the config's conditions.
    let ours = payload_matches
        .filter(|(field, _, op)| matches!(op, Operator::EQ) && matches!(*field, "dport" | "daddr"))
        .count();
    let all = r
        .expr
        .iter()
        .filter(|s| matches!(s, Statement::Match(_)))
        .count();
    options.conditions |= all > ours || ours > 2;
}
