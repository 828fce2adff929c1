//! The restore pass's fast read: our table's rules over netlink, each
//! decoded STRICTLY into what render.rs makes (DNAT with optional hostIP
//! daddr match, port or range, `dnat to addr[:port]`; masquerade of
//! saddr/prefix 0 to daddr; the wiring jumps), exactly the expression
//! sequences nft 1.0 sends for them. Anything else (another expression,
//! attribute, flag or order, a condition) decodes to `None`: "not
//! proven", and check.rs then compares that family with `nft -j` (whose
//! verdict text it reports). So a rule is never wrongly taken as ours.

use super::render::wiring_shapes;
use super::{kernel, owner_of, HOSTPORTS, MASQUERADING, TABLE};
use crate::nfnetlink::{self, attr, attrs, nfproto, nul_terminated, string, NetlinkError};
use crate::plan::{FamilyPlan, MasqSource};
use crate::{Family, Protocol};
use std::net::{IpAddr, Ipv4Addr};

use super::uapi::*;

/// One of our rules as render.rs makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decoded {
    Jump(String),
    LocalJump(String),
    Dnat {
        host_ip: Option<IpAddr>,
        protocol: Protocol,
        first: u16,
        last: u16,
        addr: IpAddr,
        port: Option<u16>,
    },
    /// `saddr` `None`: the /0 prefix (masqAll).
    Masquerade {
        saddr: Option<IpAddr>,
        daddr: IpAddr,
    },
}

impl Decoded {
    /// The container address the rule leads to (see `KernelRule::target`).
    pub(super) fn target(&self) -> Option<IpAddr> {
        match self {
            Decoded::Dnat { addr, .. } => Some(*addr),
            Decoded::Masquerade { daddr, .. } => Some(*daddr),
            _ => None,
        }
    }
}

/// A rule of our table: where it is, whose, and what (`None`: unproven).
#[derive(Debug)]
pub(super) struct TableRule {
    pub(super) chain: String,
    pub(super) comment: Option<String>,
    pub(super) decoded: Option<Decoded>,
    /// The maps layout's comment-less lookup rule.
    pub(super) lookup: bool,
    /// Its masquerade set's lookup rule (masq.rs).
    pub(super) masq_lookup: bool,
}

impl TableRule {
    pub(super) fn owner(&self) -> Option<&str> {
        owner_of(&self.chain, self.comment.as_deref())
    }
}

/// Every rule of `<family> cni_hostport` (none: table missing or empty).
pub(super) fn table(family: Family) -> Result<Vec<TableRule>, NetlinkError> {
    let mut found = Vec::new();
    let filter = attr(NFTA_RULE_TABLE, &nul_terminated(TABLE));
    let each = &mut |body: &[u8]| found.extend(rule(family, body));
    match nfnetlink::dump(NFT_MSG_GETRULE, nfproto(family), &filter, each) {
        Ok(()) | Err(NetlinkError::Refused(nix::Error::ENOENT)) => Ok(found),
        Err(e) => Err(e),
    }
}

fn rule(family: Family, body: &[u8]) -> Option<TableRule> {
    let (mut chain, mut comment, mut list, mut strange) = (None, None, None, false);
    for (kind, value) in attrs(body.get(4..)?) {
        match kind {
            NFTA_RULE_TABLE if string(value) != TABLE => return None,
            NFTA_RULE_TABLE | NFTA_RULE_HANDLE | NFTA_RULE_POSITION => {}
            NFTA_RULE_CHAIN => chain = Some(string(value)),
            NFTA_RULE_USERDATA => comment = kernel::comment_of(value),
            NFTA_RULE_EXPRESSIONS => list = Some(value),
            // Compat (xt) data or anything newer: not one of ours.
            _ => strange = true,
        }
    }
    let exprs = list.map(exprs).unwrap_or_default();
    let shape = comment
        .is_none()
        .then(|| kernel::shape_of(&kernel::exprs(list.unwrap_or_default())));
    let lookup = chain.as_deref() == Some(HOSTPORTS) && shape == Some(kernel::Shape::MapLookup);
    let masq_lookup =
        chain.as_deref() == Some(MASQUERADING) && shape == Some(kernel::Shape::MasqLookup);
    let decoded = (!strange).then(|| decode(family, &exprs)).flatten();
    Some(TableRule {
        chain: chain?,
        comment,
        decoded,
        lookup,
        masq_lookup,
    })
}

