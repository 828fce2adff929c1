//! iptables backend (legacy and nf_tables variants): upstream's chain
//! layout, one `iptables-save` read and one `iptables-restore --noflush`
//! batch per family and command.

mod access;
mod add;
pub mod batch;
mod check;
mod error;
pub mod guard;
mod netlink;
#[cfg(test)]
mod netlink_tests;
mod read;
pub mod rules;
pub mod runner;
pub mod saved;
pub mod tree;
mod xt;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::plan::{FamilyPlan, Plan};
use crate::{
    Attachment, Backend, BackendError, BackendKind, ClosedPort, ContainerKey, Family,
    InstalledContainer, InstalledMapping, InstalledOptions, Known, MasqMark, Protocol, Receipt,
    Verdict,
};
pub use access::{legacy_nat_families, names as chain_names};
use access::{read_for_plan, read_nat, Sought};
pub use error::IptablesError;
use read::*;
pub use runner::{Detected, Runner, Variant};
use saved::SavedTable;

#[cfg(test)]
mod tests;

/// The iptables backend: one runner per usable family.
#[derive(Debug, Clone)]
pub struct Iptables {
    variant: Variant,
    v4: Option<Runner>,
    v6: Option<Runner>,
    /// The tool names each family's runner was looked for by (`ip6tables`,
    /// `ip6tables-nft`), for errors.
    bases: [String; 2],
}

impl Iptables {
    /// The `iptables`/`ip6tables` in PATH, as upstream uses them; the
    /// variant is what `iptables` resolves to.
    pub fn from_path() -> Result<Iptables, IptablesError> {
        let ipt =
            which::which("iptables").map_err(|_| IptablesError::NotUsable { variant: None })?;
        let detected = Variant::detect(&ipt)?.ok_or(IptablesError::NotUsable { variant: None })?;
        Self::with_bases(detected, "iptables", "ip6tables")
    }

    /// A specific variant through its suffixed tools (`iptables-legacy-save`…,
    /// iptables 1.8 and later).
    pub fn variant(variant: Variant) -> Result<Iptables, IptablesError> {
        let v = variant.as_str();
        let detected = Detected {
            variant,
            restore_waits: true,
        };
        Self::with_bases(
            detected,
            &format!("iptables-{v}"),
            &format!("ip6tables-{v}"),
        )
    }

    /// iptables-nft from `dir` (`<dir>/iptables-nft-save` and so on), not
    /// PATH: another userland's tools beside this one's.
    #[cfg(test)]
    pub(crate) fn nft_in(dir: &std::path::Path) -> Result<Iptables, IptablesError> {
        let detected = Detected {
            variant: Variant::Nft,
            restore_waits: true,
        };
        let base = |b: &str| dir.join(b).display().to_string();
        Self::with_bases(detected, &base("iptables-nft"), &base("ip6tables-nft"))
    }

    fn with_bases(detected: Detected, v4: &str, v6: &str) -> Result<Iptables, IptablesError> {
        let variant = detected.variant;
        let ipt = Iptables {
            variant,
            v4: Runner::find(Family::V4, v4, detected),
            v6: Runner::find(Family::V6, v6, detected),
            bases: [v4.to_string(), v6.to_string()],
        };
        if ipt.v4.is_none() && ipt.v6.is_none() {
            return Err(IptablesError::NotUsable {
                variant: Some(variant),
            });
        }
        Ok(ipt)
    }

    /// This backend limited to `families`; `None` when that leaves none.
    pub fn only(self, families: &[Family]) -> Option<Iptables> {
        self.keep(|r| families.contains(&r.family).then_some(r))
    }

    /// The runners `keep` returns; `None` when it keeps none.
    fn keep(self, keep: impl Fn(Runner) -> Option<Runner>) -> Option<Iptables> {
        let ipt = Iptables {
            variant: self.variant,
            v4: self.v4.and_then(&keep),
            v6: self.v6.and_then(&keep),
            bases: self.bases,
        };
        (ipt.v4.is_some() || ipt.v6.is_some()).then_some(ipt)
    }

    /// This iptables-nft backend limited to the families whose nf_tables
    /// `nat` table holds CNI chains (a family whose chains are not known,
    /// `None`, is kept), each runner told its chains so a DEL need not ask
    /// again; `None` when that leaves none.
    pub fn in_nat_tables(self, tables: &[(Family, Option<Vec<String>>)]) -> Option<Iptables> {
        self.keep(|mut r| {
            let (_, chains) = tables.iter().find(|(f, _)| *f == r.family)?;
            if chains
                .as_ref()
                .is_some_and(|c| !c.iter().any(|n| n.starts_with("CNI-")))
            {
                return None;
            }
            r.nat_chains = chains.clone();
            Some(r)
        })
    }

    pub fn variant_of(&self) -> Variant {
        self.variant
    }

    /// The families this backend has tools for.
    pub fn families(&self) -> Vec<Family> {
        self.runners().iter().map(|r| r.family).collect()
    }

    fn runner(&self, family: Family) -> Option<&Runner> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    fn runners(&self) -> Vec<&Runner> {
        [&self.v4, &self.v6].into_iter().flatten().collect()
    }

