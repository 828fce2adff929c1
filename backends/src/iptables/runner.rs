//! Runs `iptables-save` and `iptables-restore` (and, for one chain,
//! `iptables -S`) for one family and variant.
//!
//! Why not the `iptables` crate: it runs one `iptables` process per rule
//! (no batches, so a failure or kill can leave half a container's rules)
//! and passes comments through its own argument quoting. A restore batch
//! is atomic and one process per family, and save/restore quote comments
//! the same way in both directions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::exec::{self, ExecError};
use crate::Family;

use super::IptablesError;

/// Which iptables implementation a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    Legacy,
    Nft,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        }
    }

    /// Detects the variant (and whether its restore waits for the lock)
    /// from the multi-call binary a path resolves to: iptables 1.8+ names
    /// it `xtables-legacy-multi` / `xtables-nft-multi`; before 1.8 there
    /// was only `xtables-multi`, always legacy. Other installs (a plain
    /// binary, a wrapper) answer `--version` (one process). `None`: no
    /// answer; an error only when `--version` hung.
    pub fn detect(binary: &Path) -> Result<Option<Detected>, IptablesError> {
        let real = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
        let Some(name) = real.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(None);
        };
        let since_1_8 = |variant| Detected {
            variant,
            restore_waits: true,
        };
        if name.contains("legacy") {
            return Ok(Some(since_1_8(Variant::Legacy)));
        }
        if name.contains("nft") {
            return Ok(Some(since_1_8(Variant::Nft)));
        }
        match run(binary, &["--version"], None, exec::PROBE) {
            Ok(out) => Ok(Detected::from_version(&String::from_utf8_lossy(
                &out.stdout,
            ))),
            Err(e @ IptablesError::Timeout { .. }) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// What `iptables --version` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub variant: Variant,
    /// `iptables-restore -w` exists (1.6.2 and later).
    pub restore_waits: bool,
}

