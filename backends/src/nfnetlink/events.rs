//! nf_tables change notifications (what `nft monitor` reads): removals
//! for `portmap watch`, rule additions for an ADD's receipt.

use super::*;

/// The nf_tables multicast group: every ruleset change in the namespace.
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
/// The maps layout's map and its elements (nftables/maps.rs).
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;

/// Which of our rules an nf_tables removal touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    /// The `cni_hostport` or `cni_hostport_guard` tables (nftables backend).
    pub nftables: bool,
    /// CNI chains, or the built-in chains that jump to them, in the `nat`
    /// and `mangle` tables iptables-nft keeps in nf_tables.
    pub iptables_nft: bool,
}

impl Touched {
    /// Both: what lost notifications may have hidden.
    pub const ALL: Touched = Touched {
        nftables: true,
        iptables_nft: true,
    };

    pub fn any(self) -> bool {
        self.nftables || self.iptables_nft
    }

    fn add(&mut self, other: Touched) {
        self.nftables |= other.nftables;
        self.iptables_nft |= other.iptables_nft;
    }
}

/// Who committed an nf_tables transaction (its NEWGEN notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The generation the commit made (what [`generation`] reads after it).
    pub generation: u32,
    pub pid: u32,
    /// The committing process's name (its comm, at most 15 bytes).
    pub process: String,
}

/// One commit that removed rules, chains or tables of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub touched: Touched,
    /// `None` when its NEWGEN was not seen (notifications were lost).
    pub commit: Option<Commit>,
}

/// A subscription to nf_tables change notifications (what `nft monitor`
/// reads), for `portmap watch`: only removals of ours are reported, each
/// with the commit that made it.
pub struct Events {
    fd: std::os::fd::OwnedFd,
    /// Reused by every wait (one datagram of notifications at a time).
    buf: Vec<u8>,
    /// Removals of the commit whose NEWGEN has not arrived yet, and whether
    /// they were already pending at the start of this wait.
    pending: Touched,
    pending_before: bool,
}

/// How much the kernel may queue for us: a reload of 1,000 containers'
/// rules sends a notification per rule.
const EVENTS_RCVBUF: usize = 8 << 20;

impl Events {
    /// Subscribes in this thread's network namespace.
    pub fn subscribe() -> Result<Events, NetlinkError> {
        let fd = subscribed(REPLY_TIMEOUT)?;
        // Root may exceed rmem_max; elsewhere the default has to do (an
        // overflow is reported as a removal of everything).
        if setsockopt(&fd, sockopt::RcvBufForce, &EVENTS_RCVBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &EVENTS_RCVBUF);
        }
        Ok(Events {
            fd,
            buf: vec![0u8; 64 * 1024],
            pending: Touched::default(),
            pending_before: false,
        })
    }

    /// Waits up to `timeout` for notifications and returns the removals
    /// of ours among them. A removal whose NEWGEN has not come by the end
    /// of the next wait is returned without one.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Removal>, NetlinkError> {
        use nix::poll::{poll, PollFd, PollFlags};
        use std::os::fd::AsFd;
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(source) => {
                return Err(NetlinkError::Sys {
                    step: "poll",
                    source,
                })
            }
        }
        self.pending_before = self.pending.any();
        let mut found = Vec::new();
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => {
                    let (buf, pending) = (&self.buf[..n], &mut self.pending);
                    commits(buf, pending, &mut found);
                }
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => break,
                // The kernel dropped notifications (we were slow): assume the worst.
                Err(nix::Error::ENOBUFS) => {
                    self.pending = Touched::default();
                    found.push(Removal {
                        touched: Touched::ALL,
                        commit: None,
                    });
                }
                Err(source) => {
                    return Err(NetlinkError::Sys {
                        step: "recv",
                        source,
                    })
                }
            }
        }
        if self.pending_before && self.pending.any() {
            found.push(Removal {
                touched: std::mem::take(&mut self.pending),
                commit: None,
            });
        }
        Ok(found)
    }
}

/// Rule notifications, for an ADD to learn where its transaction put its
/// rules (nft prints no handles without `--echo`, which makes it read the
/// whole ruleset first).
pub struct RuleEvents {
    fd: std::os::fd::OwnedFd,
}

const NFT_MSG_NEWRULE: u16 = 6;

impl RuleEvents {
    /// Subscribes in this thread's network namespace. Subscribe before the
    /// transaction: the kernel sends its notifications while committing.
    pub fn subscribe() -> Result<RuleEvents, NetlinkError> {
        Ok(RuleEvents {
            fd: subscribed(REPLY_TIMEOUT)?,
        })
    }

