//! Asking the kernel's nf_tables over netlink, no process: which tables
//! exist (one dump), one table's rules (nftables/kernel.rs), one chain,
//! and change notifications for `portmap watch`. `nft list tables` would
//! do for the first, but nft 1.0.x builds its whole cache first: 50 ms
//! with 1000 containers' rules, on every DEL.

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {step}: {source}")]
    Sys {
        step: &'static str,
        source: nix::Error,
    },
    #[error("kernel refused the netfilter request: {0}")]
    Refused(nix::Error),
    #[error("malformed netlink reply")]
    Malformed,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const HEADER: usize = 16;
const SEQ: u32 = 0x706d_6170;
/// A dump that has not answered by then is not going to.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

pub mod conntrack;
mod events;
pub use events::{Commit, Events, Removal, RuleEvents, Touched};

/// (family, name) of every nf_tables table, family as nft spells it
/// (`ip`, `ip6`, `inet`...). Fails where nf_tables does not work.
pub fn tables() -> Result<Vec<(String, String)>, NetlinkError> {
    let mut found = Vec::new();
    dump(NFT_MSG_GETTABLE, 0, &[], &mut |body| {
        found.extend(table_of(body))
    })?;
    Ok(found)
}

const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;

/// The nfgenmsg family of an IP family.
pub(crate) fn nfproto(family: crate::Family) -> u8 {
    match family {
        crate::Family::V4 => 2,
        crate::Family::V6 => 10,
    }
}

/// The names of the chains of `<family> <table>` (none when it is
/// missing). The kernel dumps every chain of the family; the table is
/// picked here.
pub fn chains(family: crate::Family, table: &str) -> Result<Vec<String>, NetlinkError> {
    let mut found = Vec::new();
    dump(NFT_MSG_GETCHAIN, nfproto(family), &[], &mut |body| {
        let (mut in_table, mut name) = (false, None);
        for (kind, value) in attrs(body.get(4..).unwrap_or_default()) {
            match kind {
                NFTA_CHAIN_TABLE => in_table = string(value) == table,
                NFTA_CHAIN_NAME => name = Some(string(value)),
                _ => {}
            }
        }
        found.extend(name.filter(|_| in_table));
    })?;
    Ok(found)
}

