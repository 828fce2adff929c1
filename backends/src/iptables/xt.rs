//! The xt (compat) matches and targets iptables-nft puts in nf_tables
//! rules, rendered as iptables-nft-save prints them: only those we
//! install, every field of their blob (kernel structs, host byte order)
//! checked; anything else is `None` (netlink.rs then leaves the family to
//! the save).

use std::net::Ipv4Addr;

use super::netlink::{be_u16, ipv6, ne_u16, ne_u32, only, port_text};
use crate::nfnetlink::string;
use crate::nftables::decode::Expr;
use crate::nftables::uapi::*;
use crate::Family;

/// An xt expression's name, revision and info blob (host byte order).
fn xt<'e>(e: &'e Expr<'_>) -> Option<(String, u32, &'e [u8])> {
    only(e, &[NFTA_XT_NAME, NFTA_XT_REV, NFTA_XT_INFO])?;
    Some((
        string(e.get(NFTA_XT_NAME)?),
        e.be32(NFTA_XT_REV)?,
        e.get(NFTA_XT_INFO)?,
    ))
}

pub(super) fn xt_match(e: &Expr<'_>) -> Option<String> {
    let (name, rev, info) = xt(e)?;
    match (name.as_str(), rev) {
        ("comment", 0) => {
            // iptables prints at most 255 bytes (it ends the buffer there).
            let text = info.get(..255)?.split(|b| *b == 0).next()?;
            let text = std::str::from_utf8(text).ok()?;
            Some(format!("-m comment --comment {}", save_string(text)))
        }
        ("multiport", 1) => multiport(info),
        // xt_addrtype_info_v1: source, dest (u16), flags (u32); LOCAL = 1 << 2.
        ("addrtype", 1) => {
            (ne_u16(info, 0)? == 0 && ne_u16(info, 2)? == 4 && ne_u32(info, 4)? == 0)
                .then(|| "-m addrtype --dst-type LOCAL".to_string())
        }
        // xt_tcp: spts, dpts (u16 x 2), option, flg_mask, flg_cmp,
        // invflags (u8); xt_udp: spts, dpts, invflags (iptables 1.8.7).
        ("tcp", 0) if info.get(8..12)?.iter().all(|b| *b == 0) => ports_match("tcp", info),
        ("udp", 0) if *info.get(8)? == 0 => ports_match("udp", info),
        // xt_mark_mtinfo1: mark, mask (u32), invert (u8).
        ("mark", 1) => (*info.get(8)? == 0)
            .then(|| {
                Some(format!(
                    "-m mark --mark {}",
                    mark_text(ne_u32(info, 0)?, ne_u32(info, 4)?)
                ))
            })
            .flatten(),
        _ => None,
    }
}

/// `-m <proto> --dport N|A:B` of an xt tcp or udp match: destination
/// ports only (every source port), as we match them.
fn ports_match(proto: &str, info: &[u8]) -> Option<String> {
    if ne_u16(info, 0)? != 0 || ne_u16(info, 2)? != u16::MAX {
        return None;
    }
    let (from, to) = (ne_u16(info, 4)?, ne_u16(info, 6)?);
    let ports = match from == to {
        true => from.to_string(),
        false => port_text(from, to)?,
    };
    Some(format!("-m {proto} --dport {ports}"))
}

/// xt_multiport_v1: flags, count (u8), ports (u16 x 15), pflags (u8 x 15),
/// invert (u8); destination ports only, as we match them.
fn multiport(info: &[u8]) -> Option<String> {
    const DESTINATION: u8 = 1;
    let (flags, count) = (*info.first()?, usize::from(*info.get(1)?));
    if flags != DESTINATION || *info.get(47)? != 0 || count == 0 || count > 15 {
        return None;
    }
    let mut words = Vec::new();
    let mut i = 0;
    while i < count {
        let port = ne_u16(info, 2 + 2 * i)?;
        if *info.get(32 + i)? != 0 {
            i += 1;
            words.push(format!(
                "{port}:{}",
                ne_u16(info, 2 + 2 * i).filter(|_| i < count)?
            ));
        } else {
            words.push(port.to_string());
        }
        i += 1;
    }
    Some(format!("-m multiport --dports {}", words.join(",")))
}

pub(super) fn xt_target(family: Family, e: &Expr<'_>) -> Option<String> {
    let (name, rev, info) = xt(e)?;
    match (name.as_str(), rev) {
        ("DNAT", 1 | 2) => dnat(family, info, rev),
        // IPv4: nf_nat_ipv4_multi_range_compat with one empty range;
        // IPv6: an empty nf_nat_range.
        ("MASQUERADE", 0) => {
            let empty = match family {
                Family::V4 => ne_u32(info, 0)? == 1 && info.get(4..20)?.iter().all(|b| *b == 0),
                Family::V6 => info.get(..40)?.iter().all(|b| *b == 0),
            };
            empty.then(|| "-j MASQUERADE".to_string())
        }
        // xt_mark_tginfo2: mark, mask.
        ("MARK", 2) => Some(format!(
            "-j MARK --set-xmark {:#x}/{:#x}",
            ne_u32(info, 0)?,
            ne_u32(info, 4)?
        )),
        _ => None,
    }
}

/// nf_nat_range (rev 1) / nf_nat_range2 (rev 2): flags (u32), min and max
/// address (16 bytes each), min and max port (be16), rev 2's base port.
/// One address, at most one port range, no other flag: as we DNAT.
fn dnat(family: Family, info: &[u8], rev: u32) -> Option<String> {
    const MAP_IPS: u32 = 1;
    const PROTO_SPECIFIED: u32 = 2;
    let flags = ne_u32(info, 0)?;
    let (min, max) = (info.get(4..20)?, info.get(20..36)?);
    let (low, high) = (be_u16(info.get(36..38)?)?, be_u16(info.get(38..40)?)?);
    let base_zero = rev == 1 || info.get(40..42)?.iter().all(|b| *b == 0);
    if min != max || !base_zero || flags & !PROTO_SPECIFIED != MAP_IPS {
        return None;
    }
    let ported = flags & PROTO_SPECIFIED != 0;
    let address = match family {
        Family::V4 => Ipv4Addr::from(<[u8; 4]>::try_from(min.get(..4)?).ok()?).to_string(),
        Family::V6 => {
            let a = ipv6(<[u8; 16]>::try_from(min).ok()?)?;
            if ported {
                format!("[{a}]")
            } else {
                a.to_string()
            }
        }
    };
    let port = match (ported, low == high) {
        (false, _) => String::new(),
        (true, true) => format!(":{low}"),
        (true, false) => format!(":{low}-{high}"),
    };
    Some(format!("-j DNAT --to-destination {address}{port}"))
}

/// iptables' `xtables_save_string`: bare when only `[A-Za-z0-9_-]`, else
/// quoted with `"`, `\` and `'` escaped.
fn save_string(text: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !text.is_empty() && text.chars().all(bare) {
        return text.to_string();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub(super) fn mark_text(mark: u32, mask: u32) -> String {
    match mask {
        u32::MAX => format!("{mark:#x}"),
        _ => format!("{mark:#x}/{mask:#x}"),
    }
}