    /// Hands the body of every rule addition queued so far to `each`
    /// (without waiting); false when the kernel dropped some (the socket
    /// overflowed), so the list is not whole.
    pub fn drain_new(&self, each: &mut dyn FnMut(&[u8])) -> Result<bool, NetlinkError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(nix::Error::EAGAIN) => return Ok(true),
                Err(nix::Error::ENOBUFS) => return Ok(false),
                Err(source) => {
                    return Err(NetlinkError::Sys {
                        step: "recv",
                        source,
                    })
                }
            };
            for (kind, body) in messages(&buf[..n]).map_while(Result::ok) {
                if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE {
                    each(body);
                }
            }
        }
    }
}

const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// Our nf_tables tables (ip and ip6).
const OUR_TABLES: [&str; 2] = [crate::nftables::TABLE, crate::nftables::GUARD_TABLE];
/// The built-in chains iptables' jumps to our chains live in.
const HOOK_CHAINS: [&str; 3] = ["PREROUTING", "OUTPUT", "POSTROUTING"];

/// Adds the removals of ours in one datagram to `pending`, and each
/// commit (NEWGEN) that follows some to `found`.
fn commits(b: &[u8], pending: &mut Touched, found: &mut Vec<Removal>) {
    for (kind, body) in messages(b).map_while(Result::ok) {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        if kind & 0xff == NFT_MSG_NEWGEN {
            let touched = std::mem::take(pending);
            if touched.any() {
                found.push(Removal {
                    touched,
                    commit: commit_of(body),
                });
            }
        } else {
            pending.add(touched(kind & 0xff, body));
        }
    }
}

/// What of ours a DELTABLE, DELCHAIN, DELRULE, DELSET or DELSETELEM
/// notification removed.
fn touched(msg: u16, body: &[u8]) -> Touched {
    // ip and ip6 only: our tables and iptables-nft's are of those families.
    if !matches!(body.first(), Some(2 | 10)) {
        return Touched::default();
    }
    let (name_attr, chain_attr) = match msg {
        NFT_MSG_DELTABLE => (NFTA_TABLE_NAME, None),
        NFT_MSG_DELCHAIN => (NFTA_CHAIN_TABLE, Some(NFTA_CHAIN_NAME)),
        NFT_MSG_DELRULE => (NFTA_RULE_TABLE, Some(NFTA_RULE_CHAIN)),
        NFT_MSG_DELSET => (NFTA_SET_TABLE, None),
        NFT_MSG_DELSETELEM => (NFTA_SET_ELEM_LIST_TABLE, None),
        _ => return Touched::default(),
    };
    let (mut table, mut chain) = (None, None);
    for (kind, value) in attrs(body.get(4..).unwrap_or_default()) {
        if kind == name_attr {
            table = Some(string(value));
        } else if Some(kind) == chain_attr {
            chain = Some(string(value));
        }
    }
    let Some(table) = table else {
        return Touched::default();
    };
    let iptables_nft = matches!(table.as_str(), "nat" | "mangle")
        && match (msg, chain.as_deref()) {
            (NFT_MSG_DELTABLE, _) => true,
            (_, Some(c)) if c.starts_with("CNI-") => true,
            // A rule of a built-in chain: ours when it names a CNI chain
            // (the jump's verdict, or our comment).
            (NFT_MSG_DELRULE, Some(c)) if HOOK_CHAINS.contains(&c) => contains(body, b"CNI-"),
            _ => false,
        };
    Touched {
        nftables: OUR_TABLES.contains(&table.as_str()),
        iptables_nft,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The generation and writer of a NEWGEN notification.
fn commit_of(body: &[u8]) -> Option<Commit> {
    let (mut generation, mut pid, mut process) = (None, None, String::new());
    let be32 = |v: &[u8]| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?));
    for (kind, value) in attrs(body.get(4..)?) {
        match kind {
            NFTA_GEN_ID => generation = be32(value),
            NFTA_GEN_PROC_PID => pid = be32(value),
            NFTA_GEN_PROC_NAME => process = string(value),
            _ => {}
        }
    }
    Some(Commit {
        generation: generation?,
        pid: pid.unwrap_or(0),
        process,
    })
}

/// A netfilter socket in the nf_tables group, in this thread's namespace.
fn subscribed(timeout: Duration) -> Result<std::os::fd::OwnedFd, NetlinkError> {
    let fd = netfilter_socket(timeout)?;
    let groups = 1 << (NFNLGRP_NFTABLES - 1);
    nix::sys::socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(|source| {
        NetlinkError::Sys {
            step: "bind",
            source,
        }
    })?;
    Ok(fd)
}

#[cfg(test)]
mod tests;
