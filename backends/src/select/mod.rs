//! Run-time backend choice. An explicit backend wins; otherwise nftables
//! when `nft` is in PATH and the kernel answers nf_tables over netlink (no
//! process; an ADD whose transaction then fails falls back to iptables),
//! else iptables as found in PATH. STATUS and `portmap status` run a
//! checked (`nft -c`) transaction.

use std::fmt;

use crate::iptables::{legacy_nat_families, rules, Iptables, IptablesError, Variant};
use crate::nftables::{nf_family_name, NftError, Nftables, TABLE};
use crate::{exec, nfnetlink, Backend, Family};

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

/// Why nftables is not usable here: what a person fixes differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftUnusable {
    #[error("nft binary not found in PATH")]
    Missing,
    /// The binary cannot run (missing library, wrong architecture) or
    /// cannot parse our JSON (nft 0.8 has no JSON): the kernel was not asked.
    #[error("nft binary {binary} fails to run or to parse JSON: {detail}")]
    BrokenBinary { binary: String, detail: String },
    #[error("kernel has no nf_tables in this namespace: {detail}")]
    NoKernelSupport { detail: String },
    #[error("kernel refused an nf_tables transaction: {detail}")]
    KernelRefused { detail: String },
}

/// The nftables backend when usable here, else why not.
pub fn probe_nftables() -> Result<Nftables, NftUnusable> {
    let nft = match Nftables::from_path() {
        Ok(n) => n,
        Err(NftError::NotFound) => return Err(NftUnusable::Missing),
        Err(e) => {
            return Err(NftUnusable::BrokenBinary {
                binary: "nft".into(),
                detail: e.to_string(),
            })
        }
    };
    // `nft -c` runs the transaction through the kernel and aborts it: it
    // proves nf_tables works here and leaves nothing behind.
    let probe = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"cni_hostport_probe"}}}]}"#;
    let checked = exec::run(
        nft.binary(),
        &["-c", "-j", "-f", "-"],
        Some(probe.as_bytes()),
        exec::PROBE,
    );
    let (failure, hung) = match checked {
        Ok(out) if out.status.success() => return Ok(nft),
        Ok(out) => (
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
            false,
        ),
        Err(e @ exec::ExecError::Timeout { .. }) => (e.to_string(), true),
        Err(e) => (format!("cannot run it: {e}"), false),
    };
    // Only on failure: ask the kernel directly, then whether nft runs at
    // all (not again after it hung: the answer is in).
    let kernel = nfnetlink::tables().map(|_| ()).map_err(|e| e.to_string());
    let runs = !hung
        && exec::run(nft.binary(), &["--version"], None, exec::PROBE)
            .is_ok_and(|o| o.status.success());
    Err(diagnose(
        &nft.binary().display().to_string(),
        kernel,
        runs,
        failure,
    ))
}

/// Which part failed, from what the kernel's table dump, `nft --version`
/// and the probe transaction said.
fn diagnose(binary: &str, kernel: Result<(), String>, runs: bool, failure: String) -> NftUnusable {
    const KERNEL_WORDS: [&str; 4] = [
        "Could not process rule",
        "Operation not supported",
        "Operation not permitted",
        "Protocol not supported",
    ];
    if let Err(detail) = kernel {
        return NftUnusable::NoKernelSupport { detail };
    }
    if runs && KERNEL_WORDS.iter().any(|w| failure.contains(w)) {
        return NftUnusable::KernelRefused { detail: failure };
    }
    NftUnusable::BrokenBinary {
        binary: binary.to_string(),
        detail: failure,
    }
}

