//! iptables-nft's nat table read over netlink, for a restore pass's check:
//! one rule dump per family (`iptables-nft-save` asks the kernel once per
//! chain: 219 requests at 200 containers), each rule rendered as
//! iptables-nft-save prints it. Only what we install is rendered: a rule
//! of any other shape in a chain the check reads (or jumping into one of
//! a container's chains) makes the read `None`, and the caller runs
//! iptables-nft-save as before. Rules of other chains that jump elsewhere
//! are left out, as the indexed check leaves them out (check.rs). The
//! native expressions are read here, the xt matches and targets in xt.rs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::check::{per_container, read_by_check};
use super::rules::is_ours;
use super::saved::SavedTable;
use super::xt::{mark_text, xt_match, xt_target};
use crate::nfnetlink::{self, attr, attrs, nfproto, nul_terminated, string};
use crate::nftables::decode::{exprs, verdict, Expr};
use crate::nftables::uapi::*;
use crate::Family;

const NAT: &str = "nat";
const BUILTIN: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

/// `family`'s nat table as iptables-nft-save would print the chains a
/// check reads; `None` when any of it is not ours to render, the kernel
/// does not answer, or a commit came between the chain and rule dumps.
pub(super) fn read_nat(family: Family) -> Option<SavedTable> {
    let before = nfnetlink::generation().ok()?;
    let chains = nfnetlink::chains(family, NAT).ok()?;
    let mut dumped: Vec<(String, Vec<u8>, bool)> = Vec::new();
    let mut elsewhere = false;
    let named = attr(NFTA_RULE_TABLE, &nul_terminated(NAT));
    nfnetlink::dump(NFT_MSG_GETRULE, nfproto(family), &named, &mut |body| {
        let (mut chain, mut list, mut udata) = (String::new(), Vec::new(), false);
        for (kind, value) in attrs(body.get(4..).unwrap_or_default()) {
            match kind {
                NFTA_RULE_TABLE => elsewhere |= string(value) != NAT,
                NFTA_RULE_CHAIN => chain = string(value),
                NFTA_RULE_EXPRESSIONS => list = value.to_vec(),
                // iptables-nft-save prints a user-data comment as a match.
                NFTA_RULE_USERDATA => udata = true,
                _ => {}
            }
        }
        dumped.push((chain, list, udata));
    })
    .ok()?;
    if elsewhere || nfnetlink::generation().ok()? != before {
        return None;
    }
    let mut table = SavedTable {
        chains,
        ..SavedTable::default()
    };
    // iptables-nft-save declares the built-in chains, made or not.
    for builtin in BUILTIN {
        if !table.has_chain(builtin) {
            table.chains.push(builtin.to_string());
        }
    }
    for (chain, list, udata) in dumped {
        let list = exprs(&list);
        if !read_by_check(&chain) && !jump_target(&list).is_some_and(|c| per_container(&c)) {
            continue;
        }
        let Some(spec) = (!udata).then(|| render(family, &list)).flatten() else {
            // In the built-in chains the check looks only for our jumps: a
            // rule jumping nowhere of ours (Docker's MASQUERADE, say) is
            // none of ours in any encoding. Anywhere else: the save.
            if BUILTIN.contains(&chain.as_str()) && !jump_target(&list).is_some_and(|c| is_ours(&c))
            {
                continue;
            }
            return None;
        };
        table.rules.entry(chain).or_default().push(spec);
    }
    Some(table)
}

