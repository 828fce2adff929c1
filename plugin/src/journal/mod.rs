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

use std::io::Write;
use std::path::{Path, PathBuf};

use portmap_backends::{host, ContainerKey, Receipt, Request};
use serde::{Deserialize, Serialize};

pub const DEFAULT_DIR: &str = "/run/cni/portmap";
/// Overrides [`DEFAULT_DIR`] (tests, unusual hosts).
pub const DIR_ENV: &str = "PORTMAP_STATE_DIR";
const FORMAT: u32 = 1;
/// Appended to a retired entry's name: no longer `.json`, same prefix.
const RETIRED: &str = ".retired";
/// A receipt's file: `<id>/<network>:<ifname>.receipt`, beside the entry.
const RECEIPT: &str = ".receipt";

/// Where the backend that installed a container put its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipted {
    pub backend: String,
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
    /// `Backend::name` of the backend that installed it.
    pub backend: String,
    pub request: Request,
}

impl Entry {
    pub fn new(ifname: &str, netns: &str, backend: &str, request: Request) -> Entry {
        Entry {
            format: FORMAT,
            ifname: ifname.to_string(),
            netns: netns.to_string(),
            backend: backend.to_string(),
            request,
        }
    }

    /// The container's namespace no longer exists: it was removed without
    /// our DEL (by another binary, or a runtime that crashed).
    pub fn is_stale(&self) -> bool {
        !self.netns.is_empty() && !Path::new(&self.netns).exists()
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

impl Journal {
    /// This namespace's journal under `$PORTMAP_STATE_DIR` or [`DEFAULT_DIR`].
    pub fn here() -> Result<Journal, JournalError> {
        let root =
            std::env::var_os(DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from);
        let netns = host::netns_id().map_err(JournalError::Netns)?;
        Ok(Journal::at(root.join(netns)))
    }

    pub fn at(dir: PathBuf) -> Journal {
        Journal { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of one container ID (`None`: a name ADD never writes).
    /// One per ID keeps what ADD and DEL do O(1) in the number of
    /// containers: they list only their own.
    fn container_dir(&self, id: &str) -> Option<PathBuf> {
        safe(id).then(|| self.dir.join(id))
    }

    /// The names of the files in `id`'s directory (none when it is missing).
    fn files_of(&self, id: &str) -> std::io::Result<Vec<String>> {
        let Some(dir) = self.container_dir(id) else {
            return Ok(Vec::new());
        };
        match std::fs::read_dir(dir) {
            Ok(files) => Ok(files
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `<network>:`, the start of the names of one attachment's files.
    fn prefix(key: &ContainerKey) -> Option<String> {
        (safe(&key.network) && safe(&key.container_id)).then(|| format!("{}:", key.network))
    }

    /// Written atomically: a temp file, fsync, rename, fsync of the
    /// directory (and of the journal's, for a new container directory).
    pub fn write(&self, entry: &Entry) -> Result<(), JournalError> {
        let key = &entry.request.key;
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
        let dir = self.container_dir(&key.container_id).ok_or_else(unusable)?;
        let path = dir.join(&name);
        let fail = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let new_dir = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let text = serde_json::to_vec_pretty(entry).map_err(|e| fail(e.into()))?;
        replace(&dir, &name, &text, true).map_err(fail)?;
        let sync = |d: &Path| std::fs::File::open(d).and_then(|d| d.sync_all());
        sync(&dir).map_err(fail)?;
        if new_dir {
            sync(&self.dir).map_err(fail)?;
        }
        Ok(())
    }

    /// Whether rules of container `id` may exist: a file (entry, retired
    /// entry, receipt) of that ID in any network. Unsure (the directory
    /// cannot be read) is yes.
    pub fn may_hold(&self, id: &str) -> bool {
        match self.files_of(id) {
            // `.<name>.<pid>.tmp`: a writer killed before its rename, which
            // comes before any rule.
            Ok(files) => files.iter().any(|n| !n.starts_with('.')),
            Err(_) => true,
        }
    }

    /// Takes the container's entries out of `entries()` (a restore's
    /// sight) while keeping the knowledge that it may have rules: renamed,
    /// not removed, until [`Journal::remove`] once the rules are gone.
    pub fn retire(&self, key: &ContainerKey) -> Result<(), JournalError> {
        let (Some(prefix), Some(dir)) = (Self::prefix(key), self.container_dir(&key.container_id))
        else {
            return Ok(());
        };
        let fail = |path: PathBuf| move |source| JournalError::Retire { path, source };
        let files = self
            .files_of(&key.container_id)
            .map_err(fail(dir.clone()))?;
        for name in files
            .iter()
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".json"))
        {
            let path = dir.join(name);
            match std::fs::rename(&path, dir.join(format!("{name}{RETIRED}"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail(path)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The containers of retired entries (a DEL or GC that did not finish).
    pub fn retired(&self) -> Vec<ContainerKey> {
        let mut keys: Vec<ContainerKey> = self
            .container_dirs()
            .flat_map(|(id, dir)| {
                let files = std::fs::read_dir(dir).into_iter().flatten().flatten();
                files.filter_map(move |f| {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let network = name.strip_suffix(RETIRED)?.split(':').next()?.to_string();
                    Some(ContainerKey {
                        network,
                        container_id: id.clone(),
                    })
                })
            })
            .collect();
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
        let (Some(prefix), Some(dir)) = (Self::prefix(key), self.container_dir(&key.container_id))
        else {
            return Ok(());
        };
        if !safe(ifname) {
            return Ok(());
        }
        let name = format!("{prefix}{ifname}{RECEIPT}");
        let path = dir.join(&name);
        let fail = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let Some(receipt) = receipt else {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            };
        };
        let text = serde_json::to_vec(receipt).map_err(|e| fail(e.into()))?;
        replace(&dir, &name, &text, false).map_err(fail)
    }

    /// The receipts of the container's ADDs (one per interface); unreadable
    /// ones are skipped (DEL then reads everything).
    pub fn receipts(&self, key: &ContainerKey) -> Vec<Receipted> {
        let (Some(prefix), Some(dir)) = (Self::prefix(key), self.container_dir(&key.container_id))
        else {
            return Vec::new();
        };
        let files = self.files_of(&key.container_id).unwrap_or_default();
        files
            .iter()
            .filter(|n| n.starts_with(&prefix) && n.ends_with(RECEIPT))
            .filter_map(|n| serde_json::from_slice(&std::fs::read(dir.join(n)).ok()?).ok())
            .collect()
    }

    /// Removes every file of the container in this network (whatever its
    /// interface: entries, retired ones, receipts, temp files a killed
    /// writer left); none is fine. Empty directories go with their last
    /// file.
    pub fn remove(&self, key: &ContainerKey) -> Result<(), JournalError> {
        let (Some(prefix), Some(dir)) = (Self::prefix(key), self.container_dir(&key.container_id))
        else {
            return Ok(()); // ADD never wrote such a name
        };
        let fail = |path: PathBuf| move |source| JournalError::Remove { path, source };
        let files = self
            .files_of(&key.container_id)
            .map_err(fail(dir.clone()))?;
        let temp = format!(".{prefix}");
        for name in files
            .iter()
            .filter(|n| n.starts_with(&prefix) || n.starts_with(&temp))
        {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(path)(e)),
                _ => {}
            }
        }
        // Only when empty: another network's files keep it.
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }

    /// (container ID, its directory) of every container with files here.
    fn container_dirs(&self) -> impl Iterator<Item = (String, PathBuf)> {
        let dirs = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        dirs.filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
            .map(|d| (d.file_name().to_string_lossy().into_owned(), d.path()))
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .container_dirs()
            .flat_map(|(_, dir)| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths
    }

    /// Every entry, in name order; an unreadable one is reported, not fatal.
    pub fn entries(&self) -> Vec<Result<(PathBuf, Entry), JournalError>> {
        self.paths()
            .into_iter()
            .map(|path| {
                let unreadable = |reason: String| JournalError::Unreadable {
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read(&path).map_err(|e| unreadable(e.to_string()))?;
                let entry: Entry =
                    serde_json::from_slice(&text).map_err(|e| unreadable(e.to_string()))?;
                if entry.format != FORMAT {
                    return Err(unreadable(format!(
                        "format {} is not {FORMAT}",
                        entry.format
                    )));
                }
                Ok((path, entry))
            })
            .collect()
    }
}

/// Puts `text` in `dir/name` by a rename from `.<name>.<pid>.tmp`, so a
/// reader never sees half of it (the temp file goes when anything fails);
/// `durable`: the data is on disk before the rename.
fn replace(dir: &Path, name: &str, text: &[u8], durable: bool) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text)?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests;
