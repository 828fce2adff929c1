//! Deleting UDP conntrack entries over ctnetlink, no process: one dump of
//! the family's table, then one delete per entry whose original
//! destination port is one of ours, all on one socket. What
//! `conntrack -D -p udp --orig-port-dst PORT` does (the tool is a
//! ctnetlink client too), but once for every port instead of once per
//! port.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::*;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;
const NLA_F_NESTED: u16 = 0x8000;
/// More entries than any conntrack table holds (nf_conntrack_max is in
/// the hundreds of thousands): a dump past it is not ending.
const MAX_ENTRIES: usize = 1 << 22;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The dump was stopped (after deleting what it had found).
    #[error("conntrack dump abandoned after {entries} entries: {why}")]
    Cut { entries: usize, why: &'static str },
    #[error("{failed} of {matched} conntrack deletions failed, the first: {first}")]
    Delete {
        failed: usize,
        matched: usize,
        first: NetlinkError,
    },
}

/// Deletes every UDP conntrack entry of `family` whose original
/// destination port is in `ports`, in this thread's network namespace,
/// within about `budget` (each receive gives up at the rest of it).
/// Returns how many were deleted. A kernel without ctnetlink (so without
/// conntrack entries to flush) deletes nothing and is no error.
pub fn flush_udp(
    family: crate::Family,
    ports: &BTreeSet<u16>,
    budget: Duration,
) -> Result<usize, ConntrackError> {
    if ports.is_empty() {
        return Ok(0);
    }
    let deadline = Instant::now() + budget;
    let fd = netfilter_socket(REPLY_TIMEOUT.min(budget).max(Duration::from_millis(1)))?;
    let nfproto = nfproto(family);
    let (mut entries, mut cut) = (0usize, None);
    let mut doomed = Vec::new();
    let dumped = exchange_on(&fd, &dump_request(nfproto), &mut |body| {
        entries += 1;
        if let Some(del) = udp_entry(body, nfproto).filter(|(port, _)| ports.contains(port)) {
            doomed.push(del.1);
        }
        if entries >= MAX_ENTRIES {
            cut = Some("too many entries");
        } else if Instant::now() >= deadline {
            cut = Some("out of time");
        }
        cut.is_none()
    });
    match dumped {
        Ok(()) => {}
        // nfnetlink's answer for a subsystem it does not have.
        Err(NetlinkError::Refused(nix::Error::EINVAL)) if entries == 0 => return Ok(0),
        Err(e) if doomed.is_empty() => return Err(e.into()),
        Err(_) => cut = Some("the dump failed"),
    }
    // A cut dump leaves the rest of it queued on this socket.
    let fresh;
    let fd = if cut.is_some() {
        fresh = netfilter_socket(REPLY_TIMEOUT.min(budget).max(Duration::from_millis(1)))?;
        &fresh
    } else {
        &fd
    };
    let (deleted, failed, first) = delete_all(fd, nfproto, &doomed, deadline);
    if let Some(why) = cut {
        return Err(ConntrackError::Cut { entries, why });
    }
    match first {
        Some(first) => Err(ConntrackError::Delete {
            failed,
            matched: doomed.len(),
            first,
        }),
        None => Ok(deleted),
    }
}

