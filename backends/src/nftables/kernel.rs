//! Our table as the kernel keeps it, read over netlink: rule dumps
//! filtered to `cni_hostport` (and to one chain where that will do), no
//! process (`nft -j list table` costs a process and O(N) JSON: 123 ms at
//! 1,000 containers). ADD and DEL need only where each rule is (chain,
//! handle), whose it is (its comment), whether a wiring rule is the one we
//! install (its [`Shape`]) and, for DEL's conntrack flush, the protocol and
//! port a DNAT rule matches. CHECK and `list` compare and describe whole
//! rules and keep `nft -j` (read.rs): rebuilding nft's JSON from netlink
//! expressions would duplicate nft. The restore pass first proves plans
//! whole from a dump decoded strictly into our own rules (decode.rs), and
//! keeps `nft -j` for what that cannot prove.

use super::maps::MAP;
use super::masq::MASQ_SET;
use super::owner_of;
use super::CONTAINER_CHAINS;
use super::TABLE;
use crate::nfnetlink::{self, attr, attrs, nfproto, nul_terminated, string, NetlinkError};
use crate::Family;
use crate::Protocol;
use std::net::IpAddr;

use super::uapi::*;

/// One rule of our table, as much as ADD and DEL need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KernelRule {
    pub(super) chain: String,
    /// u32 as the JSON schema (and nft) take it.
    pub(super) handle: u32,
    pub(super) comment: Option<String>,
    /// The protocol and destination ports (first, last) a rule matches
    /// (DNAT rules; first == last but for a port range).
    pub(super) port: Option<(Protocol, u16, u16)>,
    /// The container address a rule leads to: where a DNAT rule sends,
    /// the destination a masquerade rule matches. Rules carry only the
    /// container ID, so this tells one attachment's rules from another's.
    pub(super) target: Option<IpAddr>,
    pub(super) shape: Shape,
    /// The sets and maps its lookups and dynsets name: while any rule
    /// but our own lookups names our map or set, the kernel refuses to
    /// delete it (maps.rs `retire`).
    pub(super) sets: Vec<String>,
}

/// What a rule does, as far as ADD must tell the wiring it installs
/// (render.rs `wiring_rules`) from anything else in those chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shape {
    /// `jump <chain>`, nothing else.
    Jump(String),
    /// `fib daddr type local jump <chain>`, nothing else.
    LocalJump(String),
    /// The maps layout's `dnat ... map @hostports_map` (maps.rs).
    MapLookup,
    /// Its `ip saddr . ip daddr @hostports_masq masquerade` (masq.rs).
    MasqLookup,
    Other,
}

impl KernelRule {
    pub(super) fn owner(&self) -> Option<&str> {
        owner_of(&self.chain, self.comment.as_deref())
    }
}

/// Every rule of `<family> cni_hostport`, or of its `chain` only, in
/// chain order (none when the table or chain is missing: a dump filtered
/// to what does not exist is simply empty).
pub(super) fn rules(family: Family, chain: Option<&str>) -> Result<Vec<KernelRule>, NetlinkError> {
    rules_in(family, TABLE, chain)
}

/// [`rules`] of another table of ours (the localnet guard's).
pub(super) fn rules_in(
    family: Family,
    table: &str,
    chain: Option<&str>,
) -> Result<Vec<KernelRule>, NetlinkError> {
    let mut found = Vec::new();
    match nfnetlink::dump(
        NFT_MSG_GETRULE,
        nfproto(family),
        &in_table(table, chain),
        &mut |body| found.extend(parse_rule_in(body, table)),
    ) {
        Ok(()) | Err(NetlinkError::Refused(nix::Error::ENOENT)) => Ok(found),
        Err(e) => Err(e),
    }
}

/// The attributes naming `table` and, given one, a chain of it.
fn in_table(table: &str, chain: Option<&str>) -> Vec<u8> {
    let mut named = attr(NFTA_RULE_TABLE, &nul_terminated(table));
    if let Some(chain) = chain {
        named.extend(attr(NFTA_RULE_CHAIN, &nul_terminated(chain)));
    }
    named
}

