//! Run-time backend choice. An explicit backend wins; otherwise nftables
//! when `nft` is in PATH and the kernel answers nf_tables over netlink (no
//! process; an ADD whose transaction then fails falls back to iptables),
//! else iptables as found in PATH. STATUS and `portmap status` run a
//! checked (`nft -c`) transaction.
//!
//! Three jobs, one file each: the choice (here), why nftables is unusable
//! (`diagnose.rs`: probe, diagnosis, tool versions) and DEL's sweep of
//! every place that may hold rules (`sweep.rs`).

mod diagnose;
mod sweep;

use std::fmt;

pub use diagnose::{probe_nftables, tool_version, NftUnusable};
pub use sweep::{cleanup_backends, sweep, Sweep};

use crate::iptables::{Iptables, IptablesError, Variant};
use crate::nftables::Nftables;
use crate::{nfnetlink, Backend, BackendKind};

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

/// The backend of `kind`, here (`portmap restore` reinstalls a container
/// where it was).
pub fn backend_for(kind: BackendKind) -> Result<Box<dyn Backend>, String> {
    let iptables = |variant: Variant| -> Result<Box<dyn Backend>, String> {
        // iptables before 1.8 has no suffixed tools: plain iptables, if
        // that is the variant.
        match Iptables::variant(variant) {
            Ok(ipt) => Ok(Box::new(ipt)),
            Err(e) => match Iptables::from_path() {
                Ok(ipt) if ipt.variant_of() == variant => Ok(Box::new(ipt)),
                _ => Err(e.to_string()),
            },
        }
    };
    match kind {
        BackendKind::Nftables => Nftables::from_path()
            .map(|n| Box::new(n) as Box<dyn Backend>)
            .map_err(|e| e.to_string()),
        BackendKind::IptablesNft => iptables(Variant::Nft),
        BackendKind::IptablesLegacy => iptables(Variant::Legacy),
    }
}

/// nftables as far as can be told without a process: an `nft` in PATH and
/// a kernel that answers an nf_tables dump. Whether that nft works shows
/// in the command's own transaction (ADD falls back to iptables when it
/// fails; nothing was applied, the transaction being atomic).
fn nftables_here() -> Result<Nftables, NftUnusable> {
    let nft = match Nftables::from_path() {
        Ok(n) => n,
        Err(_) => return Err(NftUnusable::Missing),
    };
    nfnetlink::tables().map_err(|e| NftUnusable::NoKernelSupport {
        detail: e.to_string(),
    })?;
    Ok(nft)
}

/// Picks the backend for ADD and CHECK, starting no process.
pub fn select(choice: Option<Choice>) -> Result<Selected, SelectError> {
    pick(
        choice,
        nftables_here,
        "auto: the kernel has nf_tables and nft is in PATH",
    )
}

/// [`select`], but nftables only after `nft -c` completed a checked
/// transaction: for CNI STATUS and `portmap status`, which must answer
/// whether it works without installing anything.
pub fn select_checked(choice: Option<Choice>) -> Result<Selected, SelectError> {
    pick(choice, probe_nftables, "auto: nftables is usable")
}

fn pick(
    choice: Option<Choice>,
    nftables: fn() -> Result<Nftables, NftUnusable>,
    auto: &str,
) -> Result<Selected, SelectError> {
    match choice {
        Some(Choice::Nftables) => match nftables() {
            Ok(nft) => Ok(selected(nft, "requested by config")),
            Err(why) => Err(SelectError::NftablesUnusable {
                reason: why.to_string(),
            }),
        },
        Some(Choice::Iptables) => Ok(iptables("requested by config")?),
        None => match nftables() {
            Ok(nft) => Ok(selected(nft, auto)),
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