/// Whether `<family> <table>` has chain `name`, asked for that one chain.
pub(crate) fn has_chain(
    family: crate::Family,
    table: &str,
    name: &str,
) -> Result<bool, NetlinkError> {
    let which = [
        attr(NFTA_CHAIN_TABLE, &nul_terminated(table)),
        attr(NFTA_CHAIN_NAME, &nul_terminated(name)),
    ]
    .concat();
    match get(NFT_MSG_GETCHAIN, nfproto(family), &which, &mut |_| {}) {
        Ok(()) => Ok(true),
        Err(NetlinkError::Refused(nix::Error::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}

const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// The nf_tables ruleset generation of this network namespace: the kernel
/// counts it up at every commit, of any table, by anyone. Equal to what
/// we read right after our own last write means nobody wrote since.
pub fn generation() -> Result<u32, NetlinkError> {
    let mut id = None;
    get(NFT_MSG_GETGEN, 0, &[], &mut |body| {
        id = body.get(4..).and_then(|a| {
            attrs(a)
                .find(|(k, _)| *k == NFTA_GEN_ID)
                .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
        });
    })?;
    id.ok_or(NetlinkError::Malformed)
}

pub(crate) fn nul_terminated(name: &str) -> Vec<u8> {
    [name.as_bytes(), &[0]].concat()
}

/// Sends one dump request (`msg`, an NFT_MSG_GET* type, for nfgenmsg
/// `family`, with netlink attributes `attrs`) and hands the body of every
/// reply message (nfgenmsg, then attributes) to `each`.
pub(crate) fn dump(
    msg: u16,
    family: u8,
    attrs: &[u8],
    each: &mut dyn FnMut(&[u8]),
) -> Result<(), NetlinkError> {
    dump_while(msg, family, attrs, &mut |body| {
        each(body);
        true
    })
}

/// [`dump`], stopped as soon as `each` returns false: the socket closes
/// and the kernel drops the rest (its cost goes with it).
pub(crate) fn dump_while(
    msg: u16,
    family: u8,
    attrs: &[u8],
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), NetlinkError> {
    exchange(&request(msg, NLM_F_DUMP, family, attrs), each)
}

/// Asks for one object (`attrs` name it) and hands its message body to
/// `each`; the kernel's ACK ends the answer. A missing object is
/// `Refused(ENOENT)`.
pub(crate) fn get(
    msg: u16,
    family: u8,
    attrs: &[u8],
    each: &mut dyn FnMut(&[u8]),
) -> Result<(), NetlinkError> {
    let mut each = |body: &[u8]| {
        each(body);
        true
    };
    exchange(&request(msg, NLM_F_ACK, family, attrs), &mut each)
}

fn exchange(request: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), NetlinkError> {
    let fd = netfilter_socket(REPLY_TIMEOUT)?;
    exchange_on(&fd, request, each)
}

/// [`exchange`] on a socket the caller keeps (several requests, one after
/// the other, each answered in full before the next).
pub(crate) fn exchange_on(
    fd: &std::os::fd::OwnedFd,
    request: &[u8],
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), NetlinkError> {
    let sys = |step| move |source| NetlinkError::Sys { step, source };
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(sys("send"))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(sys("recv"))?;
        if n == 0 {
            return Err(NetlinkError::Malformed);
        }
        if parse_reply(&buf[..n], each)? {
            return Ok(());
        }
    }
}

/// One netlink attribute (`len`, `type`, value, padded to 4 bytes).
pub(crate) fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(align4(4 + value.len()));
    a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    a.resize(align4(a.len()), 0);
    a
}

/// The (type, value) attributes packed in `b`; stops at the first
/// malformed one.
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        let value = b.get(4..len)?;
        b = b.get(align4(len).min(b.len())..)?;
        Some((kind, value))
    })
}

/// A netfilter netlink socket whose receives give up after `timeout`.
pub(crate) fn netfilter_socket(timeout: Duration) -> Result<std::os::fd::OwnedFd, NetlinkError> {
    let sys = |step| move |source| NetlinkError::Sys { step, source };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(sys("socket"))?;
    let micros = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
    let tv = TimeVal::new(micros / 1_000_000, micros % 1_000_000);
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(sys("setsockopt"))?;
    Ok(fd)
}

/// An nf_tables request of `kind` with `flags` besides NLM_F_REQUEST.
fn request(kind: u16, flags: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
    subsys_request(NFNL_SUBSYS_NFTABLES, kind, flags, family, attrs)
}

/// A request of nfnetlink subsystem `subsys`, message `kind`, with `flags`
/// besides NLM_F_REQUEST.
pub(crate) fn subsys_request(
    subsys: u16,
    kind: u16,
    flags: u16,
    family: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = HEADER + 4 + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&(subsys << 8 | kind).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&SEQ.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: the family (0: every one), NFNETLINK_V0, resource id 0.
    msg.extend_from_slice(&[family, 0, 0, 0]);
    msg.extend_from_slice(attrs);
    msg
}