/// Rule `handle` of `chain`, asked for that one rule; `None` when it is
/// gone (deleted, or the table was re-made since).
pub(super) fn rule(
    family: Family,
    chain: &str,
    handle: u64,
) -> Result<Option<KernelRule>, NetlinkError> {
    let which = [
        in_table(TABLE, Some(chain)),
        attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()),
    ]
    .concat();
    let mut found = None;
    match nfnetlink::get(NFT_MSG_GETRULE, nfproto(family), &which, &mut |body| {
        found = parse_rule(body)
    }) {
        Ok(()) => Ok(found),
        Err(NetlinkError::Refused(nix::Error::ENOENT)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a per-container chain of `<family> cni_hostport` holds a rule
/// of any container but these `handles` (one attachment's: the same
/// container's other attachments count too). Each chain's dump stops at
/// the first such rule, so with other containers around this reads little.
pub(super) fn others_than(family: Family, handles: &[u32]) -> Result<bool, NetlinkError> {
    for chain in CONTAINER_CHAINS {
        let filter = in_table(TABLE, Some(chain));
        let mut other = false;
        let dumped =
            nfnetlink::dump_while(NFT_MSG_GETRULE, nfproto(family), &filter, &mut |body| {
                other = parse_rule(body)
                    .is_some_and(|r| r.owner().is_some() && !handles.contains(&r.handle));
                !other
            });
        match dumped {
            Ok(()) | Err(NetlinkError::Refused(nix::Error::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        if other {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The family of a rule message (its nfgenmsg).
pub(super) fn family_of(body: &[u8]) -> Option<Family> {
    match body.first()? {
        2 => Some(Family::V4),
        10 => Some(Family::V6),
        _ => None,
    }
}

/// Whether `<family> cni_hostport` has chain `name` (asked for that one
/// chain: a chain dump would list every chain of the family, thousands
/// on a kube-proxy host).
pub(super) fn has_chain(family: Family, name: &str) -> Result<bool, NetlinkError> {
    nfnetlink::has_chain(family, TABLE, name)
}

/// An NFT_MSG_NEWRULE body of our table: nfgenmsg, then attributes.
pub(super) fn parse_rule(body: &[u8]) -> Option<KernelRule> {
    parse_rule_in(body, TABLE)
}

/// An NFT_MSG_NEWRULE body of `table` (`None` for another table's).
fn parse_rule_in(body: &[u8], table: &str) -> Option<KernelRule> {
    let (mut chain, mut handle, mut comment) = (None, None, None);
    let (mut port, mut shape, mut target) = (None, Shape::Other, None);
    let mut sets = Vec::new();
    for (kind, value) in attrs(body.get(4..)?) {
        match kind {
            // Dumps are filtered to our table; notifications are not.
            NFTA_RULE_TABLE if string(value) != table => return None,
            NFTA_RULE_CHAIN => chain = Some(string(value)),
            NFTA_RULE_HANDLE => {
                let h = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
                // Handles count up per table from 1; one past u32 would make
                // the delete by handle fail loudly, not hit another rule.
                handle = Some(u32::try_from(h).unwrap_or(u32::MAX));
            }
            NFTA_RULE_USERDATA => comment = comment_of(value),
            NFTA_RULE_EXPRESSIONS => {
                let list = exprs(value);
                port = port_of(&list);
                shape = shape_of(&list);
                target = target_of(&list);
                sets = sets_of(&list);
            }
            _ => {}
        }
    }
    Some(KernelRule {
        chain: chain?,
        handle: handle?,
        comment,
        port,
        target,
        shape,
        sets,
    })
}

/// The set names of a rule's `lookup` and `dynset` expressions (each
/// keeps it in attribute 1).
fn sets_of(list: &[Expr<'_>]) -> Vec<String> {
    list.iter()
        .filter(|e| e.name == "lookup" || e.name == "dynset")
        .filter_map(|e| e.attr(NFTA_LOOKUP_SET).map(string))
        .collect()
}

/// The comment in nftnl userdata TLVs; rules and set elements both keep
/// it at type 0 (elements.rs reads elements' owners with it).
pub(super) fn comment_of(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(string(value));
        }
        udata = &rest[usize::from(*len)..];
    }
    None
}

/// What a register holds before a compare reads it.
#[derive(Clone, Copy, PartialEq)]
enum Loaded {
    Other,
    L4proto,
    Dport,
}

/// One expression of a rule: its name and its attributes.
pub(super) struct Expr<'a> {
    name: String,
    data: &'a [u8],
}

impl Expr<'_> {
    fn attr(&self, key: u16) -> Option<&[u8]> {
        attrs(self.data).find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A u32 attribute in network order (as the kernel keeps most).
    fn be32(&self, key: u16) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.attr(key)?.get(..4)?.try_into().ok()?,
        ))
    }

    /// The value a `cmp` compares with (nested NFTA_DATA_VALUE).
    fn cmp_value(&self) -> Option<&[u8]> {
        attrs(self.attr(NFTA_CMP_DATA)?)
            .find(|(k, _)| *k == NFTA_DATA_VALUE)
            .map(|(_, v)| v)
    }
}

pub(super) fn exprs(list: &[u8]) -> Vec<Expr<'_>> {
    attrs(list)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .map(|(_, elem)| {
            let mut e = Expr {
                name: String::new(),
                data: &[],
            };
            for (k, v) in attrs(elem) {
                match k {
                    NFTA_EXPR_NAME => e.name = string(v),
                    NFTA_EXPR_DATA => e.data = v,
                    _ => {}
                }
            }
            e
        })
        .collect()
}

/// `jump <chain>` and `fib daddr type local jump <chain>` as nft encodes
/// them: an immediate verdict, after a fib address-type lookup into the
/// register a compare with RTN_LOCAL reads.
pub(super) fn shape_of(list: &[Expr<'_>]) -> Shape {
    let jump = |e: &Expr<'_>| {
        if e.name != "immediate" || e.be32(NFTA_IMMEDIATE_DREG) != Some(NFT_REG_VERDICT) {
            return None;
        }
        let verdict = attrs(e.attr(NFTA_IMMEDIATE_DATA)?).find(|(k, _)| *k == NFTA_DATA_VERDICT)?;
        let code = attrs(verdict.1).find(|(k, _)| *k == NFTA_VERDICT_CODE)?.1;
        let chain = attrs(verdict.1).find(|(k, _)| *k == NFTA_VERDICT_CHAIN)?.1;
        (u32::from_be_bytes(code.get(..4)?.try_into().ok()?) == NFT_JUMP).then(|| string(chain))
    };
    let local = |fib: &Expr<'_>, cmp: &Expr<'_>| {
        fib.name == "fib"
            && fib.be32(NFTA_FIB_RESULT) == Some(NFT_FIB_RESULT_ADDRTYPE)
            && fib.be32(NFTA_FIB_FLAGS) == Some(NFTA_FIB_F_DADDR)
            && cmp.name == "cmp"
            && cmp.be32(NFTA_CMP_OP) == Some(NFT_CMP_EQ)
            && fib.be32(NFTA_FIB_DREG) == cmp.be32(NFTA_CMP_SREG)
            && cmp.cmp_value() == Some(&RTN_LOCAL.to_ne_bytes()[..])
    };
    // Exactly what nft makes of maps.rs's and masq.rs's lookup rules: the
    // key's loads, a plain (not inverted) lookup, the nat or masq.
    let lookup = |e: &Expr<'_>, set: &str| {
        e.name == "lookup"
            && e.attr(NFTA_LOOKUP_SET).map(string).as_deref() == Some(set)
            && e.be32(NFTA_LOOKUP_FLAGS).unwrap_or(0) == 0
    };
    let payload = |e: &Expr<'_>, base: u32| {
        (e.name == "payload" && e.be32(NFTA_PAYLOAD_BASE) == Some(base))
            .then(|| e.be32(NFTA_PAYLOAD_OFFSET).zip(e.be32(NFTA_PAYLOAD_LEN)))
            .flatten()
    };
    let proto_dport = |meta: &Expr<'_>, port: &Expr<'_>| {
        meta.name == "meta"
            && meta.be32(NFTA_META_KEY) == Some(NFT_META_L4PROTO)
            && payload(port, NFT_PAYLOAD_TRANSPORT_HEADER) == Some((2, 2))
    };
    // saddr then daddr: the one ends where the other starts (12+4, 8+16).
    let saddr_daddr = |s: &Expr<'_>, d: &Expr<'_>| {
        let (s, d) = (
            payload(s, NFT_PAYLOAD_NETWORK_HEADER),
            payload(d, NFT_PAYLOAD_NETWORK_HEADER),
        );
        matches!(
            (s, d),
            (Some((12, 4)), Some((16, 4))) | (Some((8, 16)), Some((24, 16)))
        )
    };
    match list {
        [m, p, l, nat] if proto_dport(m, p) && lookup(l, MAP) && nat.name == "nat" => {
            Shape::MapLookup
        }
        [s, d, l, masq]
            if saddr_daddr(s, d)
                && lookup(l, MASQ_SET)
                && masq.name == "masq"
                && masq.data.is_empty() =>
        {
            Shape::MasqLookup
        }
        [j] => jump(j).map_or(Shape::Other, Shape::Jump),
        [fib, cmp, j] if local(fib, cmp) => jump(j).map_or(Shape::Other, Shape::LocalJump),
        _ => Shape::Other,
    }
}