/// One delete per entry (its attributes in `doomed`), each answered by
/// its ACK before the next; an entry gone meanwhile (ENOENT) is fine.
/// (deleted, failed, the first failure).
fn delete_all(
    fd: &OwnedFd,
    nfproto: u8,
    doomed: &[Vec<u8>],
    deadline: Instant,
) -> (usize, usize, Option<NetlinkError>) {
    let (mut deleted, mut failed, mut first) = (0, 0, None);
    for (i, attrs) in doomed.iter().enumerate() {
        if Instant::now() >= deadline {
            failed += doomed.len() - i;
            first.get_or_insert(NetlinkError::Sys {
                step: "delete (out of time)",
                source: nix::Error::ETIMEDOUT,
            });
            break;
        }
        match exchange_on(fd, &delete_request(nfproto, attrs), &mut |_| true) {
            Ok(()) => deleted += 1,
            Err(NetlinkError::Refused(nix::Error::ENOENT)) => {}
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    (deleted, failed, first)
}

/// IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of the family.
fn dump_request(nfproto: u8) -> Vec<u8> {
    subsys_request(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        NLM_F_DUMP,
        nfproto,
        &[],
    )
}

/// IPCTNL_MSG_CT_DELETE of the entry `attrs` name. Never without a
/// tuple: a delete that names none flushes the whole table.
fn delete_request(nfproto: u8, attrs: &[u8]) -> Vec<u8> {
    subsys_request(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_ACK,
        nfproto,
        attrs,
    )
}

/// From one dumped entry (nfgenmsg, then attributes) of family `nfproto`
/// that is UDP: its original destination port and the attributes that
/// name it in a delete (its original tuple, and its zone if it has one).
fn udp_entry(body: &[u8], nfproto: u8) -> Option<(u16, Vec<u8>)> {
    if *body.first()? != nfproto {
        return None;
    }
    let (mut orig, mut zone) = (None, None);
    for (kind, value) in attrs(body.get(4..)?) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(value),
            CTA_ZONE => zone = Some(value),
            _ => {}
        }
    }
    let orig = orig?;
    let proto = attrs(orig).find(|(k, _)| *k == CTA_TUPLE_PROTO)?.1;
    let (mut udp, mut port) = (false, None);
    for (kind, value) in attrs(proto) {
        match kind {
            CTA_PROTO_NUM => udp = value.first() == Some(&IPPROTO_UDP),
            CTA_PROTO_DST_PORT => port = Some(u16::from_be_bytes(value.get(..2)?.try_into().ok()?)),
            _ => {}
        }
    }
    let port = port.filter(|_| udp)?;
    let mut del = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig);
    if let Some(zone) = zone {
        del.extend(attr(CTA_ZONE, zone));
    }
    Some((port, del))
}

#[cfg(test)]
mod tests {
    use super::super::tests::message;
    use super::*;
    use crate::Family;

    /// What a dump's entries are: ctnetlink << 8 | IPCTNL_MSG_CT_NEW.
    const CT_NEW: u16 = NFNL_SUBSYS_CTNETLINK << 8;

    /// A dumped entry as the kernel sends it: nfgenmsg, CTA_TUPLE_ORIG
    /// {CTA_TUPLE_IP {src, dst}, CTA_TUPLE_PROTO {num, sport, dport}},
    /// then other attributes (CTA_STATUS here).
    fn entry(nfproto: u8, proto: u8, dport: u16, zone: Option<u16>) -> Vec<u8> {
        let ip = [
            attr(1, &[10, 0, 0, 1]), // CTA_IP_V4_SRC
            attr(2, &[10, 0, 0, 2]), // CTA_IP_V4_DST
        ]
        .concat();
        let l4 = [
            attr(CTA_PROTO_NUM, &[proto]),
            attr(2, &1000u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        let tuple = [
            attr(1 | NLA_F_NESTED, &ip),
            attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &l4),
        ]
        .concat();
        let mut body = vec![nfproto, 0, 0, 0];
        body.extend(attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple));
        body.extend(attr(3, &8u32.to_be_bytes())); // CTA_STATUS
        if let Some(z) = zone {
            body.extend(attr(CTA_ZONE, &z.to_be_bytes()));
        }
        body
    }