/// A NUL-terminated netlink string.
pub(crate) fn string(value: &[u8]) -> String {
    let bytes = value.split(|&c| c == 0).next().unwrap_or_default();
    String::from_utf8_lossy(bytes).into_owned()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The (type, body) of each netlink message in one datagram; a malformed
/// header ends it with one `Err(Malformed)`.
pub(crate) fn messages(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), NetlinkError>> {
    std::iter::from_fn(move || {
        if b.len() < HEADER {
            return None;
        }
        let (len, kind) = (u32_at(b, 0)? as usize, u16_at(b, 4)?);
        if len < HEADER || len > b.len() {
            b = &[];
            return Some(Err(NetlinkError::Malformed));
        }
        let body = &b[HEADER..len];
        b = &b[align4(len).min(b.len())..];
        Some(Ok((kind, body)))
    })
}

/// Hands the messages of one datagram to `each`; true once the answer is
/// complete (a dump's DONE, a request's ACK) or `each` wants no more.
fn parse_reply(b: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, NetlinkError> {
    for message in messages(b) {
        let (kind, body) = message?;
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or(NetlinkError::Malformed)? as i32;
                if code != 0 {
                    return Err(NetlinkError::Refused(nix::Error::from_raw(-code)));
                }
                return Ok(true);
            }
            _ => {
                if !each(body) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// (family, name) from an NFT_MSG_NEWTABLE body: nfgenmsg, then attributes.
fn table_of(body: &[u8]) -> Option<(String, String)> {
    let family = match body.first()? {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => return None,
    };
    let name = attrs(body.get(4..)?)
        .find(|(kind, _)| *kind == NFTA_TABLE_NAME)?
        .1;
    Some((family.to_string(), string(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    fn table(family: u8, name: &str) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        body.extend(attr(NFTA_TABLE_NAME, &[name.as_bytes(), &[0]].concat()));
        message(NFNL_SUBSYS_NFTABLES << 8, &body)
    }

    #[test]
    fn tables_are_read_until_done() {
        let mut found = Vec::new();
        let mut each = |body: &[u8]| {
            found.extend(table_of(body));
            true
        };
        let first = [table(2, "cni_hostport"), table(10, "nat")].concat();
        assert!(!parse_reply(&first, &mut each).expect("parse"));
        let last = [table(1, "filter"), message(NLMSG_DONE, &[0; 4])].concat();
        assert!(parse_reply(&last, &mut each).expect("parse"));
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|(f, n)| (f.as_str(), n.as_str()))
            .collect();
        assert_eq!(
            names,
            [("ip", "cni_hostport"), ("ip6", "nat"), ("inet", "filter")]
        );
    }

    #[test]
    fn an_error_reply_and_truncation_are_errors_not_panics() {
        let ack = [
            table(2, "cni_hostport"),
            message(NLMSG_ERROR, &0i32.to_ne_bytes()),
        ]
        .concat();
        let mut got = 0;
        assert!(
            parse_reply(&ack, &mut |_| {
                got += 1;
                true
            })
            .expect("ack"),
            "an ACK ends a request's answer"
        );
        assert_eq!(got, 1);
        let eperm = message(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert!(matches!(
            parse_reply(&eperm, &mut |_| true),
            Err(NetlinkError::Refused(nix::Error::EPERM))
        ));
        let whole = table(2, "cni_hostport");
        for cut in 1..whole.len() {
            let _ = parse_reply(&whole[..cut], &mut |b| table_of(b).is_some());
        }
    }

    /// The generation counts every commit in the namespace, ours or not,
    /// and nothing else moves it.
    #[test]
    fn the_generation_moves_with_every_commit_and_only_then() {
        use portmap_conformance::netns::{prerequisites, Netns};
        if !prerequisites(&["nft"]) {
            return;
        }
        let ns = Netns::new("nl-gen").expect("netns");
        let gen = || ns.run(generation).expect("in netns").expect("generation");
        let first = gen();
        assert_eq!(gen(), first, "reading changes nothing");
        ns.exec("nft", &["add", "table", "ip", "someone_else"])
            .expect("add");
        let second = gen();
        assert_ne!(second, first, "another tool's commit");
        ns.exec("nft", &["list", "ruleset"]).expect("list");
        assert_eq!(gen(), second, "a listing is no commit");
    }

    #[test]
    fn the_request_is_a_table_dump() {
        let r = request(NFT_MSG_GETTABLE, NLM_F_DUMP, 0, &[]);
        assert_eq!(u32_at(&r, 0), Some(20));
        assert_eq!(u16_at(&r, 4), Some(0x0a01));
        assert_eq!(u16_at(&r, 6), Some(0x301));
    }
}
