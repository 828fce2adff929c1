//! When a family's nat table cannot be read (its save tool fails, or a
//! rule made with nft is one it cannot translate): whether passing over it
//! could hide rules of ours. Only where the kernel shows nothing of ours
//! there may a command go on without it; else the failure is the command's.

use super::rules;
use super::runner::{Runner, Variant};
use super::saved::SavedTable;
use super::IptablesError;
use crate::{ContainerKey, Family};

/// Whose rules a read is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sought<'k> {
    /// One container's (DEL): its own chains are what it leaves behind.
    Container(&'k ContainerKey),
    /// Any container's (GC, list).
    Any,
}

impl Sought<'_> {
    fn matches(self, chain: &str) -> bool {
        match self {
            Sought::Container(k) => {
                chain == rules::container_chain(&k.network, &k.container_id)
                    || chain == rules::old_snat_chain(&k.network, &k.container_id)
            }
            Sought::Any => rules::is_ours(chain),
        }
    }
}

/// `runner`'s nat table; `None` where it cannot be read but provably holds
/// nothing sought. A hung tool is always an error.
pub(super) fn read_nat(
    runner: &Runner,
    sought: Sought<'_>,
) -> Result<Option<SavedTable>, IptablesError> {
    let failed = match runner.save() {
        Ok(text) => return Ok(Some(SavedTable::parse(&text))),
        Err(e @ IptablesError::Timeout { .. }) => return Err(e),
        Err(e) => e,
    };
    match may_hold(runner, sought) {
        None => Ok(None),
        Some(why) => Err(IptablesError::Unreadable {
            family: runner.family,
            why,
            source: Box::new(failed),
        }),
    }
}

/// A read the plan needs: any failure is the command's, or it would
/// succeed with the family's rules missing.
pub(super) fn read_for_plan(runner: &Runner) -> Result<SavedTable, IptablesError> {
    match runner.save() {
        Ok(text) => Ok(SavedTable::parse(&text)),
        Err(e @ IptablesError::Timeout { .. }) => Err(e),
        Err(e) => Err(IptablesError::Unreadable {
            family: runner.family,
            why: format!("the container has {} mappings", runner.family),
            source: Box::new(e),
        }),
    }
}

/// Why the kernel says the family's nat table may hold what is sought;
/// `None`: it provably does not.
fn may_hold(runner: &Runner, sought: Sought<'_>) -> Option<String> {
    match runner.variant {
        Variant::Nft => {
            let chains = match &runner.nat_chains {
                Some(chains) => chains.clone(),
                // A kernel that does not answer an nf_tables dump has no
                // nf_tables, where iptables-nft keeps its rules.
                None => crate::nfnetlink::chains(runner.family, "nat").ok()?,
            };
            let found: Vec<&String> = chains.iter().filter(|c| sought.matches(c)).collect();
            (!found.is_empty()).then(|| format!("the kernel lists {} there", names(&found)))
        }
        // Legacy tables cannot be looked into without reading them.
        Variant::Legacy => legacy_nat_families()
            .contains(&runner.family)
            .then(|| "a legacy nat table exists, which may hold our rules".to_string()),
    }
}

/// A few chain names, for people.
pub fn names(chains: &[&String]) -> String {
    const SHOWN: usize = 3;
    let mut s: Vec<&str> = chains.iter().take(SHOWN).map(|c| c.as_str()).collect();
    if chains.len() > SHOWN {
        s.push("…");
    }
    let noun = if chains.len() == 1 { "chain" } else { "chains" };
    format!("{noun} {}", s.join(", "))
}

/// Families whose legacy nat table the kernel has in this namespace.
pub fn legacy_nat_families() -> Vec<Family> {
    [
        (Family::V4, "ip_tables_names"),
        (Family::V6, "ip6_tables_names"),
    ]
    .into_iter()
    .filter(|(_, file)| {
        std::fs::read_to_string(crate::host::thread_net(file))
            .is_ok_and(|s| s.lines().any(|l| l == "nat"))
    })
    .map(|(f, _)| f)
    .collect()
}

/// Whether this namespace's kernel has the family at all: without IPv6
/// (`ipv6.disable=1`) there is no ip6tables to need, as upstream skips it.
pub(super) fn kernel_has(family: Family) -> bool {
    match family {
        Family::V4 => true,
        Family::V6 => crate::host::thread_net("if_inet6").exists(),
    }
}