/// One expression: its name and its attributes by kind (iptables/netlink.rs
/// reads iptables-nft's rules with it too).
pub(crate) struct Expr<'a> {
    name: String,
    attrs: Vec<(u16, &'a [u8])>,
}

impl Expr<'_> {
    /// Whether it is `name` with exactly the attribute kinds `keys`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is `name` with no attribute kind but `keys` (some may be
    /// missing: older kernels and tools leave optional ones out).
    pub(crate) fn is_within(&self, name: &str, keys: &[u16]) -> bool {
        self.name == name && self.attrs.iter().all(|(k, _)| keys.contains(k))
    }

    pub(crate) fn is(&self, name: &str, keys: &[u16]) -> bool {
        self.name == name
            && self.attrs.len() == keys.len()
            && keys.iter().all(|k| self.attrs.iter().any(|(a, _)| a == k))
    }

    pub(crate) fn get(&self, key: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub(crate) fn be32(&self, key: u16) -> Option<u32> {
        Some(u32::from_be_bytes(self.get(key)?.try_into().ok()?))
    }

    /// The single NFTA_DATA_VALUE nested in attribute `key`.
    pub(crate) fn value(&self, key: u16) -> Option<&[u8]> {
        match attrs(self.get(key)?).collect::<Vec<_>>().as_slice() {
            [(NFTA_DATA_VALUE, v)] => Some(v),
            _ => None,
        }
    }
}

pub(crate) fn exprs(list: &[u8]) -> Vec<Expr<'_>> {
    attrs(list)
        .map(|(kind, elem)| {
            let (mut name, mut data, mut extra) = (String::new(), None, kind != NFTA_LIST_ELEM);
            for (k, v) in attrs(elem) {
                match k {
                    NFTA_EXPR_NAME => name = string(v),
                    NFTA_EXPR_DATA => data = Some(v),
                    _ => extra = true,
                }
            }
            if extra {
                name.clear();
            }
            let attrs = data.map(|d| attrs(d).collect()).unwrap_or_default();
            Expr { name, attrs }
        })
        .collect()
}

/// Reads expressions off the front of a rule, each step strict.
struct Cursor<'e, 'a> {
    rest: &'e [Expr<'a>],
}

impl<'e, 'a> Cursor<'e, 'a> {
    fn next(&mut self) -> Option<&'e Expr<'a>> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// `payload load <len>b @ <base> + <offset> => reg`: the register.
    fn payload(&mut self, base: u32, offset: u32, len: u32) -> Option<u32> {
        let e = self.next()?;
        (e.is("payload", &[1, 2, 3, 4])
            && e.be32(2)? == base
            && e.be32(3)? == offset
            && e.be32(4)? == len)
            .then(|| e.be32(1))?
    }

    /// `cmp <op> reg <value>`: the value.
    fn cmp(&mut self, reg: u32, op: u32) -> Option<&'e [u8]> {
        let e = self.next()?;
        (e.is("cmp", &[1, 2, 3]) && e.be32(1)? == reg && e.be32(2)? == op).then(|| e.value(3))?
    }

    /// `payload` of an address field then `cmp eq` (None: the /0 prefix,
    /// a bitwise with zero mask and xor, compared with zero).
    fn address(&mut self, family: Family, offset: u32) -> Option<Option<IpAddr>> {
        let len = addr_len(family);
        let reg = self.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len)?;
        if self.rest.first()?.name == "bitwise" {
            let e = self.next()?;
            let zero = |v: Option<&[u8]>| {
                v.is_some_and(|v| v.len() == len as usize && v.iter().all(|b| *b == 0))
            };
            let masked = e.is("bitwise", &[1, 2, 3, 4, 5]) || e.is("bitwise", &[1, 2, 3, 4, 5, 6]);
            let ok = masked
                && e.be32(1)? == reg
                && e.be32(2)? == reg
                && e.be32(3)? == len
                && e.get(6).is_none_or(|op| op == [0, 0, 0, 0])
                && zero(e.value(4))
                && zero(e.value(5))
                && zero(self.cmp(reg, NFT_CMP_EQ));
            return ok.then_some(None);
        }
        address(self.cmp(reg, NFT_CMP_EQ)?, family).map(Some)
    }

    /// `immediate reg <value>`: (register, value).
    fn immediate(&mut self) -> Option<(u32, &'e [u8])> {
        let e = self.next()?;
        e.is("immediate", &[1, 2])
            .then(|| Some((e.be32(1)?, e.value(2)?)))?
    }

    /// `immediate reg 0 jump -> <chain>`, and nothing after.
    fn jump(&mut self) -> Option<String> {
        let e = self.next()?;
        if !self.rest.is_empty() {
            return None;
        }
        match verdict(e)? {
            (NFT_JUMP, Some(chain)) => Some(chain),
            _ => None,
        }
    }
}

