//! The maps layout's elements over netlink (NFT_MSG_GETSETELEM dump): what
//! ADD and DEL read, no process. Keys and values are nft concatenations,
//! each field in a 4-byte register: the map's `proto . port` and
//! `addr . port`, the masquerade set's `saddr . daddr`.

use super::maps::{Element, MAP};
use super::masq::{MasqElement, MASQ_SET};
use super::TABLE;
use crate::nfnetlink::{self, attr, attrs, nfproto, nul_terminated, NetlinkError};
use crate::{Family, Protocol};
use std::net::IpAddr;

use super::uapi::*;

/// Whether `<family> cni_hostport` has set (or map) `name`: one netlink
/// request, so a command on a host without the layout starts no process.
pub(super) fn has_set(family: Family, name: &str) -> Result<bool, NetlinkError> {
    let which = [
        attr(NFTA_SET_TABLE, &nul_terminated(TABLE)),
        attr(NFTA_SET_NAME, &nul_terminated(name)),
    ]
    .concat();
    match nfnetlink::get(NFT_MSG_GETSET, nfproto(family), &which, &mut |_| {}) {
        Ok(()) => Ok(true),
        Err(NetlinkError::Refused(nix::Error::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every element of `<family> cni_hostport`'s map (none when it is missing).
pub(super) fn elements(family: Family) -> Result<Vec<Element>, NetlinkError> {
    dump(family, MAP, parse)
}

/// Every element of `<family> cni_hostport`'s masquerade set.
pub(super) fn masq_elements(family: Family) -> Result<Vec<MasqElement>, NetlinkError> {
    dump(family, MASQ_SET, parse_masq)
}

fn dump<T>(
    family: Family,
    set: &str,
    parse: fn(&[u8]) -> Option<T>,
) -> Result<Vec<T>, NetlinkError> {
    let which = [
        attr(NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(TABLE)),
        attr(NFTA_SET_ELEM_LIST_SET, &nul_terminated(set)),
    ]
    .concat();
    let mut found = Vec::new();
    let each = &mut |body: &[u8]| {
        let list = attrs(body.get(4..).unwrap_or_default())
            .filter(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
            .flat_map(|(_, v)| attrs(v))
            .filter(|(k, _)| *k == NFTA_LIST_ELEM);
        found.extend(list.filter_map(|(_, e)| parse(e)));
    };
    match nfnetlink::dump(NFT_MSG_GETSETELEM, nfproto(family), &which, each) {
        Ok(()) | Err(NetlinkError::Refused(nix::Error::ENOENT)) => Ok(found),
        Err(e) => Err(e),
    }
}

fn value(nested: &[u8]) -> Option<&[u8]> {
    attrs(nested)
        .find(|(k, _)| *k == NFTA_DATA_VALUE)
        .map(|(_, v)| v)
}

/// An element's key, data (maps only) and owner (its comment).
fn fields(elem: &[u8]) -> (Option<&[u8]>, Option<&[u8]>, Option<String>) {
    let (mut key, mut data, mut owner) = (None, None, None);
    for (kind, v) in attrs(elem) {
        match kind {
            NFTA_SET_ELEM_KEY => key = value(v),
            NFTA_SET_ELEM_DATA => data = value(v),
            NFTA_SET_ELEM_USERDATA => owner = super::kernel::comment_of(v),
            _ => {}
        }
    }
    (key, data, owner)
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn parse_masq(elem: &[u8]) -> Option<MasqElement> {
    let (key, _, owner) = fields(elem);
    let key = key?;
    let half = key.len() / 2;
    Some(MasqElement {
        saddr: address(key.get(..half)?)?,
        daddr: address(key.get(half..)?)?,
        owner,
    })
}

fn parse(elem: &[u8]) -> Option<Element> {
    let (key, data, owner) = fields(elem);
    let (key, data) = (key?, data?);
    let protocol = match key.first()? {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return None,
    };
    let port = |b: &[u8]| Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
    let split = data.len().checked_sub(4)?;
    let (addr, to) = (address(data.get(..split)?)?, data.get(split..)?);
    Some(Element {
        protocol,
        port: port(key.get(4..)?)?,
        addr,
        to_port: port(to)?,
        owner,
    })
}
