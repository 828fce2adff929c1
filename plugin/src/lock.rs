//! A plugin-wide lock, so concurrent invocations never interleave their
//! read (list/save) and write (transaction/restore) of the firewall: two
//! iptables ADDs computed from one read would otherwise both create the
//! shared chain, and the second would flush the first's entry rules.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cni::{CniError, Code};

pub const LOCK_PATH: &str = "/run/portmap.lock";
/// Overrides [`LOCK_PATH`], for harnesses and tests that run plugins in
/// their own network namespaces beside the host's: a portmap of another
/// run (or the host's runtime) holding `/run/portmap.lock` then cannot
/// hold theirs up. Processes that share a firewall must share the lock.
pub const LOCK_ENV: &str = "PORTMAP_LOCK";
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);
/// How long a process that released the lock waits before it takes it
/// again (a restore pass between two repairs): longer than a waiter's
/// poll, or `try_lock` polling lets the releaser win every time and a
/// runtime's ADD or DEL starves.
pub const YIELD: Duration = Duration::from_millis(2 * POLL.as_millis() as u64);

/// Held until dropped (the kernel releases it if we die).
pub struct Lock(#[allow(dead_code)] File);

/// The plugin lock's path: `$PORTMAP_LOCK`, else [`LOCK_PATH`].
pub fn lock_path() -> PathBuf {
    std::env::var_os(LOCK_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(LOCK_PATH), PathBuf::from)
}

/// The plugin lock at [`lock_path`]: the CNI commands, `restore`, `watch`
/// and `migrate` all serialise on it.
pub fn acquire_plugin_lock() -> Result<Lock, CniError> {
    let lock = acquire(&lock_path())?;
    let generation = portmap_backends::nfnetlink::generation().map_or(NO_GENERATION, u64::from);
    LOCKED_AT.store(generation, Ordering::SeqCst);
    Ok(lock)
}

const NO_GENERATION: u64 = u64::MAX;
/// The nf_tables generation read right after this process last took the
/// plugin lock.
static LOCKED_AT: AtomicU64 = AtomicU64::new(NO_GENERATION);

/// The nf_tables generation when this process last took the plugin lock
/// (`None`: never, or no answer). Every portmap writes only under the
/// lock, so the commits between it and the generation after our writes
/// are ours (the journal's ring of own commits, which `watch` ignores).
pub fn generation_at_lock() -> Option<u32> {
    u32::try_from(LOCKED_AT.load(Ordering::SeqCst)).ok()
}

pub fn acquire(path: &Path) -> Result<Lock, CniError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| {
            CniError::new(
                Code::Internal,
                format!("cannot open lock file {}", path.display()),
            )
            .with_details(e.to_string())
        })?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock(file)),
            Err(TryLockError::WouldBlock) if start.elapsed() < WAIT => std::thread::sleep(POLL),
            Err(TryLockError::WouldBlock) => {
                return Err(CniError::new(
                    Code::TryAgainLater,
                    format!(
                        "another portmap holds {} for over {}s",
                        path.display(),
                        WAIT.as_secs()
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => {
                return Err(CniError::new(
                    Code::Internal,
                    format!("cannot lock {}", path.display()),
                )
                .with_details(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_releases() {
        let path = std::env::temp_dir().join(format!("portmap-lock-test-{}", std::process::id()));
        let first = acquire(&path).expect("first");
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let _second = acquire(&p2).expect("second");
            flag.load(std::sync::atomic::Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(first);
        assert!(
            waiter.join().expect("join"),
            "second holder got the lock before release"
        );
        let _ = std::fs::remove_file(path);
    }
}