    #[test]
    fn the_requests_are_known_bytes() {
        let dump = dump_request(2);
        assert_eq!(
            dump,
            [
                &20u32.to_ne_bytes()[..],
                &0x0101u16.to_ne_bytes(), // ctnetlink << 8 | CT_GET
                &0x0301u16.to_ne_bytes(), // REQUEST | DUMP
                &SEQ.to_ne_bytes(),
                &[0; 4],
                &[2, 0, 0, 0], // AF_INET, v0, res id 0
            ]
            .concat()
        );
        let del = delete_request(10, &attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &[1, 2, 3, 4]));
        assert_eq!(u32_at(&del, 0), Some(28));
        assert_eq!(u16_at(&del, 4), Some(0x0102), "ctnetlink << 8 | CT_DELETE");
        assert_eq!(u16_at(&del, 6), Some(0x0005), "REQUEST | ACK");
        assert_eq!(&del[16..20], &[10, 0, 0, 0]);
        assert_eq!(&del[20..], &[8, 0, 1, 0x80, 1, 2, 3, 4][..]);
    }

    #[test]
    fn a_udp_entry_gives_its_port_and_its_tuple_back() {
        let body = entry(2, IPPROTO_UDP, 5353, None);
        let (port, del) = udp_entry(&body, 2).expect("udp entry");
        assert_eq!(port, 5353);
        // The delete names the entry by exactly the tuple it was dumped with.
        let orig_len = usize::from(u16_at(&body, 4).expect("len"));
        assert_eq!(del, body[4..4 + align4(orig_len)]);
        assert_eq!(u16_at(&del, 2), Some(CTA_TUPLE_ORIG | NLA_F_NESTED));
    }

    #[test]
    fn the_zone_goes_with_the_tuple() {
        let body = entry(2, IPPROTO_UDP, 53, Some(7));
        let (_, del) = udp_entry(&body, 2).expect("udp entry");
        let got: Vec<(u16, Vec<u8>)> = attrs(&del).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], (CTA_ZONE, 7u16.to_be_bytes().to_vec()));
    }

    #[test]
    fn tcp_other_families_and_garbage_are_skipped() {
        assert_eq!(udp_entry(&entry(2, 6, 5353, None), 2), None, "tcp");
        assert_eq!(
            udp_entry(&entry(10, IPPROTO_UDP, 5353, None), 2),
            None,
            "ipv6 asked for ipv4"
        );
        let whole = entry(2, IPPROTO_UDP, 5353, None);
        for cut in 0..whole.len() {
            let _ = udp_entry(&whole[..cut], 2);
        }
        // A whole dump datagram: two entries and DONE.
        let datagram = [
            message(CT_NEW, &entry(2, IPPROTO_UDP, 1, None)),
            message(CT_NEW, &entry(2, 6, 2, None)),
            message(CT_NEW, &entry(2, IPPROTO_UDP, 3, None)),
            message(NLMSG_DONE, &[0; 4]),
        ]
        .concat();
        let mut ports = Vec::new();
        let done = parse_reply(&datagram, &mut |b| {
            ports.extend(udp_entry(b, 2).map(|e| e.0));
            true
        })
        .expect("parse");
        assert!(done);
        assert_eq!(ports, [1, 3]);
    }

    /// Entries inserted with `conntrack -I` in a namespace of the test's
    /// own: the flush deletes exactly the UDP ones of the family towards
    /// the ports given, and leaves TCP, other ports and the other family.
    #[test]
    fn a_flush_deletes_exactly_its_ports_entries() {
        use portmap_conformance::netns::{prerequisites, Netns};
        if !prerequisites(&["conntrack"]) {
            return;
        }
        let ns = Netns::new("ct-flush").expect("netns");
        let insert = |proto: &str, src: &str, dst: &str, sport: u16, dport: u16| {
            let (sport, dport) = (sport.to_string(), dport.to_string());
            let mut args = vec!["-I", "-p", proto, "-s", src, "-d", dst];
            args.extend(["--sport", &sport, "--dport", &dport, "-t", "120"]);
            if proto == "tcp" {
                args.extend(["--state", "ESTABLISHED"]);
            }
            ns.exec("conntrack", &args).expect("conntrack -I");
        };
        for (sport, dport) in [(1000, 5353), (1001, 5353), (1000, 5354), (1000, 6000)] {
            insert("udp", "10.0.0.1", "10.0.0.2", sport, dport);
        }
        insert("tcp", "10.0.0.1", "10.0.0.2", 1000, 5353);
        insert("udp", "fd00::1", "fd00::2", 1000, 5353);
        // Many ports at once: the flush costs the same as for one.
        let ports: BTreeSet<u16> = [5353, 5354].into_iter().chain(20_000..21_000).collect();
        let deleted = ns
            .run(|| flush_udp(Family::V4, &ports, Duration::from_secs(5)))
            .expect("in netns")
            .expect("flush");
        assert_eq!(deleted, 3);
        let mut left = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let out = ns
                .exec("conntrack", &["-L", "-f", family, "-o", "extended"])
                .expect("conntrack -L");
            // "ipv4 2 udp 17 119 src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=6000 ..."
            left.extend(out.lines().filter(|l| l.contains("src=")).map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let dport = f.iter().find_map(|w| w.strip_prefix("dport="));
                format!("{} {} {}", f[0], f[2], dport.unwrap_or_default())
            }));
        }
        left.sort();
        assert_eq!(
            left,
            ["ipv4 tcp 5353", "ipv4 udp 6000", "ipv6 udp 5353"],
            "what the flush left"
        );
        // Nothing left to delete: a second flush is a no-op, not an error.
        let again = ns
            .run(|| flush_udp(Family::V4, &ports, Duration::from_secs(5)))
            .expect("in netns")
            .expect("flush");
        assert_eq!(again, 0);
    }
}
