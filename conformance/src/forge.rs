//! Forged packets, as a container with CAP_NET_RAW can send them: a whole
//! Ethernet frame (IPv4 + TCP SYN, checksums computed here) written to an
//! `AF_PACKET` socket on the container's interface, whatever its routes
//! say, and the reply read off the same socket. Used to show that the
//! host does (not) answer packets it should never accept, such as ones
//! to 127.0.0.1 arriving from a container. Every wait is bounded in time
//! and in frames read.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    self, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrLike,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::netns::{Netns, NetnsError};

pub type Mac = [u8; 6];

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPV4_HEADER: usize = 20;
const TCP_HEADER: usize = 20;
const PROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// How often (milliseconds) the receive loop looks at the clock.
const TICK_MS: i64 = 50;
/// At most this many frames are read per probe (a busy link cannot keep
/// the loop going past its deadline either).
const MAX_FRAMES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("no interface {ifname}: {source}")]
    Interface {
        ifname: String,
        #[source]
        source: Errno,
    },
    #[error("{what} (packet socket on {ifname}): {source}")]
    Socket {
        what: &'static str,
        ifname: String,
        #[source]
        source: Errno,
    },
    #[error("no Ethernet address for {ifname} in `ip -j link` output: {output}")]
    NoMac { ifname: String, output: String },
}

/// The Internet checksum (RFC 1071) of `data`: the ones' complement of
/// the ones' complement sum of its 16-bit big-endian words, an odd last
/// byte padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !(sum as u16)
}

/// One forged TCP SYN: who claims to send it, where to, and how it is
/// framed on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syn {
    /// The sending interface's own address.
    pub src_mac: Mac,
    /// The next hop's (the gateway's) address.
    pub dst_mac: Mac,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The initial sequence number; a reply acknowledges `seq + 1`.
    pub seq: u32,
}

/// What came back for a [`Syn`], and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A listener accepted the SYN.
    SynAck(SocketAddrV4),
    /// A TCP stack refused it (no listener): it was still processed.
    Rst(SocketAddrV4),
}

impl Reply {
    pub fn describe(&self) -> String {
        match self {
            Reply::SynAck(from) => format!("SYN-ACK from {from}"),
            Reply::Rst(from) => format!("RST from {from}"),
        }
    }
}

impl Syn {
    /// The IPv4 header (20 bytes, DF, TTL 64, checksum filled in) of a
    /// packet whose payload is `payload_len` bytes of protocol `proto`.
    fn ipv4_header(&self, proto: u8, payload_len: usize) -> [u8; IPV4_HEADER] {
        let total = u16::try_from(IPV4_HEADER + payload_len).unwrap_or(u16::MAX);
        let mut h = [0u8; IPV4_HEADER];
        h[0] = 0x45; // version 4, 5 words
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6] = 0x40; // don't fragment
        h[8] = 64; // TTL
        h[9] = proto;
        h[12..16].copy_from_slice(&self.src.ip().octets());
        h[16..20].copy_from_slice(&self.dst.ip().octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// The TCP header (no options, window 64240), its checksum over the
    /// IPv4 pseudo-header and the segment.
    fn tcp_header(&self) -> [u8; TCP_HEADER] {
        let mut t = [0u8; TCP_HEADER];
        t[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        t[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[12] = 5 << 4; // data offset: 5 words
        t[13] = TCP_SYN;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let mut pseudo = Vec::with_capacity(12 + TCP_HEADER);
        pseudo.extend_from_slice(&self.src.ip().octets());
        pseudo.extend_from_slice(&self.dst.ip().octets());
        pseudo.extend_from_slice(&[0, PROTO_TCP]);
        pseudo.extend_from_slice(&(TCP_HEADER as u16).to_be_bytes());
        pseudo.extend_from_slice(&t);
        let sum = checksum(&pseudo);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        t
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HEADER + IPV4_HEADER + TCP_HEADER);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&self.ipv4_header(PROTO_TCP, TCP_HEADER));
        f.extend_from_slice(&self.tcp_header());
        f
    }

    /// Whether `frame` answers this SYN: IPv4 TCP to our address and port,
    /// SYN-ACK or RST acknowledging `seq + 1`. The source may be anything
    /// (127.0.0.1, or the container a DNAT led to): any answer proves the
    /// SYN was accepted somewhere.
    pub fn reply_in(&self, frame: &[u8]) -> Option<Reply> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        if ethertype != ETHERTYPE_IPV4 {
            return None;
        }
        let ip = frame.get(ETH_HEADER..)?;
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        if ip[0] >> 4 != 4 || ihl < IPV4_HEADER || *ip.get(9)? != PROTO_TCP {
            return None;
        }
        let word = |b: &[u8], at: usize| -> Option<[u8; 4]> { b.get(at..at + 4)?.try_into().ok() };
        let from = Ipv4Addr::from(word(ip, 12)?);
        let to = Ipv4Addr::from(word(ip, 16)?);
        let tcp = ip.get(ihl..ihl + TCP_HEADER)?;
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let ack = u32::from_be_bytes(word(tcp, 8)?);
        let flags = tcp[13];
        if to != *self.src.ip()
            || dport != self.src.port()
            || flags & TCP_ACK == 0
            || ack != self.seq.wrapping_add(1)
        {
            return None;
        }
        let from = SocketAddrV4::new(from, sport);
        if flags & TCP_RST != 0 {
            Some(Reply::Rst(from))
        } else if flags & TCP_SYN != 0 {
            Some(Reply::SynAck(from))
        } else {
            None
        }
    }

