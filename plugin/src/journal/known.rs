//! What the journal knows of a container's attachments (their networks
//! and addresses: nftables rules record neither), and the ledger: the
//! nf_tables generation right after our own last write, which tells
//! whether anybody else wrote since (then receipts and "no entry, no
//! rules" may not hold), and a ring of our recent commits (`watch`).

use std::net::IpAddr;

use portmap_backends::{Attachment, ContainerKey, Known};

use super::dirs::Kind;
use super::{parse_entry, read_entry, safe, Entry, Journal, JournalError, RETIRED};

/// The ledger's file in the namespace's directory: not a container ID
/// (those start alphanumeric), so never taken for one.
const LEDGER: &str = "_nf_tables.generation";
/// Our recent commits, `from to` per line: generations in (from, to] were
/// made by a portmap holding the plugin lock (`watch` ignores them).
const OWN: &str = "_nf_tables.own";
/// How many commands' commits the ring remembers: `watch` looks within a
/// second of them, when at most a few dozen ran.
const OWN_RING: usize = 64;

/// `ring` with our commits (from, to] added: one range with the previous
/// when back to back, the oldest dropped beyond [`OWN_RING`].
fn with_own(mut ring: Vec<(u32, u32)>, from: u32, to: u32) -> Vec<(u32, u32)> {
    match ring.last_mut() {
        Some(last) if last.1 == from => last.1 = to,
        _ => ring.push((from, to)),
    }
    let start = ring.len().saturating_sub(OWN_RING);
    ring.split_off(start)
}

fn addrs_of(entry: &Entry) -> Vec<IpAddr> {
    [entry.request.v4, entry.request.v6]
        .into_iter()
        .flatten()
        .map(|a| a.addr)
        .collect()
}

impl Journal {
    /// Every entry of container `id`, in any network and interface, with
    /// whether it is retired (a DEL or GC of it did not finish).
    pub fn entries_of(&self, id: &str) -> Vec<(Entry, bool)> {
        let Ok(Some(mut dir)) = self.container(id).map(|d| d.and_then(|d| d.trusted().ok())) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for (name, kind) in dir.list().unwrap_or_default() {
            if kind != Kind::Other || name.starts_with('.') {
                continue;
            }
            let retired = name.ends_with(&format!(".json{RETIRED}"));
            if name.ends_with(".json") || retired {
                if let Ok(entry) = read_entry(&dir, &name) {
                    found.push((entry, retired));
                }
            }
        }
        found
    }