impl Detected {
    /// `iptables v1.8.9 (nf_tables)`, `iptables v1.8.7 (legacy)`, or
    /// before 1.8 `iptables v1.6.1` / `iptables v1.4.21`: no variant, legacy.
    pub fn from_version(text: &str) -> Option<Detected> {
        let line = text.lines().next()?.trim();
        let rest = line
            .strip_prefix("iptables v")
            .or_else(|| line.strip_prefix("ip6tables v"))?;
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        let variant = if rest.contains("nf_tables") {
            Variant::Nft
        } else {
            Variant::Legacy
        };
        Some(Detected {
            variant,
            restore_waits: version >= (1, 6, 2),
        })
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The save/restore pair of one family.
#[derive(Debug, Clone)]
pub struct Runner {
    pub family: Family,
    pub variant: Variant,
    pub save: PathBuf,
    pub restore: PathBuf,
    /// `<base>` itself, to list one chain.
    pub list: Option<PathBuf>,
    /// `-w` exists; else we hold the xtables lock ourselves around restore.
    pub restore_waits: bool,
    /// The chains of this family's nat table as the kernel listed them
    /// for this command (iptables-nft keeps its tables in nf_tables);
    /// `None`: not asked.
    pub nat_chains: Option<Vec<String>>,
}

/// How long iptables-restore waits for the xtables lock (legacy only).
const LOCK_WAIT_SECONDS: &str = "10";
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The lock file iptables 1.6+ takes with flock (XTABLES_LOCKFILE
/// overrides it in 1.8, as here).
const XTABLES_LOCK: &str = "/run/xtables.lock";

impl Runner {
    /// Finds `<base>-save` and `<base>-restore` next to each other in PATH,
    /// e.g. base `iptables` or `ip6tables-legacy`.
    pub fn find(family: Family, base: &str, detected: Detected) -> Option<Runner> {
        Some(Runner {
            family,
            variant: detected.variant,
            save: which::which(format!("{base}-save")).ok()?,
            restore: which::which(format!("{base}-restore")).ok()?,
            list: which::which(base).ok(),
            restore_waits: detected.restore_waits,
            nat_chains: None,
        })
    }

    /// `iptables-save -t nat`: the one read of a command.
    pub fn save(&self) -> Result<String, IptablesError> {
        self.save_table("nat")
    }

    /// `iptables-save -t <table>`.
    pub fn save_table(&self, table: &str) -> Result<String, IptablesError> {
        let out = run(&self.save, &["-t", table], None, exec::READ)?;
        self.stdout_of(&self.save, table, out)
    }

    /// A small table the way that is cheapest to read: `iptables -t
    /// <table> -S` on iptables-nft (its save asks the kernel once per
    /// chain of the family, so `-save -t mangle` grows with our nat
    /// table; `-S` asks for the one table), `-save -t <table>` elsewhere
    /// (legacy's `-S` would wait for the xtables lock, its save does not).
    /// [`super::saved::SavedTable::parse`] reads both.
    pub fn read_table(&self, table: &str) -> Result<String, IptablesError> {
        match (&self.list, self.variant) {
            (Some(list), Variant::Nft) => run(list, &["-t", table, "-S"], None, exec::READ)
                .and_then(|out| self.stdout_of(list, table, out)),
            _ => self.save_table(table),
        }
    }

    /// A read's output, or its failure.
    fn stdout_of(&self, tool: &Path, table: &str, out: Output) -> Result<String, IptablesError> {
        if !out.status.success() {
            return Err(IptablesError::Save {
                tool: tool_name(tool),
                variant: self.variant,
                table: table.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables -t nat -S <chain>`: one chain in save syntax, where the
    /// whole table is not needed (`None`: no such tool here). Reads only,
    /// so no lock.
    pub fn list_chain(&self, chain: &str) -> Option<Result<String, IptablesError>> {
        let list = self.list.as_ref()?;
        Some(
            run(list, &["-t", "nat", "-S", chain], None, exec::READ)
                .and_then(|out| self.stdout_of(list, "nat", out)),
        )
    }

    /// `iptables-restore --noflush`: the one atomic write of a command.
    /// Before 1.6.2 restore has no `-w` and takes no lock: we hold the
    /// lock `iptables` itself takes, so no concurrent `iptables -A` of
    /// another tool interleaves with our batch.
    ///
    /// A restore killed at its timeout has applied nothing: it parses the
    /// whole batch first and commits the table at `COMMIT` at once
    /// (legacy: one table replace; nft: one netlink batch). A kill lands
    /// before the commit, or, had it hung after, finds the whole batch in,
    /// which the runtime's DEL after our failed ADD removes.
    pub fn restore(&self, batch: &str) -> Result<(), IptablesError> {
        let tool = tool_name(&self.restore);
        let out = if self.restore_waits {
            let args = ["-w", LOCK_WAIT_SECONDS, "--noflush"];
            run(&self.restore, &args, Some(batch), exec::RESTORE)
        } else {
            let path = std::env::var_os("XTABLES_LOCKFILE").unwrap_or_else(|| XTABLES_LOCK.into());
            let _held = xtables_lock(Path::new(&path)).map_err(|source| IptablesError::Spawn {
                tool: tool.clone(),
                source,
            })?;
            run(&self.restore, &["--noflush"], Some(batch), exec::RESTORE)
        }?;
        if !out.status.success() {
            return Err(IptablesError::Restore {
                tool,
                variant: self.variant,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                batch: batch.to_string(),
            });
        }
        Ok(())
    }
}

fn tool_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs an iptables tool within `base` (see [`crate::exec`]); a timeout
/// names the tool and its arguments.
fn run(
    tool: &Path,
    args: &[&str],
    input: Option<&str>,
    base: Duration,
) -> Result<Output, IptablesError> {
    let name = tool_name(tool);
    exec::run(tool, args, input.map(str::as_bytes), base).map_err(|e| match e {
        ExecError::Timeout { timeout, .. } => IptablesError::Timeout {
            command: format!("{name} {}", args.join(" ")),
            tool: name,
            timeout,
        },
        ExecError::Spawn { source, .. } | ExecError::Io { source, .. } => {
            IptablesError::Spawn { tool: name, source }
        }
    })
}

/// Takes `path` with flock as iptables does, waiting up to [`LOCK_WAIT`];
/// released when the file is dropped.
fn xtables_lock(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} held by another process for {LOCK_WAIT:?}",
                        path.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_tell_variant_and_restore_wait() {
        let d = |t| Detected::from_version(t).map(|d| (d.variant, d.restore_waits));
        assert_eq!(
            d("iptables v1.8.9 (nf_tables)\n"),
            Some((Variant::Nft, true))
        );
        assert_eq!(d("iptables v1.8.7 (legacy)"), Some((Variant::Legacy, true)));
        assert_eq!(d("iptables v1.6.1"), Some((Variant::Legacy, false)));
        assert_eq!(d("iptables v1.6.2"), Some((Variant::Legacy, true)));
        assert_eq!(d("iptables v1.4.21"), Some((Variant::Legacy, false)));
        assert_eq!(d("ip6tables v1.6.1"), Some((Variant::Legacy, false)));
        assert_eq!(d("something else"), None);
    }

    #[test]
    fn save_table_reads_the_table_it_names() {
        // echo as iptables-save: its output is its arguments.
        let runner = Runner {
            family: Family::V4,
            variant: Variant::Nft,
            save: PathBuf::from("/bin/echo"),
            restore: PathBuf::from("/nonexistent/iptables-restore"),
            list: None,
            restore_waits: true,
            nat_chains: None,
        };
        assert_eq!(runner.save_table("mangle").expect("saved"), "-t mangle\n");
        assert_eq!(runner.save().expect("saved"), "-t nat\n");
    }

    #[test]
    fn a_small_table_is_listed_on_nft_and_saved_on_legacy() {
        // echo as both tools: the output tells which ran, with what.
        let mut runner = Runner {
            family: Family::V4,
            variant: Variant::Nft,
            save: PathBuf::from("/bin/echo"),
            restore: PathBuf::from("/nonexistent/iptables-restore"),
            list: Some(PathBuf::from("/bin/echo")),
            restore_waits: true,
            nat_chains: None,
        };
        assert_eq!(
            runner.read_table("mangle").expect("listed"),
            "-t mangle -S\n"
        );
        runner.variant = Variant::Legacy;
        assert_eq!(runner.read_table("mangle").expect("saved"), "-t mangle\n");
        runner.variant = Variant::Nft;
        runner.list = None;
        assert_eq!(runner.read_table("mangle").expect("saved"), "-t mangle\n");
    }

    #[test]
    fn the_xtables_lock_is_exclusive_and_waits() {
        let dir = std::env::temp_dir().join(format!("portmap-xtlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("xtables.lock");
        let held = xtables_lock(&path).expect("first");
        let other = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        assert!(other.try_lock().is_err(), "held exclusively");
        drop(held);
        // Another test thread's fork may hold a copy of the descriptor
        // (and so the flock) until its child execs: wait, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let released = loop {
            if other.try_lock().is_ok() {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(released, "released on drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