    /// Sends the SYN on `ifname` of the calling thread's network namespace
    /// (run it inside one with [`Netns::run`]) and waits up to `wait` for
    /// the reply; the SYN is sent again once halfway, in case the first
    /// was lost while the far end resolved our address. `None`: nothing
    /// answered.
    pub fn probe(&self, ifname: &str, wait: Duration) -> Result<Option<Reply>, ForgeError> {
        let sock = PacketSocket::bind(ifname)?;
        let frame = self.frame();
        let start = Instant::now();
        sock.send(&frame)?;
        let mut resent = false;
        let mut buf = [0u8; 2048];
        for _ in 0..MAX_FRAMES {
            let elapsed = start.elapsed();
            if elapsed >= wait {
                break;
            }
            if !resent && elapsed >= wait / 2 {
                sock.send(&frame)?;
                resent = true;
            }
            if let Some(n) = sock.recv(&mut buf)? {
                if let Some(reply) = self.reply_in(&buf[..n]) {
                    return Ok(Some(reply));
                }
            }
        }
        Ok(None)
    }
}

/// An `AF_PACKET` raw socket bound to one interface (all protocols), with
/// a short receive timeout so that loops can watch their deadline.
struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
}

impl PacketSocket {
    fn bind(ifname: &str) -> Result<PacketSocket, ForgeError> {
        let err = |what| {
            let ifname = ifname.to_string();
            move |source| ForgeError::Socket {
                what,
                ifname,
                source,
            }
        };
        let index =
            nix::net::if_::if_nametoindex(ifname).map_err(|source| ForgeError::Interface {
                ifname: ifname.to_string(),
                source,
            })?;
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .map_err(err("socket"))?;
        let ll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: i32::try_from(index).map_err(|_| err("interface index")(Errno::EINVAL))?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `ll` is an initialised sockaddr_ll living across the
        // call, and `len` is its exact size.
        let addr = unsafe { LinkAddr::from_raw((&raw const ll).cast(), Some(len)) }
            .ok_or_else(|| err("link address")(Errno::EINVAL))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(err("bind"))?;
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::milliseconds(TICK_MS),
        )
        .map_err(err("receive timeout"))?;
        Ok(PacketSocket {
            fd,
            ifname: ifname.to_string(),
        })
    }

    fn send(&self, frame: &[u8]) -> Result<(), ForgeError> {
        socket::send(self.fd.as_raw_fd(), frame, MsgFlags::empty())
            .map(|_| ())
            .map_err(|source| ForgeError::Socket {
                what: "send",
                ifname: self.ifname.clone(),
                source,
            })
    }

    /// One frame, or `None` when none came within a tick.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, ForgeError> {
        match socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
            Err(source) => Err(ForgeError::Socket {
                what: "receive",
                ifname: self.ifname.clone(),
                source,
            }),
        }
    }
}