    /// Runners whose nat table can be read, with what they read; one that
    /// cannot is skipped only where it provably holds nothing `sought`.
    fn readable<'r>(
        runners: &[&'r Runner],
        sought: Sought<'_>,
    ) -> Result<Vec<(&'r Runner, SavedTable)>, IptablesError> {
        let mut found = Vec::new();
        for r in runners {
            if let Some(saved) = read_nat(r, sought)? {
                found.push((*r, saved));
            }
        }
        Ok(found)
    }

    fn no_tools(&self, family: Family) -> IptablesError {
        let base = match family {
            Family::V4 => &self.bases[0],
            Family::V6 => &self.bases[1],
        };
        IptablesError::NoTools {
            family,
            variant: self.variant,
            tools: format!("{base}-save and {base}-restore"),
        }
    }

    fn not_usable(&self) -> IptablesError {
        IptablesError::NotUsable {
            variant: Some(self.variant),
        }
    }

    /// The plan's families that have mappings, each with its nat table,
    /// all read before anything is written: a family that cannot be read
    /// fails the command with nothing applied. Only a family the kernel
    /// lacks (and so no tool of it) is skipped, as upstream does.
    fn plan_families<'p>(
        &self,
        plan: &'p Plan,
    ) -> Result<Vec<(&'p FamilyPlan, &Runner, SavedTable)>, IptablesError> {
        let mut found = Vec::new();
        for (fam, runner) in self.plan_runners(plan)? {
            found.push((fam, runner, read_for_plan(runner)?));
        }
        Ok(found)
    }

    /// The plan's families that have mappings, each with its runner (see
    /// [`Iptables::plan_families`]), before any read.
    fn plan_runners<'p>(
        &self,
        plan: &'p Plan,
    ) -> Result<Vec<(&'p FamilyPlan, &Runner)>, IptablesError> {
        let mut found = Vec::new();
        for fam in plan.families.iter().filter(|f| !f.dnats.is_empty()) {
            let Some(runner) = self.runner(fam.family) else {
                if access::kernel_has(fam.family) {
                    return Err(self.no_tools(fam.family));
                }
                continue;
            };
            found.push((fam, runner));
        }
        if found.is_empty() && !plan.is_empty() {
            return Err(self.not_usable());
        }
        Ok(found)
    }

    fn check_inner(&self, plan: &Plan) -> Result<Option<String>, IptablesError> {
        for (fam, _, saved) in self.plan_families(plan)? {
            if let Some(missing) = self.compare(plan, fam, &saved) {
                return Ok(Some(missing));
            }
        }
        Ok(None)
    }

    fn compare(&self, plan: &Plan, fam: &FamilyPlan, saved: &SavedTable) -> Option<String> {
        batch::check(plan, fam, saved)
            .map(|missing| format!("{} {}: {missing}", self.name_str(), fam.family))
    }

    /// Deletes the containers `doomed` picks from what each family's read
    /// holds, in one restore per family; returns removed mappings and IDs.
    /// A family that fails does not stop the others (what can be removed
    /// is), but fails the whole; a hung tool stops all (it would hang again).
    fn del_where(
        runners: &[&Runner],
        sought: Sought<'_>,
        doomed: impl Fn(&SavedTable) -> Vec<ContainerKey>,
    ) -> Result<(Vec<InstalledMapping>, BTreeSet<String>), IptablesError> {
        let mut removed = Vec::new();
        let mut ids = BTreeSet::new();
        let mut failed = None;
        for runner in runners {
            let saved = match read_nat(runner, sought) {
                Ok(Some(saved)) => saved,
                Ok(None) => continue,
                Err(e) if e.is_timeout() => return Err(e),
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            let keys = doomed(&saved);
            let Some(b) = batch::del(&keys, &saved) else {
                continue;
            };
            if let Err(e) = runner.restore(&b) {
                if e.is_timeout() {
                    return Err(e);
                }
                failed.get_or_insert(e);
                continue;
            }
            for key in &keys {
                let chain = rules::container_chain(&key.network, &key.container_id);
                removed.extend(mappings_of_chain(runner.family, &saved, &chain));
                ids.insert(key.container_id.clone());
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((removed, ids)),
        }
    }

    /// DEL of one container on iptables-nft while others stay: reads only
    /// CNI-HOSTPORT-DNAT (`iptables -S`: 6.5 ms at 1,000 containers, where
    /// `iptables-save` translates the whole nat table back in 33 ms) and,
    /// over netlink, which chains exist; the ports to flush come from the
    /// entry rules. `None` when the whole read is needed: legacy, no
    /// netlink answer or no `iptables` tool, an old layout's chain, a port
    /// tree (its leaf rules are in chains of their own), or the last
    /// container out (the shared chains go too).
    fn del_reading_entries(
        &self,
        runner: &Runner,
        key: &ContainerKey,
    ) -> Option<Result<Vec<ClosedPort>, IptablesError>> {
        if self.variant != Variant::Nft {
            return None;
        }
        let chains = match &runner.nat_chains {
            Some(chains) => chains.clone(),
            None => crate::nfnetlink::chains(runner.family, "nat").ok()?,
        };
        let own = rules::container_chain(&key.network, &key.container_id);
        let old = rules::old_snat_chain(&key.network, &key.container_id);
        let others = chains.iter().any(|c| c.starts_with("CNI-DN-") && *c != own);
        if !others || chains.contains(&old) || chains.iter().any(|c| tree::is_tree(c)) {
            return None;
        }
        let listed = match runner.list_chain(rules::DNAT_CHAIN)? {
            Ok(text) => text,
            // The whole read would hang as long again.
            Err(e @ IptablesError::Timeout { .. }) => return Some(Err(e)),
            Err(_) => return None,
        };
        let saved = SavedTable {
            chains,
            ..SavedTable::parse(&listed)
        };
        let closed = saved
            .jumps_to(&own)
            .flat_map(|(_, spec)| entry_ports(runner.family, spec))
            .collect();
        if let Some(b) = batch::del(std::slice::from_ref(key), &saved) {
            if let Err(e) = runner.restore(&b) {
                return Some(Err(e));
            }
        }
        Some(Ok(closed))
    }

    fn list_inner(&self) -> Result<Vec<InstalledContainer>, IptablesError> {
        let tables: Vec<(Family, SavedTable)> = Self::readable(&self.runners(), Sought::Any)?
            .into_iter()
            .map(|(runner, saved)| (runner.family, saved))
            .collect();
        Ok(containers(self.kind_of(), &tables))
    }

    fn kind_of(&self) -> BackendKind {
        match self.variant {
            Variant::Legacy => BackendKind::IptablesLegacy,
            Variant::Nft => BackendKind::IptablesNft,
        }
    }

    fn name_str(&self) -> &'static str {
        self.kind_of().name()
    }
}