/// `immediate reg 0 <verdict>`: its code and, for jump and goto, the chain
/// (iptables/netlink.rs reads iptables-nft's verdicts with it too).
pub(crate) fn verdict(e: &Expr<'_>) -> Option<(u32, Option<String>)> {
    if !e.is("immediate", &[NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA])
        || e.be32(NFTA_IMMEDIATE_DREG)? != NFT_REG_VERDICT
    {
        return None;
    }
    let inner = match attrs(e.get(NFTA_IMMEDIATE_DATA)?)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [(NFTA_DATA_VERDICT, v)] => attrs(v).collect::<Vec<_>>(),
        _ => return None,
    };
    let code = |c: &[u8]| Some(u32::from_be_bytes(c.try_into().ok()?));
    match inner.as_slice() {
        [(NFTA_VERDICT_CODE, c)] => Some((code(c)?, None)),
        [(NFTA_VERDICT_CODE, c), (NFTA_VERDICT_CHAIN, chain)] => {
            Some((code(c)?, Some(string(chain))))
        }
        _ => None,
    }
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

/// (saddr, daddr) header offsets.
fn addr_offsets(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (12, 16),
        Family::V6 => (8, 24),
    }
}

fn address(value: &[u8], family: Family) -> Option<IpAddr> {
    match (family, value.len()) {
        (Family::V4, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
        (Family::V6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
        _ => None,
    }
}

fn port(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(value.try_into().ok()?))
}

fn decode(family: Family, list: &[Expr<'_>]) -> Option<Decoded> {
    let mut c = Cursor { rest: list };
    let (_, daddr) = addr_offsets(family);
    match list.first()?.name.as_str() {
        "immediate" => return c.jump().map(Decoded::Jump),
        "fib" => {
            let fib = c.next()?;
            let ok = fib.is("fib", &[1, 2, 3])
                && fib.be32(2)? == NFT_FIB_RESULT_ADDRTYPE
                && fib.be32(3)? == NFTA_FIB_F_DADDR
                && c.cmp(fib.be32(1)?, NFT_CMP_EQ)? == RTN_LOCAL.to_ne_bytes();
            return ok.then(|| c.jump().map(Decoded::LocalJump))?;
        }
        _ => {}
    }
    if list.last()?.is("masq", &[]) {
        let saddr = c.address(family, addr_offsets(family).0)?;
        let daddr = c.address(family, daddr)??;
        return (c.next()?.is("masq", &[]) && c.rest.is_empty())
            .then_some(Decoded::Masquerade { saddr, daddr });
    }
    let host_ip = match list.first()?.name.as_str() {
        "payload" => Some(c.address(family, daddr)??),
        _ => None,
    };
    let meta = c.next()?;
    if !meta.is("meta", &[1, 2]) || meta.be32(2)? != NFT_META_L4PROTO {
        return None;
    }
    let protocol = match c.cmp(meta.be32(1)?, NFT_CMP_EQ)? {
        [6] => Protocol::Tcp,
        [17] => Protocol::Udp,
        [132] => Protocol::Sctp,
        _ => return None,
    };
    let reg = c.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)?;
    let (first, last) = match c.rest.get(1).map(|e| e.name.as_str()) {
        Some("cmp") if c.rest.first()?.be32(2)? == NFT_CMP_GTE => {
            let first = port(c.cmp(reg, NFT_CMP_GTE)?)?;
            let last = port(c.cmp(reg, NFT_CMP_LTE)?)?;
            // A range renders only as first < last (`Run::is_range`).
            (first < last).then_some((first, last))?
        }
        _ if c.rest.first()?.name == "range" => {
            let e = c.next()?;
            let ok = e.is("range", &[1, 2, 3, 4]) && e.be32(1)? == reg && e.be32(2)? == NFT_CMP_EQ;
            let (first, last) = (port(e.value(3)?)?, port(e.value(4)?)?);
            (ok && first < last).then_some((first, last))?
        }
        _ => {
            let p = port(c.cmp(reg, NFT_CMP_EQ)?)?;
            (p, p)
        }
    };
    let (addr_reg, addr) = c.immediate()?;
    let addr = address(addr, family)?;
    let to = match c.rest.first()?.name.as_str() {
        "immediate" => Some(c.immediate()?),
        _ => None,
    };
    let nat = c.next()?;
    // nft's own registers: the address in 1, the port in 2 (so neither
    // immediate can have overwritten the other).
    if !c.rest.is_empty() || nat.be32(1)? != NFT_NAT_DNAT || addr_reg != 1 {
        return None;
    }
    let same =
        |min: u16, max: u16, reg: u32| nat.be32(min) == Some(reg) && nat.be32(max) == Some(reg);
    let family_ok = nat.be32(2)? == u32::from(nfproto(family));
    let port = match to {
        None => {
            let ok = nat.is("nat", &[1, 2, 3, 4, 7])
                && same(3, 4, addr_reg)
                && nat.be32(7)? == NF_NAT_RANGE_MAP_IPS;
            ok.then_some(None)?
        }
        Some((port_reg, value)) => {
            let ok = port_reg == 2
                && nat.is("nat", &[1, 2, 3, 4, 5, 6, 7])
                && same(3, 4, addr_reg)
                && same(5, 6, port_reg)
                && nat.be32(7)? == NF_NAT_RANGE_MAP_IPS_PORT;
            if !ok {
                return None;
            }
            Some(port(value)?)
        }
    };
    family_ok.then_some(Decoded::Dnat {
        host_ip,
        protocol,
        first,
        last,
        addr,
        port,
    })
}

/// The wiring render.rs installs, decoded.
pub(super) fn wiring() -> Vec<(&'static str, Decoded)> {
    let mut all = Vec::new();
    for (chain, shapes) in wiring_shapes() {
        for shape in shapes {
            all.push((
                chain,
                match shape {
                    kernel::Shape::Jump(to) => Decoded::Jump(to),
                    kernel::Shape::LocalJump(to) => Decoded::LocalJump(to),
                    _ => continue,
                },
            ));
        }
    }
    all
}

/// The container rules of `fam` as decoded (what `expected_rules`
/// renders); `None` with conditions, which only `nft -j` compares.
pub(super) fn expected(fam: &FamilyPlan) -> Option<Vec<(&'static str, Decoded)>> {
    if !fam.conditions.is_empty() {
        return None;
    }
    let addr = fam.container.addr;
    let mut rules = Vec::new();
    for run in fam.rule_runs() {
        let dnat = Decoded::Dnat {
            host_ip: run.host_ip,
            protocol: run.protocol,
            first: run.first,
            last: run.last,
            addr,
            port: (!run.is_range()).then_some(run.container_port),
        };
        rules.push((HOSTPORTS, dnat));
    }
    for source in &fam.masquerade_rules() {
        let saddr = match source {
            MasqSource::Container => Some(addr),
            MasqSource::Localhost => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            MasqSource::Any => None,
        };
        rules.push((MASQUERADING, Decoded::Masquerade { saddr, daddr: addr }));
    }
    Some(rules)
}

/// What one rule message decodes to (unit tests build messages by hand).
#[cfg(test)]
pub(super) fn decode_body(family: Family, body: &[u8]) -> Option<Decoded> {
    rule(family, body)?.decoded
}