/// The Ethernet address of `ifname` in `ns` (from `ip -j link show`).
pub fn mac_of(ns: &Netns, ifname: &str) -> Result<Mac, ForgeError> {
    let output = ns.exec("ip", &["-j", "link", "show", "dev", ifname])?;
    serde_json::from_str::<serde_json::Value>(&output)
        .ok()
        .and_then(|v| v.get(0)?.get("address")?.as_str().and_then(parse_mac))
        .ok_or_else(|| ForgeError::NoMac {
            ifname: ifname.to_string(),
            output: output.trim().to_string(),
        })
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::prerequisites;

    #[test]
    fn checksum_matches_rfc_1071_and_a_known_ipv4_header() {
        // RFC 1071, section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // An odd length pads the last byte: 0001 + f200 = f201.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2]), !0xf201);
        // A textbook IPv4 header (192.168.0.1 -> 192.168.0.199, UDP),
        // checksum field zeroed: b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        // With the checksum in place, the header sums to zero.
        let mut filled = header;
        filled[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&filled), 0);
        assert_eq!(checksum(&[]), 0xffff);
    }

    fn syn() -> Syn {
        Syn {
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src: "10.88.0.5:40000".parse().expect("addr"),
            dst: "127.0.0.1:9999".parse().expect("addr"),
            seq: 0x0102_0304,
        }
    }

    /// The bytes, computed independently (Python's struct and the same
    /// RFC 1071 sum): IPv4 checksum b172, TCP checksum 643e.
    #[test]
    fn syn_frame_bytes() {
        let want: [u8; 54] = [
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
            0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0xb1, 0x72, 0x0a, 0x58,
            0x00, 0x05, 0x7f, 0x00, 0x00, 0x01, 0x9c, 0x40, 0x27, 0x0f, 0x01, 0x02, 0x03, 0x04,
            0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xfa, 0xf0, 0x64, 0x3e, 0x00, 0x00,
        ];
        let frame = syn().frame();
        assert_eq!(frame, want);
        // Each checksum verifies: the header, and pseudo-header + segment.
        assert_eq!(checksum(&frame[14..34]), 0);
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&frame[34..]);
        assert_eq!(checksum(&pseudo), 0);
    }

    /// A reply frame to `syn()`: from `from`, with `flags` and `ack`.
    fn reply(from: &str, flags: u8, ack: u32) -> Vec<u8> {
        let s = syn();
        let back = Syn {
            src_mac: s.dst_mac,
            dst_mac: s.src_mac,
            src: from.parse().expect("addr"),
            dst: s.src,
            seq: 7,
        };
        let mut f = back.frame();
        f[14 + 20 + 8..14 + 20 + 12].copy_from_slice(&ack.to_be_bytes());
        f[14 + 20 + 13] = flags;
        f
    }

    #[test]
    fn replies_are_matched_by_port_and_acknowledged_sequence() {
        let s = syn();
        let from: SocketAddrV4 = "127.0.0.1:9999".parse().expect("addr");
        assert_eq!(
            s.reply_in(&reply("127.0.0.1:9999", 0x12, 0x0102_0305)),
            Some(Reply::SynAck(from))
        );
        assert_eq!(
            s.reply_in(&reply("127.0.0.1:9999", 0x14, 0x0102_0305)),
            Some(Reply::Rst(from))
        );
        // A DNAT's target answering un-NATed still counts, by its address.
        assert_eq!(
            s.reply_in(&reply("10.88.0.6:80", 0x12, 0x0102_0305)),
            Some(Reply::SynAck("10.88.0.6:80".parse().expect("addr")))
        );
        // Wrong acknowledgement, no ACK flag, our own SYN, truncated, not IPv4.
        assert_eq!(
            s.reply_in(&reply("127.0.0.1:9999", 0x12, 0x0102_0304)),
            None
        );
        assert_eq!(
            s.reply_in(&reply("127.0.0.1:9999", 0x02, 0x0102_0305)),
            None
        );
        assert_eq!(s.reply_in(&s.frame()), None);
        assert_eq!(
            s.reply_in(&reply("127.0.0.1:9999", 0x12, 0x0102_0305)[..40]),
            None
        );
        let mut arp = reply("127.0.0.1:9999", 0x12, 0x0102_0305);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(s.reply_in(&arp), None);
        assert_eq!(s.reply_in(&[]), None);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("66:20:2f:35:e5:d2"),
            Some([0x66, 0x20, 0x2f, 0x35, 0xe5, 0xd2])
        );
        assert_eq!(parse_mac("66:20:2f:35:e5"), None);
        assert_eq!(parse_mac("66:20:2f:35:e5:d2:00"), None);
        assert_eq!(parse_mac("66:20:2f:35:e5:zz"), None);
        assert_eq!(parse_mac("6:20:2f:35:e5:d2"), None);
    }

    /// Through a real veth pair: the kernel accepts the forged SYN (so the
    /// checksums are right) and answers SYN-ACK from a listener, RST from
    /// a closed port; a SYN to an address nobody has gets nothing.
    #[test]
    fn a_forged_syn_gets_the_kernels_answer() {
        if !prerequisites(&[]) {
            return;
        }
        let near = Netns::new("forge-near").expect("netns");
        let far = Netns::new("forge-far").expect("netns");
        near.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            far.name(),
        ])
        .expect("veth");
        for (ns, addr) in [(&near, "10.123.0.1/24"), (&far, "10.123.0.2/24")] {
            ns.ip(&["addr", "add", addr, "dev", "eth0"]).expect("addr");
            ns.ip(&["link", "set", "eth0", "up"]).expect("up");
        }
        let listener = far
            .run(|| std::net::TcpListener::bind("10.123.0.2:7000"))
            .expect("run")
            .expect("listen");
        let syn = |dst: &str| Syn {
            src_mac: mac_of(&near, "eth0").expect("near mac"),
            dst_mac: mac_of(&far, "eth0").expect("far mac"),
            src: "10.123.0.1:41000".parse().expect("addr"),
            dst: dst.parse().expect("addr"),
            seq: 12345,
        };
        let wait = Duration::from_secs(2);
        let ask = |s: Syn| {
            near.run(|| s.probe("eth0", wait))
                .expect("run")
                .expect("probe")
        };
        assert_eq!(
            ask(syn("10.123.0.2:7000")),
            Some(Reply::SynAck("10.123.0.2:7000".parse().expect("addr")))
        );
        assert_eq!(
            ask(syn("10.123.0.2:7001")),
            Some(Reply::Rst("10.123.0.2:7001".parse().expect("addr")))
        );
        let start = Instant::now();
        assert_eq!(ask(syn("10.123.0.99:7000")), None);
        assert!(start.elapsed() < wait + Duration::from_secs(1), "bounded");
        drop(listener);
    }
}