impl Backend for Iptables {
    fn kind(&self) -> BackendKind {
        self.kind_of()
    }

    fn records_network(&self) -> bool {
        true
    }

    /// Every ADD reads the family's nat table anyway, and each attachment
    /// (network and ID) has a chain of its own: `earlier` adds nothing.
    fn install(
        &self,
        plan: &Plan,
        _earlier: Option<&Known>,
    ) -> Result<Option<Receipt>, BackendError> {
        self.add_inner(plan)?;
        Ok(None)
    }

    fn install_all(
        &self,
        wanted: &[(&Plan, Option<&Known>)],
    ) -> Result<Vec<Option<Receipt>>, BackendError> {
        let plans: Vec<&Plan> = wanted.iter().map(|(plan, _)| *plan).collect();
        self.add_all(&plans)?;
        Ok(vec![None; plans.len()])
    }

    fn install_chunk(&self) -> usize {
        add::INSTALL_CHUNK
    }

    fn check(&self, plan: &Plan) -> Result<Verdict, BackendError> {
        Ok(self
            .check_inner(plan)?
            .map_or(Verdict::Whole, Verdict::Damaged))
    }

    fn check_all(&self, plans: &[&Plan]) -> Result<Vec<Verdict>, BackendError> {
        Ok(self.check_all_inner(plans)?)
    }

    /// The chain names the attachment (network and ID): nothing else of
    /// what is known is needed, and iptables ADDs give no receipts.
    fn del(
        &self,
        key: &ContainerKey,
        _known: &Known,
        _receipt: Option<&Receipt>,
    ) -> Result<Vec<ClosedPort>, BackendError> {
        let mut closed = Vec::new();
        let mut whole_read = Vec::new();
        let mut failed = None;
        for runner in self.runners() {
            match self.del_reading_entries(runner, key) {
                Some(Ok(done)) => closed.extend(done),
                Some(Err(e)) if e.is_timeout() => return Err(e.into()),
                Some(Err(e)) => {
                    failed.get_or_insert(e);
                }
                None => whole_read.push(runner),
            }
        }
        let sought = Sought::Container(key);
        match Self::del_where(&whole_read, sought, |_| vec![key.clone()]) {
            Ok((removed, _)) => closed.extend(removed.iter().map(ClosedPort::from)),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(closed),
        }
    }

    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError> {
        Ok(self.list_inner()?)
    }

    /// Entry rules record the network: every container of it not kept goes.
    fn gc(
        &self,
        network: &str,
        keep: &BTreeSet<String>,
        _doomed: &[Attachment],
    ) -> Result<Vec<String>, BackendError> {
        let (_, ids) = Self::del_where(&self.runners(), Sought::Any, |saved| {
            entries(saved)
                .into_iter()
                .filter(|(net, id, _)| net == network && !keep.contains(id))
                .map(|(network, container_id, _)| ContainerKey {
                    network,
                    container_id,
                })
                .collect()
        })?;
        Ok(ids.into_iter().collect())
    }

    fn localnet_guard(&self) -> Result<bool, BackendError> {
        let Some(v4) = &self.v4 else {
            return Ok(false);
        };
        let mangle = SavedTable::parse(&v4.read_table(guard::GUARD_TABLE)?);
        Ok(guard::intact(&mangle))
    }
}
