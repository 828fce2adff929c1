//! Reading every entry of a namespace's journal (restore, watch, GC,
//! migrate, status): one directory and one file per container, so on a
//! large host the syscalls are a restore pass's main cost: spread over cores.

use std::path::PathBuf;

use super::dirs::{At, Dir, Kind, Refusal};
use super::{read_entry, Entry, JournalError};

/// Below this many containers one thread reads them all (a thread's start
/// costs about what a few entries do).
const PER_THREAD_MIN: usize = 32;
const THREADS_MAX: usize = 4;

type Found = Vec<(PathBuf, Result<Entry, JournalError>)>;

/// Every entry under `netns`, in name order.
pub(super) fn entries(netns: &mut Dir) -> Vec<Result<(PathBuf, Entry), JournalError>> {
    let ids: Vec<(String, Kind)> = match netns.list() {
        Ok(ids) => ids,
        Err(e) => return vec![Err(e)],
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(THREADS_MAX)
        .min(ids.len() / PER_THREAD_MIN)
        .max(1);
    let at = netns.at();
    let mut found: Found = if threads == 1 {
        containers(at, &ids)
    } else {
        let per = ids.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let readers: Vec<_> = ids
                .chunks(per)
                .map(|part| scope.spawn(move || containers(at, part)))
                .collect();
            readers
                .into_iter()
                .flat_map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    };
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
        .into_iter()
        .map(|(path, entry)| entry.map(|e| (path, e)))
        .collect()
}

/// The entries of the containers `ids` names (directories of `at`).
fn containers(at: At<'_>, ids: &[(String, Kind)]) -> Found {
    let mut found = Found::new();
    for (id, kind) in ids {
        let path = at.path().join(id);
        let dir = match kind {
            Kind::Dir => at
                .sub(id, false)
                .and_then(|d| d.map(Dir::trusted).transpose()),
            Kind::Symlink => Err(JournalError::Unsafe {
                path: path.clone(),
                what: Refusal::Symlink,
            }),
            Kind::Other => continue,
        };
        let mut dir = match dir {
            Ok(Some(dir)) => dir,
            Ok(None) => continue,
            Err(e) => {
                found.push((path, Err(e)));
                continue;
            }
        };
        let names = match dir.list() {
            Ok(names) => names,
            Err(e) => {
                found.push((path, Err(e)));
                continue;
            }
        };
        for (name, _) in names {
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = dir.path().join(&name);
            let entry = read_entry(&dir, &name).map_err(|reason| JournalError::Unreadable {
                path: path.clone(),
                reason,
            });
            found.push((path, entry));
        }
    }
    found
}
