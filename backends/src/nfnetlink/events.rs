//! nf_tables change notifications (what `nft monitor` reads): removals
//! for `portmap watch`, rule additions for an ADD's receipt.

use super::*;

/// The nf_tables multicast group: every ruleset change in the namespace.
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;

/// A subscription to nf_tables change notifications (what `nft monitor`
/// reads), for `portmap watch`.
pub struct Events {
    fd: std::os::fd::OwnedFd,
    /// Reused by every wait (one datagram of notifications at a time).
    buf: Vec<u8>,
}

impl Events {
    /// Subscribes in this thread's network namespace; `timeout` bounds
    /// each [`Events::removed`] wait.
    pub fn subscribe(timeout: Duration) -> Result<Events, NetlinkError> {
        Ok(Events {
            fd: subscribed(timeout)?,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Waits up to the timeout; true when something removed a table, a
    /// chain or a rule (a flush, a reload, a delete, ours included).
    pub fn removed(&mut self) -> Result<bool, NetlinkError> {
        match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
            Ok(n) => Ok(has_removal(&self.buf[..n])),
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => Ok(false),
            // The kernel dropped notifications (we were slow): assume the worst.
            Err(nix::Error::ENOBUFS) => Ok(true),
            Err(source) => Err(NetlinkError::Sys {
                step: "recv",
                source,
            }),
        }
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

/// Whether a datagram of notifications holds a table, chain or rule removal.
fn has_removal(b: &[u8]) -> bool {
    messages(b).map_while(Result::ok).any(|(kind, _)| {
        kind >> 8 == NFNL_SUBSYS_NFTABLES
            && matches!(
                kind & 0xff,
                NFT_MSG_DELTABLE | NFT_MSG_DELCHAIN | NFT_MSG_DELRULE
            )
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
mod tests {
    use super::super::tests::message;
    use super::*;

    #[test]
    fn removals_are_told_from_additions() {
        let kind = |msg: u16| NFNL_SUBSYS_NFTABLES << 8 | msg;
        let add_rule = message(kind(6), &[2, 0, 0, 0]);
        let del_rule = message(kind(NFT_MSG_DELRULE), &[2, 0, 0, 0]);
        let del_table = message(kind(NFT_MSG_DELTABLE), &[2, 0, 0, 0]);
        assert!(!has_removal(&add_rule));
        assert!(has_removal(&[add_rule.clone(), del_rule].concat()));
        assert!(has_removal(&del_table));
        assert!(
            !has_removal(&del_table[..HEADER - 1]),
            "truncated: no panic"
        );
    }

    /// A real subscription in a namespace of the test's own: a rule deleted
    /// by nft is seen, an added one is not a removal.
    #[test]
    fn a_subscription_sees_a_flush() {
        use portmap_conformance::netns::{prerequisites, Netns};
        if !prerequisites(&["nft"]) {
            return;
        }
        let ns = Netns::new("events").expect("netns");
        ns.exec("nft", &["add", "table", "ip", "pmt_events"])
            .expect("table");
        ns.exec("nft", &["add", "chain", "ip", "pmt_events", "c"])
            .expect("chain");
        let seen = ns
            .run(|| {
                let mut events = Events::subscribe(Duration::from_millis(300)).expect("subscribe");
                let quiet = events.removed().expect("recv");
                std::process::Command::new("nft")
                    .args(["flush", "ruleset"])
                    .status()
                    .expect("nft");
                let mut removed = false;
                for _ in 0..10 {
                    removed |= events.removed().expect("recv");
                }
                (quiet, removed)
            })
            .expect("in netns");
        assert_eq!(seen, (false, true));
    }
}
