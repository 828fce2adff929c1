//! A PATH directory of symlinks that decides which firewall tools a
//! plugin sees: `nft` present, missing, refused by the kernel, or unable
//! to run, and which iptables variant `iptables` is. This is how the
//! backend axis and "a distribution without nftables" are simulated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nft {
    Present,
    Missing,
    /// Runs (`--version` answers), but every transaction fails as the
    /// kernel refuses it (a kernel without nf_tables nat support).
    KernelRefuses,
    /// Cannot run at all (a missing library: exit 127).
    Unrunnable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesVariant {
    Legacy,
    Nft,
}

impl IptablesVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesVariant::Legacy => "legacy",
            IptablesVariant::Nft => "nft",
        }
    }

    /// What the system's own `iptables` is (Debian's alternatives point it
    /// at xtables-legacy-multi or xtables-nft-multi); `None` without one.
    pub fn of_system() -> Option<IptablesVariant> {
        Self::named(&std::fs::canonicalize(find("iptables")?).ok()?)
    }

    fn named(binary: &Path) -> Option<IptablesVariant> {
        let name = binary.file_name()?.to_string_lossy();
        Some(if name.contains("legacy") {
            IptablesVariant::Legacy
        } else {
            IptablesVariant::Nft
        })
    }
}

/// What the directory offers.
#[derive(Debug, Clone, Copy)]
pub struct Tools {
    pub nft: Nft,
    /// What plain `iptables` is; `None`: no iptables at all.
    pub iptables: Option<IptablesVariant>,
    /// Also offer the suffixed names of the other variant (a host where
    /// both exist, as Debian's iptables package installs).
    pub both_variants: bool,
    pub conntrack: bool,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            nft: Nft::Present,
            iptables: Some(IptablesVariant::Nft),
            both_variants: true,
            conntrack: true,
        }
    }
}

pub struct ToolDir {
    dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn find(name: &str) -> Option<PathBuf> {
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

impl ToolDir {
    pub fn new(tools: Tools) -> std::io::Result<ToolDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("portmap-tools-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let td = ToolDir { dir };
        let link =
            |target: &Path, name: &str| std::os::unix::fs::symlink(target, td.dir.join(name));
        match tools.nft {
            Nft::Present => {
                if let Some(p) = find("nft") {
                    link(&p, "nft")?;
                }
            }
            Nft::Missing => {}
            Nft::KernelRefuses => {
                let real = find("nft").map(|p| p.display().to_string()).unwrap_or_default();
                td.script(
                    "nft",
                    &format!(
                        "[ \"$1\" = --version ] && exec {real} --version\n\
                         echo 'Error: Could not process rule: Operation not supported' >&2\nexit 1\n"
                    ),
                )?;
            }
            Nft::Unrunnable => td.script(
                "nft",
                "echo 'nft: error while loading shared libraries: libnftables.so.1: cannot open shared object file' >&2\nexit 127\n",
            )?,
        }
        if let Some(v) = tools.iptables {
            let mut variants = vec![v];
            if tools.both_variants {
                variants.push(match v {
                    IptablesVariant::Legacy => IptablesVariant::Nft,
                    IptablesVariant::Nft => IptablesVariant::Legacy,
                });
            }
            for (i, variant) in variants.iter().enumerate() {
                for base in ["iptables", "ip6tables"] {
                    for suffix in ["", "-save", "-restore"] {
                        let real = format!("{base}-{}{suffix}", variant.as_str());
                        let Some(target) = find(&real) else { continue };
                        link(&target, &real)?;
                        if i == 0 {
                            link(&target, &format!("{base}{suffix}"))?;
                        }
                    }
                }
            }
        }
        if tools.conntrack {
            if let Some(p) = find("conntrack") {
                link(&p, "conntrack")?;
            }
        }
        Ok(td)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Replaces tool `name` with one that fails (exit 1, a reason on
    /// stderr), as a broken install does; returns what it was, for
    /// [`ToolDir::put_back`] (`None`: there was no such tool).
    pub fn break_tool(&self, name: &str) -> std::io::Result<Option<PathBuf>> {
        let was = std::fs::read_link(self.dir.join(name)).ok();
        if was.is_none() {
            return Ok(None);
        }
        std::fs::remove_file(self.dir.join(name))?;
        self.script(
            name,
            &format!(
                "echo '{name}: cannot initialize the table (broken by the harness)' >&2\nexit 1\n"
            ),
        )?;
        Ok(was)
    }

    /// Undoes [`ToolDir::break_tool`].
    pub fn put_back(&self, name: &str, target: &Path) -> std::io::Result<()> {
        let path = self.dir.join(name);
        std::fs::remove_file(&path)?;
        std::os::unix::fs::symlink(target, path)
    }

    /// An executable shell script `name` with `body`.
    fn script(&self, name: &str, body: &str) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    }
}

impl Drop for ToolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
