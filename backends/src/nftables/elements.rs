//! The maps layout's elements over netlink (NFT_MSG_GETSETELEM dump): what
//! ADD and DEL read, no process. Keys and values are nft concatenations,
//! each field in a 4-byte register: `proto . port` and `addr . port`.

use super::maps::{Element, MAP};
use super::TABLE;
use crate::nfnetlink::{self, attr, attrs, nfproto, nul_terminated, NetlinkError};
use crate::{Family, Protocol};
use std::net::IpAddr;

const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;

/// Every element of `<family> cni_hostport`'s map (none when it is missing).
pub(super) fn elements(family: Family) -> Result<Vec<Element>, NetlinkError> {
    let which = [
        attr(NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(TABLE)),
        attr(NFTA_SET_ELEM_LIST_SET, &nul_terminated(MAP)),
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

fn parse(elem: &[u8]) -> Option<Element> {
    let (mut key, mut data, mut owner) = (None, None, None);
    for (kind, v) in attrs(elem) {
        match kind {
            NFTA_SET_ELEM_KEY => key = value(v),
            NFTA_SET_ELEM_DATA => data = value(v),
            NFTA_SET_ELEM_USERDATA => owner = super::kernel::comment_of(v),
            _ => {}
        }
    }
    let (key, data) = (key?, data?);
    let protocol = match key.first()? {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return None,
    };
    let port = |b: &[u8]| Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
    let (addr, to) = match data.len() {
        8 => (
            IpAddr::from(<[u8; 4]>::try_from(data.get(..4)?).ok()?),
            data.get(4..)?,
        ),
        20 => (
            IpAddr::from(<[u8; 16]>::try_from(data.get(..16)?).ok()?),
            data.get(16..)?,
        ),
        _ => return None,
    };
    Some(Element {
        protocol,
        port: port(key.get(4..)?)?,
        addr,
        to_port: port(to)?,
        owner,
    })
}
