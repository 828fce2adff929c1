//! Run-time backend choice. An explicit backend wins; otherwise nftables
//! when `nft` exists and the kernel accepts a (dry-run) nf_tables
//! transaction in this namespace, else iptables as found in PATH.

use std::fmt;

use crate::iptables::{Iptables, IptablesError, Variant};
use crate::nftables::{NftError, Nftables};
use crate::Backend;

/// What the config's `backend` key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Nftables,
    Iptables,
}

impl Choice {
    pub fn parse(s: &str) -> Option<Choice> {
        match s {
            "nftables" => Some(Choice::Nftables),
            "iptables" => Some(Choice::Iptables),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("nftables backend was requested but is not usable: {reason}")]
    NftablesUnusable { reason: String },
    #[error(transparent)]
    Iptables(#[from] IptablesError),
}

impl SelectError {
    pub fn details(&self) -> String {
        match self {
            SelectError::NftablesUnusable { reason } => reason.clone(),
            SelectError::Iptables(e) => e.details(),
        }
    }
}

/// A chosen backend and why it was chosen.
pub struct Selected {
    pub backend: Box<dyn Backend>,
    pub reason: String,
}

impl fmt::Debug for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.backend.name(), self.reason)
    }
}

/// The nftables backend when usable here, else why not.
pub fn probe_nftables() -> Result<Nftables, String> {
    let nft = match Nftables::from_path() {
        Ok(n) => n,
        Err(NftError::NotFound) => return Err("nft binary not found in PATH".into()),
        Err(e) => return Err(e.to_string()),
    };
    // `nft -c` runs the transaction through the kernel and aborts it: it
    // proves nf_tables works here and leaves nothing behind.
    let probe = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"cni_hostport_probe"}}}]}"#;
    match crate::exec::run_with_stdin(nft.binary(), &["-c", "-j", "-f", "-"], probe) {
        Ok(out) if out.status.success() => Ok(nft),
        Ok(out) => Err(format!(
            "kernel refused an nf_tables transaction: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", nft.binary().display())),
    }
}

/// Picks the backend for ADD/CHECK.
pub fn select(choice: Option<Choice>) -> Result<Selected, SelectError> {
    match choice {
        Some(Choice::Nftables) => match probe_nftables() {
            Ok(nft) => Ok(selected(nft, "requested by config")),
            Err(reason) => Err(SelectError::NftablesUnusable { reason }),
        },
        Some(Choice::Iptables) => Ok(iptables("requested by config")?),
        None => match probe_nftables() {
            Ok(nft) => Ok(selected(nft, "auto: nftables is usable")),
            Err(why) => Ok(iptables(&format!("auto: {why}; falling back to iptables"))?),
        },
    }
}

fn selected(backend: impl Backend + 'static, reason: &str) -> Selected {
    Selected {
        backend: Box::new(backend),
        reason: reason.to_string(),
    }
}

fn iptables(reason: &str) -> Result<Selected, IptablesError> {
    let ipt = Iptables::from_path()?;
    let reason = format!("{reason} (iptables variant: {})", ipt.variant_of());
    Ok(selected(ipt, &reason))
}

/// Every backend that may hold our rules in this namespace, for DEL and GC:
/// rules made by another backend or binary are never leaked. Legacy tables
/// are read only where the kernel already has them, since reading would
/// create them.
pub fn cleanup_backends() -> Vec<Box<dyn Backend>> {
    let mut all: Vec<Box<dyn Backend>> = Vec::new();
    // An nft that cannot work (kernel without nf_tables) holds no rules.
    if let Ok(n) = probe_nftables() {
        all.push(Box::new(n));
    }
    if let Ok(ipt) = Iptables::variant(Variant::Nft) {
        all.push(Box::new(ipt));
    }
    if legacy_tables_present() {
        if let Ok(ipt) = Iptables::variant(Variant::Legacy) {
            all.push(Box::new(ipt));
        }
    }
    // A PATH whose `iptables` is neither suffixed tool (a distribution
    // without the variant names) still gets cleaned.
    if let Ok(ipt) = Iptables::from_path() {
        if !all.iter().any(|b| b.name() == ipt.name()) {
            all.push(Box::new(ipt));
        }
    }
    all
}

fn legacy_tables_present() -> bool {
    [
        "/proc/thread-self/net/ip_tables_names",
        "/proc/thread-self/net/ip6_tables_names",
    ]
    .iter()
    .any(|p| std::fs::read_to_string(p).is_ok_and(|s| s.lines().any(|l| l == "nat")))
}
