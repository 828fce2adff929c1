//! The journal of installed containers, for `portmap restore` after a
//! firewall reload wiped our rules. One file per attachment,
//! `<netns>/<container id>/<network>:<ifname>.json`, holds the validated
//! request and the backend that installed it; beside it a receipt of where
//! the rules went. Kept per network namespace (a restore run in one
//! namespace never touches another's), in /run (tmpfs): rules and journal
//! both end at reboot.
//!
//! ADD writes the entry before the rules (an entry that cannot be written
//! fails the ADD with no rules made) and removes it again when the rules
//! fail; DEL and GC retire entries before the rules (renamed out of a
//! restore's sight: a DEL killed half-way never leaves an entry that a
//! restore would bring back) and remove them once the rules are gone.
//! So a container ID the journal has no file for has no rules of ours,
//! and its ADD need not search the firewall for rules to replace.
//!
//! Nothing is followed through a symlink (see [`dirs`]): the state
//! directory and this namespace's are refused when they are symlinks or
//! others may write to them, and a symlink where a container's directory,
//! an entry or a temp file should be is never written, read or removed
//! through.

mod dirs;

use std::path::{Path, PathBuf};

pub use dirs::{temp_name, Refusal, TEMP_TRIES};
use dirs::{Dir, Kind};

use portmap_backends::{host, BackendKind, ContainerKey, Receipt, Request};
use serde::{Deserialize, Serialize};

pub const DEFAULT_DIR: &str = "/run/cni/portmap";
/// Overrides [`DEFAULT_DIR`] (tests, unusual hosts).
pub const DIR_ENV: &str = "PORTMAP_STATE_DIR";
const FORMAT: u32 = 1;
/// Appended to a retired entry's name: no longer `.json`, same prefix.
const RETIRED: &str = ".retired";
/// A receipt's file: `<id>/<network>:<ifname>.receipt`, beside the entry.
const RECEIPT: &str = ".receipt";

