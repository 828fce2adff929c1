//! DEL's (and GC's, `list`'s, `migrate`'s) sweep: every backend that may
//! hold our rules here, and the places that may hold some but cannot be read.

use super::probe_nftables;
use crate::iptables::{legacy_nat_families, rules, Iptables, Variant};
use crate::nftables::{nf_family_name, Nftables, TABLE};
use crate::{nfnetlink, Backend, Family};

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
