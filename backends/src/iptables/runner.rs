//! Runs `iptables-save` and `iptables-restore` for one family and variant.
//!
//! Why not the `iptables` crate: it runs one `iptables` process per rule
//! (no batches, so a failure or kill can leave half a container's rules)
//! and passes comments through its own argument quoting. A restore batch
//! is atomic and one process per family, and save/restore quote comments
//! the same way in both directions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

    /// Detects the variant from the multi-call binary a path resolves to,
    /// falling back to `--version` (one process) for unusual installs.
    pub fn detect(binary: &Path) -> Option<Variant> {
        let real = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
        let name = real.file_name()?.to_string_lossy().into_owned();
        if name.contains("legacy") {
            return Some(Variant::Legacy);
        }
        if name.contains("nft") {
            return Some(Variant::Nft);
        }
        let out = Command::new(binary).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("nf_tables") {
            Some(Variant::Nft)
        } else if text.contains("legacy") {
            Some(Variant::Legacy)
        } else {
            None
        }
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
}

/// How long iptables-restore waits for the xtables lock (legacy only).
const LOCK_WAIT_SECONDS: &str = "10";

impl Runner {
    /// Finds `<base>-save` and `<base>-restore` next to each other in PATH,
    /// e.g. base `iptables` or `ip6tables-legacy`.
    pub fn find(family: Family, base: &str, variant: Variant) -> Option<Runner> {
        Some(Runner {
            family,
            variant,
            save: which::which(format!("{base}-save")).ok()?,
            restore: which::which(format!("{base}-restore")).ok()?,
        })
    }

    fn tool_name(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `iptables-save -t nat`: the one read of a command.
    pub fn save(&self) -> Result<String, IptablesError> {
        let tool = Self::tool_name(&self.save);
        let out = Command::new(&self.save)
            .args(["-t", "nat"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| IptablesError::Spawn {
                tool: tool.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(IptablesError::Save {
                tool,
                variant: self.variant,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables-restore --noflush`: the one atomic write of a command.
    pub fn restore(&self, batch: &str) -> Result<(), IptablesError> {
        let tool = Self::tool_name(&self.restore);
        let out = crate::exec::run_with_stdin(
            &self.restore,
            &["-w", LOCK_WAIT_SECONDS, "--noflush"],
            batch,
        )
        .map_err(|source| IptablesError::Spawn {
            tool: tool.clone(),
            source,
        })?;
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