/// The state directory, holding one journal per network namespace:
/// `$PORTMAP_STATE_DIR`, else [`DEFAULT_DIR`].
pub fn state_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// Where the backend that installed a container put its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipted {
    pub backend: BackendKind,
    #[serde(flatten)]
    pub receipt: Receipt,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot find this network namespace: {0}")]
    Netns(std::io::Error),
    #[error("cannot write journal entry {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove journal entry {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot retire journal entry {path}: {source}")]
    Retire {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read journal entry {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "{what} of {len} bytes is too long for the journal (a file name has at most {NAME_MAX})"
    )]
    TooLong { what: &'static str, len: usize },
    #[error("refusing journal directory {path}: {what}")]
    Unsafe { path: PathBuf, what: Refusal },
    #[error("cannot {doing} journal directory {path}: {source}")]
    Dir {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What it takes to reinstall one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    pub ifname: String,
    /// `CNI_NETNS` at ADD: a container whose namespace is gone is gone,
    /// whatever the journal says (a firewall reload never removes one).
    #[serde(default)]
    pub netns: String,
    /// The backend that installed it (stored by its name).
    pub backend: BackendKind,
    pub request: Request,
}

impl Entry {
    pub fn new(ifname: &str, netns: &str, backend: BackendKind, request: Request) -> Entry {
        Entry {
            format: FORMAT,
            ifname: ifname.to_string(),
            netns: netns.to_string(),
            backend,
            request,
        }
    }

    /// Whether the container's namespace no longer exists: it was removed
    /// without our DEL (by another binary, or a runtime that crashed).
    /// Only ENOENT says so; another error says nothing (`Err`: keep the
    /// entry). An entry without a namespace (older ones) is never stale.
    pub fn is_stale(&self) -> std::io::Result<bool> {
        if self.netns.is_empty() {
            return Ok(false);
        }
        match std::fs::metadata(&self.netns) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// One network namespace's journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

/// Names that can be part of a file name: network names and container IDs
/// as ADD validates them, interface names without `/` or `:`.
fn safe(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains(['/', ':', '\0'])
}

/// The longest file name (Linux's NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Whether the journal can hold container `id` (a directory of that
/// name). ADD refuses any other ID before it makes a rule, so nothing of
/// ours exists for it: DEL need not look.
pub fn can_hold(id: &str) -> bool {
    safe(id) && id.len() <= NAME_MAX
}

/// Container `id`'s directory in `netns`, for what only looks at names or
/// removes: a symlink or a file where it should be holds nothing of ours
/// (a write refuses it), and is left alone, not followed.
fn held(netns: &Dir, id: &str) -> Result<Option<Dir>, JournalError> {
    match netns.sub(id, false) {
        Err(JournalError::Unsafe {
            what: Refusal::Symlink | Refusal::NotADirectory,
            ..
        }) => Ok(None),
        other => other,
    }
}

impl Journal {
    /// This namespace's journal in the [`state_dir`].
    pub fn here() -> Result<Journal, JournalError> {
        let netns = host::netns_id().map_err(JournalError::Netns)?;
        Ok(Journal::at(state_dir().join(netns)))
    }

    pub fn at(dir: PathBuf) -> Journal {
        Journal { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state directory and this namespace's directory in it, both
    /// trusted (see [`Dir::trusted`]); `None`: not made yet. Opened anew
    /// each time: a long-running `watch` must not write into a directory
    /// a DEL has removed since.
    fn open(&self, create: bool) -> Result<Option<(Dir, Dir)>, JournalError> {
        let name = self.dir.file_name().and_then(|n| n.to_str());
        let (Some(root), Some(name)) = (self.dir.parent(), name) else {
            return Err(JournalError::Dir {
                doing: "open",
                path: self.dir.clone(),
                source: std::io::Error::other("not a directory in a state directory"),
            });
        };
        let root = if root.as_os_str().is_empty() {
            Path::new(".")
        } else {
            root
        };
        let Some(root) = Dir::root(root, create)? else {
            return Ok(None);
        };
        let Some(netns) = root.sub(name, create)? else {
            return Ok(None);
        };
        Ok(Some((root, netns.trusted()?)))
    }

    /// The directory of one container ID (see [`held`]; `None`: missing,
    /// or a name ADD never writes). One per ID keeps what ADD and DEL do
    /// O(1) in the number of containers: they list only their own.
    fn container(&self, id: &str) -> Result<Option<Dir>, JournalError> {
        if !can_hold(id) {
            return Ok(None);
        }
        match self.open(false)? {
            Some((_, netns)) => held(&netns, id),
            None => Ok(None),
        }
    }

    /// `<network>:`, the start of the names of one attachment's files.
    fn prefix(key: &ContainerKey) -> Option<String> {
        (safe(&key.network) && can_hold(&key.container_id)).then(|| format!("{}:", key.network))
    }

    /// Written atomically: a temp file, fsync, rename, fsync of the
    /// directory (a new directory's name is made durable when made).
    pub fn write(&self, entry: &Entry) -> Result<(), JournalError> {
        let key = &entry.request.key;
        // The longest name of an attachment: its receipt's temp file.
        let receipt = format!("{}:{}{RECEIPT}", key.network, entry.ifname);
        let longest = temp_name(&receipt, u32::MAX, TEMP_TRIES).len();
        for (what, len) in [
            ("container ID", key.container_id.len()),
            ("attachment file name", longest),
        ] {
            if len > NAME_MAX {
                return Err(JournalError::TooLong { what, len });
            }
        }
        let unusable = || JournalError::Write {
            path: self.dir.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unusable names {key:?} / {:?}", entry.ifname),
            ),
        };
        let name = Self::prefix(key)
            .filter(|_| safe(&entry.ifname))
            .map(|p| format!("{p}{}.json", entry.ifname))
            .ok_or_else(unusable)?;
        let Some((_, netns)) = self.open(true)? else {
            return Err(unusable());
        };
        let Some(dir) = netns.sub(&key.container_id, true)? else {
            return Err(unusable());
        };
        let dir = dir.trusted()?;
        let path = dir.path().join(&name);
        let fail = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(entry).map_err(|e| fail(e.into()))?;
        dir.replace(&name, &text, true).map_err(fail)?;
        dir.sync().map_err(fail)
    }

    /// Whether rules of container `id` may exist: a file (entry, retired
    /// entry, receipt) of that ID in any network. Unsure (the directory
    /// cannot be read) is yes.
    pub fn may_hold(&self, id: &str) -> bool {
        match self.container(id) {
            Ok(None) => false,
            // `.<name>.<pid>.<n>.tmp`: a writer killed before its rename,
            // which comes before any rule.
            Ok(Some(mut dir)) => dir
                .list()
                .map_or(true, |files| files.iter().any(|(n, _)| !n.starts_with('.'))),
            Err(_) => true,
        }
    }

    /// Takes the container's entries out of `entries()` (a restore's
    /// sight) while keeping the knowledge that it may have rules: renamed,
    /// not removed, until [`Journal::remove`] once the rules are gone.
    pub fn retire(&self, key: &ContainerKey) -> Result<(), JournalError> {
        let Some(prefix) = Self::prefix(key) else {
            return Ok(());
        };
        let Some(mut dir) = self.container(&key.container_id)? else {
            return Ok(());
        };
        for (name, kind) in dir.list()? {
            if kind == Kind::Dir || !(name.starts_with(&prefix) && name.ends_with(".json")) {
                continue;
            }
            match dir.rename(&name, &format!("{name}{RETIRED}")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(JournalError::Retire {
                        path: dir.path().join(&name),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The containers of retired entries (a DEL or GC that did not finish).
    pub fn retired(&self) -> Vec<ContainerKey> {
        let Ok(Some((_, mut netns))) = self.open(false) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        for (id, kind) in netns.list().unwrap_or_default() {
            if kind != Kind::Dir {
                continue;
            }
            let Ok(Some(mut dir)) = held(&netns, &id) else {
                continue;
            };
            for (name, kind) in dir.list().unwrap_or_default() {
                let network = name.strip_suffix(RETIRED).and_then(|n| n.split(':').next());
                if let Some(network) = network.filter(|_| kind != Kind::Symlink) {
                    keys.push(ContainerKey {
                        network: network.to_string(),
                        container_id: id.clone(),
                    });
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Keeps (or, with `None`, drops) the receipt of the container's ADD on
    /// `ifname`. A hint, not a record: written without fsync (a receipt
    /// lost or torn by a crash only sends DEL back to reading everything),
    /// and renamed into place, so never read half-written.
    pub fn write_receipt(
        &self,
        key: &ContainerKey,
        ifname: &str,
        receipt: Option<&Receipted>,
    ) -> Result<(), JournalError> {
        let Some(prefix) = Self::prefix(key).filter(|_| safe(ifname)) else {
            return Ok(());
        };
        let name = format!("{prefix}{ifname}{RECEIPT}");
        let dir = self.container(&key.container_id)?;
        let path = dir.as_ref().map_or_else(
            || self.dir.join(&key.container_id).join(&name),
            |d| d.path().join(&name),
        );
        let fail = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        match (dir, receipt) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(fail(std::io::ErrorKind::NotFound.into())),
            (Some(dir), None) => match dir.remove(&name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            },
            (Some(dir), Some(receipt)) => {
                let text = serde_json::to_vec(receipt).map_err(|e| fail(e.into()))?;
                dir.trusted()?.replace(&name, &text, false).map_err(fail)
            }
        }
    }

    /// The receipts of the container's ADDs (one per interface); unreadable
    /// ones are skipped (DEL then reads everything).
    pub fn receipts(&self, key: &ContainerKey) -> Vec<Receipted> {
        let Some(prefix) = Self::prefix(key) else {
            return Vec::new();
        };
        let dir = self
            .container(&key.container_id)
            .map(|d| d.map(Dir::trusted));
        let Ok(Some(Ok(mut dir))) = dir else {
            return Vec::new();
        };
        dir.list()
            .unwrap_or_default()
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix) && n.ends_with(RECEIPT))
            .filter_map(|(n, _)| serde_json::from_slice(&dir.read(n).ok()?).ok())
            .collect()
    }

    /// Removes every file of the container in this network (whatever its
    /// interface: entries, retired ones, receipts, temp files a killed
    /// writer left); none is fine. Empty directories go with their last
    /// file.
    pub fn remove(&self, key: &ContainerKey) -> Result<(), JournalError> {
        let Some(prefix) = Self::prefix(key) else {
            return Ok(()); // ADD never wrote such a name
        };
        let Some((root, netns)) = self.open(false)? else {
            return Ok(());
        };
        let id = &key.container_id;
        let Some(mut dir) = held(&netns, id)? else {
            return Ok(());
        };
        let temp = format!(".{prefix}");
        for (name, kind) in dir.list()? {
            if kind == Kind::Dir || !(name.starts_with(&prefix) || name.starts_with(&temp)) {
                continue;
            }
            match dir.remove(&name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(JournalError::Remove {
                        path: dir.path().join(&name),
                        source: e,
                    })
                }
                _ => {}
            }
        }
        // Only when empty: another network's files keep them (the ledger
        // goes with the last container: without it the next ADD reads all).
        let _ = netns.remove_dir(id);
        let mut netns = netns;
        if Journal::only_ledger_left(&mut netns) {
            Journal::drop_ledger(&netns);
        }
        if let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) {
            let _ = root.remove_dir(name);
        }
        Ok(())
    }

    /// Every entry, in name order; an unreadable one (or a symlink where a
    /// container's directory or an entry should be) is reported, not fatal.
    pub fn entries(&self) -> Vec<Result<(PathBuf, Entry), JournalError>> {
        let mut netns = match self.open(false) {
            Ok(Some((_, netns))) => netns,
            Ok(None) => return Vec::new(),
            Err(e) => return vec![Err(e)],
        };
        scan::entries(&mut netns)
    }
}

fn read_entry(dir: &Dir, name: &str) -> Result<Entry, String> {
    parse_entry(&dir.read(name).map_err(|e| e.to_string())?)
}

fn parse_entry(text: &[u8]) -> Result<Entry, String> {
    let entry: Entry = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if entry.format != FORMAT {
        return Err(format!("format {} is not {FORMAT}", entry.format));
    }
    Ok(entry)
}

mod known;
mod scan;
#[cfg(test)]
mod tests;