    /// The entry of attachment `key` on `ifname` as it is now (`None`:
    /// removed or retired since), for a restore about to write.
    pub fn entry(&self, key: &ContainerKey, ifname: &str) -> Result<Option<Entry>, JournalError> {
        let Some(prefix) = Self::prefix(key).filter(|_| safe(ifname)) else {
            return Ok(None);
        };
        let Some(dir) = self.container(&key.container_id)? else {
            return Ok(None);
        };
        let dir = dir.trusted()?;
        let name = format!("{prefix}{ifname}.json");
        let unreadable = |reason| JournalError::Unreadable {
            path: dir.path().join(&name),
            reason,
        };
        match dir.read(&name) {
            Ok(text) => parse_entry(&text).map(Some).map_err(unreadable),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unreadable(e.to_string())),
        }
    }

    /// What is known of the attachment `key` (all its interfaces) and of
    /// the container's other attachments (live entries of other networks).
    pub fn known(&self, key: &ContainerKey) -> Known {
        let mut addrs: Option<Vec<IpAddr>> = None;
        let mut others = Vec::new();
        for (entry, retired) in self.entries_of(&key.container_id) {
            if entry.request.key.network == key.network {
                addrs.get_or_insert_with(Vec::new).extend(addrs_of(&entry));
            } else if !retired {
                others.extend(addrs_of(&entry));
            }
        }
        Known { addrs, others }
    }

    /// The attachments of `keys`, with the addresses their entries give
    /// (GC: what nftables rules, which record no network, may lose).
    pub fn attachments(&self, keys: &[ContainerKey]) -> Vec<Attachment> {
        keys.iter()
            .filter_map(|key| {
                Some(Attachment {
                    key: key.clone(),
                    addrs: self.known(key).addrs?,
                })
            })
            .collect()
    }

    /// Every attachment with a live entry (`list`, `migrate`: which network
    /// an nftables rule, by the address it leads to, is of).
    pub fn all_attachments(&self) -> Vec<Attachment> {
        let keys: Vec<ContainerKey> = self
            .entries()
            .into_iter()
            .flatten()
            .map(|(_, e)| e.request.key)
            .collect();
        self.attachments(&keys)
    }

    /// The nf_tables generation recorded after our last write, if any.
    pub fn ledger(&self) -> Option<u32> {
        let (_, netns) = self.open(false).ok()??;
        let text = netns.read(LEDGER).ok()?;
        std::str::from_utf8(&text).ok()?.trim().parse().ok()
    }

    /// Records `generation` (read right after a write of ours), or forgets
    /// it: a hint, so not made durable, and a failure only costs the next
    /// command a whole read.
    pub fn write_ledger(&self, generation: Option<u32>) {
        let Ok(Some((_, netns))) = self.open(generation.is_some()) else {
            return;
        };
        let _ = match generation {
            Some(g) => netns.replace(LEDGER, g.to_string().as_bytes(), false),
            None => netns.remove(LEDGER),
        };
        // Called under the plugin lock, after our writes: the commits since
        // we took it are ours.
        if let (Some(from), Some(to)) = (crate::lock::generation_at_lock(), generation) {
            if from != to {
                let ring = with_own(Self::read_own(&netns), from, to);
                let text: String = ring.iter().map(|(f, t)| format!("{f} {t}\n")).collect();
                let _ = netns.replace(OWN, text.as_bytes(), false);
            }
        }
    }

    /// The ranges of recent commits of ours (see [`OWN`]), oldest first.
    pub fn own_commits(&self) -> Vec<(u32, u32)> {
        match self.open(false) {
            Ok(Some((_, netns))) => Self::read_own(&netns),
            _ => Vec::new(),
        }
    }

    fn read_own(netns: &super::dirs::Dir) -> Vec<(u32, u32)> {
        let text = netns.read(OWN).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                let (from, to) = l.split_once(' ')?;
                Some((from.parse().ok()?, to.parse().ok()?))
            })
            .collect()
    }

    /// Whether nobody wrote nf_tables since our last write: the journal
    /// then knows every attachment of ours that has rules, and each one's
    /// receipt names all of them. `now`: the generation read just now.
    pub fn ledger_holds(&self, now: Option<u32>) -> bool {
        now.is_some() && now == self.ledger()
    }

    /// The namespace's directory holds nothing but the ledger (or nothing).
    pub(super) fn only_ledger_left(netns: &mut super::dirs::Dir) -> bool {
        netns
            .list()
            .is_ok_and(|names| names.iter().all(|(n, _)| n == LEDGER || n == OWN))
    }

    /// Removes the ledger (and the ring), so an empty namespace directory
    /// can go.
    pub(super) fn drop_ledger(netns: &super::dirs::Dir) {
        let _ = netns.remove(LEDGER);
        let _ = netns.remove(OWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_merges_back_to_back_commands_and_keeps_the_newest() {
        let ring = with_own(with_own(Vec::new(), 3, 5), 5, 6);
        assert_eq!(ring, [(3, 6)], "nobody wrote between: one range");
        let ring = with_own(ring, 8, 9);
        assert_eq!(ring, [(3, 6), (8, 9)], "generation 7 was somebody else's");
        let mut ring = Vec::new();
        for i in 0..100u32 {
            ring = with_own(ring, 3 * i, 3 * i + 1);
        }
        assert_eq!(ring.len(), OWN_RING);
        assert_eq!(ring.last(), Some(&(297, 298)));
    }
}