/// The chain a rule's verdict jumps or goes to.
fn jump_target(list: &[Expr<'_>]) -> Option<String> {
    match verdict(list.last()?)? {
        (NFT_JUMP | NFT_GOTO, chain) => chain,
        _ => None,
    }
}

/// What iptables-save prints before the matches, and the matches.
#[derive(Default)]
struct Rule {
    source: Option<String>,
    destination: Option<String>,
    protocol: Option<String>,
    matches: Vec<String>,
    target: Option<String>,
}

/// A rule's spec as iptables-nft-save prints it (`-s`, `-d`, `-p`, the
/// matches in order, the target), or `None` for anything else.
fn render(family: Family, list: &[Expr<'_>]) -> Option<String> {
    let mut rule = Rule::default();
    let mut at = 0;
    while let Some(e) = list.get(at) {
        if rule.target.is_some() {
            return None;
        }
        at += 1;
        match e.name() {
            "counter" => {}
            "immediate" => rule.target = Some(verdict_text(e)?),
            "target" => rule.target = Some(xt_target(family, e)?),
            "match" => rule.matches.push(xt_match(e)?),
            "meta" | "payload" => at += loaded(family, &list[at - 1..], &mut rule)?,
            _ => return None,
        }
    }
    let mut words = Vec::new();
    for (flag, value) in [
        ("-s", rule.source),
        ("-d", rule.destination),
        ("-p", rule.protocol),
    ] {
        if let Some(v) = value {
            words.push(match v.strip_prefix("! ") {
                Some(v) => format!("! {flag} {v}"),
                None => format!("{flag} {v}"),
            });
        }
    }
    words.extend(rule.matches);
    words.extend(rule.target);
    Some(words.join(" "))
}

/// A load (`list[0]`, meta or payload) and the expressions that test it,
/// into `rule`: how many expressions after the load it took.
fn loaded(family: Family, list: &[Expr<'_>], rule: &mut Rule) -> Option<usize> {
    let load = list.first()?;
    let next = list.get(1)?;
    if load.name() == "meta" {
        only(load, &[NFTA_META_DREG, NFTA_META_KEY])?;
        let reg = load.be32(NFTA_META_DREG)?;
        return match load.be32(NFTA_META_KEY)? {
            NFT_META_L4PROTO => {
                protocol(next, reg, rule)?;
                Some(1)
            }
            NFT_META_MARK => {
                let mask = masked(next, reg, 4)?;
                let (negated, value) = compared(list.get(2)?, reg)?;
                // The mark register holds host byte order (payloads: network).
                let (mark, mask) = (ne_u32(value, 0)?, ne_u32(&mask, 0)?);
                if value.len() != 4 || negated || mark & !mask != 0 {
                    return None;
                }
                rule.matches
                    .push(format!("-m mark --mark {}", mark_text(mark, mask)));
                Some(2)
            }
            _ => None,
        };
    }
    only(
        load,
        &[
            NFTA_PAYLOAD_DREG,
            NFTA_PAYLOAD_BASE,
            NFTA_PAYLOAD_OFFSET,
            NFTA_PAYLOAD_LEN,
        ],
    )?;
    let reg = load.be32(NFTA_PAYLOAD_DREG)?;
    let offset = load.be32(NFTA_PAYLOAD_OFFSET)?;
    let len = usize::try_from(load.be32(NFTA_PAYLOAD_LEN)?).ok()?;
    match load.be32(NFTA_PAYLOAD_BASE)? {
        // IPv4's protocol field (iptables 1.8.11; earlier: meta l4proto).
        NFT_PAYLOAD_NETWORK_HEADER if family == Family::V4 && offset == 9 && len == 1 => {
            protocol(next, reg, rule)?;
            Some(1)
        }
        NFT_PAYLOAD_NETWORK_HEADER => {
            let (source, destination, full) = match family {
                Family::V4 => (12, 16, 4),
                Family::V6 => (8, 24, 16),
            };
            if len == 0 || len > full {
                return None;
            }
            let (mask, cmp, used) = match next.name() {
                "bitwise" => (Some(masked(next, reg, len)?), list.get(2)?, 2),
                _ => (None, next, 1),
            };
            let (negated, value) = compared(cmp, reg)?;
            if value.len() != len {
                return None;
            }
            let text = negate(negated, prefix_text(family, value, mask.as_deref(), full)?);
            match offset {
                o if o == source => set_once(&mut rule.source, text)?,
                o if o == destination => set_once(&mut rule.destination, text)?,
                _ => return None,
            }
            Some(used)
        }
        NFT_PAYLOAD_TRANSPORT_HEADER if offset == 2 && len == 2 => {
            let proto = rule.protocol.clone().filter(|p| p == "tcp" || p == "udp")?;
            let (ports, used) = port_range(&list[1..], reg)?;
            rule.matches.push(format!("-m {proto} --dport {ports}"));
            Some(used)
        }
        _ => None,
    }
}

/// `-p <name>` from the compare of a loaded protocol number.
fn protocol(cmp: &Expr<'_>, reg: u32, rule: &mut Rule) -> Option<()> {
    let (negated, value) = compared(cmp, reg)?;
    let name = match value {
        [6] => "tcp",
        [17] => "udp",
        [132] => "sctp",
        _ => return None,
    };
    set_once(&mut rule.protocol, negate(negated, name.to_string()))
}

/// `N` (one cmp eq), or `A:B` (a range eq, or cmp gte then cmp lte; a
/// range from 0 is a cmp lte alone, one to 65535 a cmp gte alone: the
/// port tree's first and last nodes).
fn port_range(list: &[Expr<'_>], reg: u32) -> Option<(String, usize)> {
    let first = list.first()?;
    if first.name() == "range" {
        only(
            first,
            &[
                NFTA_RANGE_SREG,
                NFTA_RANGE_OP,
                NFTA_RANGE_FROM_DATA,
                NFTA_RANGE_TO_DATA,
            ],
        )?;
        if first.be32(NFTA_RANGE_SREG)? != reg || first.be32(NFTA_RANGE_OP)? != NFT_RANGE_EQ {
            return None;
        }
        let from = be_u16(first.value(NFTA_RANGE_FROM_DATA)?)?;
        let to = be_u16(first.value(NFTA_RANGE_TO_DATA)?)?;
        return port_text(from, to).map(|t| (t, 1));
    }
    let (op, bound) = compared_op(first, reg, &[NFT_CMP_EQ, NFT_CMP_GTE, NFT_CMP_LTE])?;
    let bound = be_u16(bound)?;
    match op {
        NFT_CMP_EQ => Some((bound.to_string(), 1)),
        NFT_CMP_LTE => port_text(0, bound).map(|t| (t, 1)),
        _ => match list
            .get(1)
            .and_then(|e| compared_op(e, reg, &[NFT_CMP_LTE]))
        {
            Some((_, high)) => port_text(bound, be_u16(high)?).map(|t| (t, 2)),
            None => port_text(bound, u16::MAX).map(|t| (t, 1)),
        },
    }
}

/// `A:B`; iptables prints no port for the whole range (none of ours).
pub(super) fn port_text(from: u16, to: u16) -> Option<String> {
    (from != 0 || to != u16::MAX).then(|| format!("{from}:{to}"))
}

/// A cmp eq or neq of register `reg`: whether negated, and its value.
fn compared<'e>(e: &'e Expr<'_>, reg: u32) -> Option<(bool, &'e [u8])> {
    let (op, value) = compared_op(e, reg, &[NFT_CMP_EQ, NFT_CMP_NEQ])?;
    Some((op == NFT_CMP_NEQ, value))
}

fn compared_op<'e>(e: &'e Expr<'_>, reg: u32, ops: &[u32]) -> Option<(u32, &'e [u8])> {
    if e.name() != "cmp" {
        return None;
    }
    only(e, &[NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA])?;
    let op = e.be32(NFTA_CMP_OP)?;
    (e.be32(NFTA_CMP_SREG)? == reg && ops.contains(&op)).then_some((op, e.value(NFTA_CMP_DATA)?))
}

/// The mask of a bitwise `reg = reg & mask ^ 0` over `len` bytes.
fn masked(e: &Expr<'_>, reg: u32, len: usize) -> Option<Vec<u8>> {
    if e.name() != "bitwise" {
        return None;
    }
    only(
        e,
        &[
            NFTA_BITWISE_SREG,
            NFTA_BITWISE_DREG,
            NFTA_BITWISE_LEN,
            NFTA_BITWISE_MASK,
            NFTA_BITWISE_XOR,
            NFTA_BITWISE_OP,
        ],
    )?;
    let mask = e.value(NFTA_BITWISE_MASK)?;
    let xor = e.value(NFTA_BITWISE_XOR)?;
    let plain = e.be32(NFTA_BITWISE_OP).is_none_or(|op| op == 0);
    let ok = plain
        && e.be32(NFTA_BITWISE_SREG)? == reg
        && e.be32(NFTA_BITWISE_DREG)? == reg
        && usize::try_from(e.be32(NFTA_BITWISE_LEN)?).ok()? == len
        && mask.len() == len
        && xor.len() == len
        && xor.iter().all(|b| *b == 0);
    ok.then(|| mask.to_vec())
}

/// `address/prefix` of a compared value (`mask`: its bitwise mask).
fn prefix_text(family: Family, value: &[u8], mask: Option<&[u8]>, full: usize) -> Option<String> {
    let bits = match mask {
        None => value.len() * 8,
        Some(mask) => {
            let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
            let contiguous = mask
                .iter()
                .enumerate()
                .all(|(i, b)| *b == prefix_byte(ones, i));
            if !contiguous || value.iter().zip(mask).any(|(v, m)| v & !m != 0) {
                return None;
            }
            usize::try_from(ones).ok()?
        }
    };
    // iptables prints no `-s`/`-d` for /0.
    if bits == 0 {
        return None;
    }
    let mut bytes = value.to_vec();
    bytes.resize(full, 0);
    let address = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        Family::V6 => IpAddr::V6(ipv6(<[u8; 16]>::try_from(bytes).ok()?)?),
    };
    Some(format!("{address}/{bits}"))
}

/// Byte `i` of a mask of `ones` leading one bits.
fn prefix_byte(ones: u32, i: usize) -> u8 {
    let before = u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(8);
    match ones.saturating_sub(before) {
        0 => 0,
        n if n >= 8 => 0xff,
        n => 0xffu8 << (8 - n),
    }
}

/// An IPv6 address Rust prints as glibc's inet_ntop does: not the
/// IPv4-compatible `::a.b.c.d` (deprecated; glibc prints it dotted).
pub(super) fn ipv6(bytes: [u8; 16]) -> Option<Ipv6Addr> {
    let a = Ipv6Addr::from(bytes);
    let compatible = bytes[..12].iter().all(|b| *b == 0) && u128::from(a) > 1;
    (!compatible).then_some(a)
}

fn verdict_text(e: &Expr<'_>) -> Option<String> {
    let (code, chain) = verdict(e)?;
    Some(match (code, chain) {
        (NFT_JUMP, Some(c)) => format!("-j {c}"),
        (NFT_GOTO, Some(c)) => format!("-g {c}"),
        (NF_ACCEPT, None) => "-j ACCEPT".into(),
        (NF_DROP, None) => "-j DROP".into(),
        (NFT_RETURN, None) => "-j RETURN".into(),
        _ => return None,
    })
}

fn negate(negated: bool, text: String) -> String {
    match negated {
        true => format!("! {text}"),
        false => text,
    }
}

/// Sets `slot` unless a rule sets it twice (not one of ours).
fn set_once(slot: &mut Option<String>, value: String) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

/// `Some` when `e` has no attribute but `allowed`.
pub(super) fn only(e: &Expr<'_>, allowed: &[u16]) -> Option<()> {
    e.is_within(e.name(), allowed).then_some(())
}

pub(super) fn be_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.try_into().ok()?))
}

pub(super) fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