/// An IPv4 or IPv6 address held in `value` (4 or 16 bytes).
fn address(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
        _ => None,
    }
}

/// Where a rule leads: `dnat to C` is an immediate loading C into the
/// register the nat expression reads its address from; `ip daddr C
/// masquerade` loads the destination address (IPv4 header offset 16,
/// IPv6 offset 24) and compares it with C.
fn target_of(list: &[Expr<'_>]) -> Option<IpAddr> {
    if let Some(nat) = list.iter().find(|e| e.name == "nat") {
        let reg = nat.be32(NFTA_NAT_REG_ADDR_MIN)?;
        let load = list
            .iter()
            .find(|e| e.name == "immediate" && e.be32(NFTA_IMMEDIATE_DREG) == Some(reg))?;
        let value = attrs(load.attr(NFTA_IMMEDIATE_DATA)?).find(|(k, _)| *k == NFTA_DATA_VALUE)?;
        return address(value.1);
    }
    let mut daddr = false;
    for e in list {
        match e.name.as_str() {
            "payload" => {
                daddr = matches!(
                    (
                        e.be32(NFTA_PAYLOAD_BASE),
                        e.be32(NFTA_PAYLOAD_OFFSET),
                        e.be32(NFTA_PAYLOAD_LEN)
                    ),
                    (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(16), Some(4))
                        | (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(24), Some(16))
                );
            }
            "cmp" if daddr => return e.cmp_value().and_then(address),
            _ => daddr = false,
        }
    }
    None
}

/// `tcp dport 8080` as nft encodes it: the layer 4 protocol loaded (meta
/// l4proto, or the IPv4 protocol / IPv6 next header field) and compared,
/// then the transport header's bytes 2..4 loaded and compared. A range
/// (`tcp dport 20000-24999`) is two compares, `gte` then `lte` (nft 1.0.6),
/// or one `range` expression (how other nft releases may encode it).
pub(super) fn port_of(list: &[Expr<'_>]) -> Option<(Protocol, u16, u16)> {
    let (mut loaded, mut proto) = (Loaded::Other, None);
    let (mut first, mut last) = (None, None);
    let port = |v: Option<&[u8]>| match v {
        Some([hi, lo, ..]) => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    };
    for e in list {
        loaded = match e.name.as_str() {
            "meta" if e.be32(NFTA_META_KEY) == Some(NFT_META_L4PROTO) => Loaded::L4proto,
            "payload" => match (
                e.be32(NFTA_PAYLOAD_BASE),
                e.be32(NFTA_PAYLOAD_OFFSET),
                e.be32(NFTA_PAYLOAD_LEN),
            ) {
                (Some(NFT_PAYLOAD_TRANSPORT_HEADER), Some(2), Some(2)) => Loaded::Dport,
                // IPv4 protocol (offset 9), IPv6 next header (offset 6).
                (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(9 | 6), Some(1)) => Loaded::L4proto,
                _ => Loaded::Other,
            },
            "cmp" => match (loaded, e.be32(NFTA_CMP_OP)) {
                (Loaded::L4proto, _) => {
                    proto = e.cmp_value().and_then(|v| v.first().copied());
                    Loaded::Other
                }
                (Loaded::Dport, Some(NFT_CMP_GTE)) => {
                    first = port(e.cmp_value());
                    // The `lte` reads the same register next.
                    Loaded::Dport
                }
                (Loaded::Dport, Some(NFT_CMP_LTE)) => {
                    last = port(e.cmp_value());
                    Loaded::Other
                }
                (Loaded::Dport, _) => {
                    first = port(e.cmp_value());
                    last = first;
                    Loaded::Other
                }
                _ => Loaded::Other,
            },
            "range" if loaded == Loaded::Dport && e.be32(NFTA_RANGE_OP) == Some(NFT_RANGE_EQ) => {
                let bound = |key| {
                    attrs(e.attr(key)?)
                        .find(|(k, _)| *k == NFTA_DATA_VALUE)
                        .and_then(|(_, v)| port(Some(v)))
                };
                first = bound(NFTA_RANGE_FROM_DATA);
                last = bound(NFTA_RANGE_TO_DATA);
                Loaded::Other
            }
            _ => Loaded::Other,
        };
    }
    let protocol = match proto? {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return None,
    };
    let (first, last) = (first?, last?);
    (first <= last).then_some((protocol, first, last))
}

#[cfg(test)]
#[path = "kernel_tests.rs"]
mod tests;
