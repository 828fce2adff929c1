//! Run-time backend choice. An explicit backend wins; otherwise nftables
//! when `nft` exists and the kernel accepts a (dry-run) nf_tables
//! transaction in this namespace, else iptables as found in PATH.

use std::fmt;

use crate::iptables::{Iptables, IptablesError, Variant};
use crate::nftables::{nf_family_name, NftError, Nftables, TABLE};
use crate::{nfnetlink, Backend, Family};

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

/// Every backend that may hold our rules in this namespace, for DEL, GC,
/// `list` and `migrate`: rules made by another backend or binary are never
/// leaked. Only families that can hold rules are read, so a DEL starts one
/// read per family that has something, not one per family and backend:
/// the kernel's nf_tables table list (netlink, no process) shows where our
/// table and iptables-nft's `nat` tables exist; its legacy table names
/// show where legacy ones do (reading would create them).
pub fn cleanup_backends() -> Vec<Box<dyn Backend>> {
    let nf_tables = nfnetlink::tables().ok();
    let with_table = |name: &str| -> Option<Vec<Family>> {
        let tables = nf_tables.as_ref()?;
        Some(
            [Family::V4, Family::V6]
                .into_iter()
                .filter(|f| {
                    tables
                        .iter()
                        .any(|(fam, n)| fam == nf_family_name(*f) && n == name)
                })
                .collect(),
        )
    };
    // Where each iptables variant can hold rules; `None`: unknown (nft
    // cannot tell, yet iptables-nft needs no nft binary), read every family.
    let families_of = |variant: Variant| match variant {
        Variant::Legacy => Some(legacy_nat_families()),
        Variant::Nft => with_table("nat"),
    };
    let mut all: Vec<Box<dyn Backend>> = Vec::new();
    let nft = match with_table(TABLE) {
        Some(ours) if ours.is_empty() => None,
        Some(ours) => Nftables::from_path().ok().map(|n| n.with_tables_in(ours)),
        // The kernel did not answer the dump: let nft itself tell.
        None => probe_nftables().ok(),
    };
    if let Some(nft) = nft {
        all.push(Box::new(nft));
    }
    let limited = |ipt: Iptables| match families_of(ipt.variant_of()) {
        Some(families) => ipt.only(&families),
        None => Some(ipt),
    };
    let mut covered = Vec::new();
    for variant in [Variant::Nft, Variant::Legacy] {
        if let Ok(ipt) = Iptables::variant(variant) {
            covered.push(variant);
            all.extend(limited(ipt).map(|i| Box::new(i) as Box<dyn Backend>));
        }
    }
    // A PATH whose `iptables` is neither suffixed tool (a distribution
    // without the variant names) still gets cleaned.
    if let Ok(ipt) = Iptables::from_path() {
        if !covered.contains(&ipt.variant_of()) {
            all.extend(limited(ipt).map(|i| Box::new(i) as Box<dyn Backend>));
        }
    }
    all
}

/// Families whose legacy nat table the kernel has in this namespace.
fn legacy_nat_families() -> Vec<Family> {
    [
        (Family::V4, "/proc/thread-self/net/ip_tables_names"),
        (Family::V6, "/proc/thread-self/net/ip6_tables_names"),
    ]
    .into_iter()
    .filter(|(_, p)| std::fs::read_to_string(p).is_ok_and(|s| s.lines().any(|l| l == "nat")))
    .map(|(f, _)| f)
    .collect()
}