/// What `<tool> --version` prints (first line), for people.
pub fn tool_version(tool: &std::path::Path) -> Option<String> {
    let out = exec::run(tool, &["--version"], None, exec::PROBE).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

/// The backend a name from `Backend::name` stands for (`portmap restore`
/// reinstalls a container where it was).
pub fn backend_named(name: &str) -> Result<Box<dyn Backend>, String> {
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
    match name {
        "nftables" => Nftables::from_path()
            .map(|n| Box::new(n) as Box<dyn Backend>)
            .map_err(|e| e.to_string()),
        "iptables-nft" => iptables(Variant::Nft),
        "iptables-legacy" => iptables(Variant::Legacy),
        other => Err(format!("unknown backend {other:?}")),
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

/// Every backend that may hold our rules, and the places that may hold
/// some but that no working tool here can read.
pub struct Sweep {
    pub backends: Vec<Box<dyn Backend>>,
    /// e.g. our nftables table exists but `nft` is missing: a DEL that
    /// skipped it would report success while rules stay.
    pub unreadable: Vec<String>,
}

/// Every backend that may hold our rules in this namespace, for DEL, GC,
/// `list` and `migrate`: rules made by another backend or binary are never
/// leaked. Only families that can hold rules are read, so a DEL starts one
/// read per family that has something, not one per family and backend:
/// the kernel's nf_tables table list (netlink, no process) shows where our
/// table and iptables-nft's `nat` tables exist; its legacy table names
/// show where legacy ones do (reading would create them).
pub fn cleanup_backends() -> Vec<Box<dyn Backend>> {
    sweep().backends
}

/// [`cleanup_backends`], with what could not be covered.
pub fn sweep() -> Sweep {
    let nf_tables = nfnetlink::tables().ok();
    let mut unreadable = Vec::new();
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
    let legacy = legacy_nat_families();
    // iptables-nft's nat tables and their chains, asked once here: a nat
    // table can exist without us (upstream's DEL lists both families,
    // which creates it), only one with CNI chains counts, and DEL reuses
    // the chain names. `None`: the kernel did not answer.
    let nft_nat: Option<Vec<(Family, Option<Vec<String>>)>> = with_table("nat").map(|families| {
        families
            .into_iter()
            .map(|f| (f, nfnetlink::chains(f, "nat").ok()))
            .collect()
    });
    let mut all: Vec<Box<dyn Backend>> = Vec::new();
    let nft = match with_table(TABLE) {
        Some(ours) if ours.is_empty() => None,
        Some(ours) => match Nftables::from_path() {
            Ok(n) => Some(n.with_tables_in(ours)),
            Err(e) => {
                unreadable.push(format!(
                    "the kernel has our nftables table {TABLE} but nft cannot read it: {e}"
                ));
                None
            }
        },
        // The kernel did not answer the dump: let nft itself tell.
        None => probe_nftables().ok(),
    };
    if let Some(nft) = nft {
        all.push(Box::new(nft));
    }
    // Where each iptables variant can hold rules; unknown (the kernel did
    // not answer, yet iptables-nft needs no nft binary): every family.
    let limited = |ipt: Iptables| match (ipt.variant_of(), &nft_nat) {
        (Variant::Legacy, _) => ipt.only(&legacy),
        (Variant::Nft, Some(tables)) => ipt.in_nat_tables(tables),
        (Variant::Nft, None) => Some(ipt),
    };
    // (variant, family) pairs some tool here can read.
    let mut covered: Vec<(Variant, Family)> = Vec::new();
    let mut cover = |ipt: Iptables, all: &mut Vec<Box<dyn Backend>>| {
        let variant = ipt.variant_of();
        let new: Vec<Family> = (ipt.families().into_iter())
            .filter(|f| !covered.contains(&(variant, *f)))
            .collect();
        covered.extend(new.iter().map(|f| (variant, *f)));
        let ipt = ipt.only(&new).and_then(limited);
        all.extend(ipt.map(|i| Box::new(i) as Box<dyn Backend>));
    };
    for variant in [Variant::Nft, Variant::Legacy] {
        if let Ok(ipt) = Iptables::variant(variant) {
            cover(ipt, &mut all);
        }
    }
    // A PATH whose `iptables` is neither suffixed tool (a distribution
    // without the variant names, iptables before 1.8) still gets cleaned.
    if let Ok(ipt) = Iptables::from_path() {
        cover(ipt, &mut all);
    }
    let uncovered = |variant: Variant, f: &Family| !covered.contains(&(variant, *f));
    // iptables-nft's chains of ours with no tool to read them. (An
    // nf_tables `nat` table alone is not counted: nft users make tables of
    // that name too.)
    for (f, chains) in nft_nat.iter().flatten() {
        let ours: Vec<&String> = chains
            .iter()
            .flatten()
            .filter(|c| rules::is_ours(c))
            .collect();
        if !ours.is_empty() && uncovered(Variant::Nft, f) {
            let base = ip_tables(*f);
            unreadable.push(format!(
                "the kernel's nf_tables {f} nat table holds {} of ours but no working \
                 iptables-nft tools for {f} are in PATH ({base}-nft-save and \
                 {base}-nft-restore, or a {base} that reports itself nf_tables)",
                crate::iptables::chain_names(&ours)
            ));
        }
    }
    // Legacy nat tables exist only where some legacy tool made them.
    let unread: Vec<String> = legacy
        .iter()
        .filter(|f| uncovered(Variant::Legacy, f))
        .map(|f| f.to_string())
        .collect();
    if !unread.is_empty() {
        unreadable.push(format!(
            "the kernel has legacy iptables nat tables ({}) but no working iptables-legacy \
             tools for them are in PATH (iptables-legacy-save, or an iptables that reports \
             itself legacy; ip6tables likewise)",
            unread.join(", ")
        ));
    }
    Sweep {
        backends: all,
        unreadable,
    }
}

/// The iptables tool name of a family.
fn ip_tables(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnosis_names_the_part_that_failed() {
        let refused = "Error: Could not process rule: Operation not supported";
        assert_eq!(
            diagnose(
                "nft",
                Err("netlink socket: EPROTONOSUPPORT".into()),
                true,
                refused.into()
            ),
            NftUnusable::NoKernelSupport {
                detail: "netlink socket: EPROTONOSUPPORT".into()
            }
        );
        assert_eq!(
            diagnose("nft", Ok(()), true, refused.into()),
            NftUnusable::KernelRefused {
                detail: refused.into()
            }
        );
        let missing_lib = "nft: error while loading shared libraries: libnftables.so.1";
        assert!(matches!(
            diagnose("/usr/sbin/nft", Ok(()), false, missing_lib.into()),
            NftUnusable::BrokenBinary { .. }
        ));
        // nft 0.8 runs, but has no JSON: a binary problem, not the kernel's.
        let no_json = "nft: invalid option -- 'j'";
        assert!(matches!(
            diagnose("nft", Ok(()), true, no_json.into()),
            NftUnusable::BrokenBinary { .. }
        ));
        assert_eq!(
            diagnose("nft", Ok(()), false, "x".into()).to_string(),
            "nft binary nft fails to run or to parse JSON: x"
        );
    }
}
