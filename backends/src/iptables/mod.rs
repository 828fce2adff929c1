//! iptables backend (legacy and nf_tables variants): upstream's chain
//! layout, one `iptables-save` read and one `iptables-restore --noflush`
//! batch per family and command.

pub mod batch;
pub mod rules;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::plan::{FamilyPlan, Plan};
use crate::{
    Backend, BackendError, ContainerKey, Family, InstalledContainer, InstalledMapping, Protocol,
};
use rules::SavedTable;
pub use runner::{Runner, Variant};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("neither iptables nor ip6tables is usable")]
    NotUsable { variant: Option<Variant> },
    #[error("could not run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} ({variant}) failed to read the nat table")]
    Save {
        tool: String,
        variant: Variant,
        stderr: String,
    },
    #[error("{tool} ({variant}) rejected the batch")]
    Restore {
        tool: String,
        variant: Variant,
        stderr: String,
        batch: String,
    },
}

impl IptablesError {
    pub fn details(&self) -> String {
        match self {
            IptablesError::NotUsable { variant } => match variant {
                Some(v) => {
                    format!("iptables variant: {v}; no usable save/restore tools or nat table")
                }
                None => "no iptables binary found in PATH".to_string(),
            },
            IptablesError::Spawn { source, .. } => source.to_string(),
            IptablesError::Save { stderr, .. } => stderr.clone(),
            IptablesError::Restore { stderr, batch, .. } => format!("{stderr}\nbatch:\n{batch}"),
        }
    }
}

/// The iptables backend: one runner per usable family.
#[derive(Debug, Clone)]
pub struct Iptables {
    variant: Variant,
    v4: Option<Runner>,
    v6: Option<Runner>,
}

impl Iptables {
    /// The `iptables`/`ip6tables` in PATH, as upstream uses them; the
    /// variant is what `iptables` resolves to.
    pub fn from_path() -> Result<Iptables, IptablesError> {
        let ipt =
            which::which("iptables").map_err(|_| IptablesError::NotUsable { variant: None })?;
        let variant = Variant::detect(&ipt).ok_or(IptablesError::NotUsable { variant: None })?;
        Self::with_bases(variant, "iptables", "ip6tables")
    }

    /// A specific variant through its suffixed tools (`iptables-legacy-save`…).
    pub fn variant(variant: Variant) -> Result<Iptables, IptablesError> {
        let v = variant.as_str();
        Self::with_bases(variant, &format!("iptables-{v}"), &format!("ip6tables-{v}"))
    }

    fn with_bases(variant: Variant, v4: &str, v6: &str) -> Result<Iptables, IptablesError> {
        let ipt = Iptables {
            variant,
            v4: Runner::find(Family::V4, v4, variant),
            v6: Runner::find(Family::V6, v6, variant),
        };
        if ipt.v4.is_none() && ipt.v6.is_none() {
            return Err(IptablesError::NotUsable {
                variant: Some(variant),
            });
        }
        Ok(ipt)
    }

    pub fn variant_of(&self) -> Variant {
        self.variant
    }

    fn runner(&self, family: Family) -> Option<&Runner> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// Runners whose nat table can be read, with what they read. A family
    /// whose tool or kernel support is missing is skipped, as upstream does.
    fn readable(&self) -> Vec<(&Runner, SavedTable)> {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .filter_map(|r| r.save().ok().map(|text| (r, SavedTable::parse(&text))))
            .collect()
    }

    fn not_usable(&self) -> IptablesError {
        IptablesError::NotUsable {
            variant: Some(self.variant),
        }
    }

    /// The plan's families that have mappings and a readable nat table,
    /// with what was read; an error when the plan needs one and none is.
    fn plan_families<'p>(
        &self,
        plan: &'p Plan,
    ) -> Result<Vec<(&'p FamilyPlan, &Runner, SavedTable)>, IptablesError> {
        let found: Vec<_> = plan
            .families
            .iter()
            .filter(|f| !f.dnats.is_empty())
            .filter_map(|fam| {
                let runner = self.runner(fam.family)?;
                let text = runner.save().ok()?;
                Some((fam, runner, SavedTable::parse(&text)))
            })
            .collect();
        if found.is_empty() && !plan.is_empty() {
            return Err(self.not_usable());
        }
        Ok(found)
    }

    fn add_inner(&self, plan: &Plan) -> Result<(), IptablesError> {
        for (fam, runner, saved) in self.plan_families(plan)? {
            runner.restore(&batch::add(plan, fam, &saved))?;
        }
        Ok(())
    }

    fn check_inner(&self, plan: &Plan) -> Result<Option<String>, IptablesError> {
        for (fam, _, saved) in self.plan_families(plan)? {
            if let Some(missing) = batch::check(plan, fam, &saved) {
                return Ok(Some(format!(
                    "{} {}: {missing}",
                    self.name_str(),
                    fam.family
                )));
            }
        }
        Ok(None)
    }

    /// Deletes the containers `doomed` picks from what each family's read
    /// holds, in one restore per family; returns removed mappings and IDs.
    fn del_where(
        &self,
        doomed: impl Fn(&SavedTable) -> Vec<ContainerKey>,
    ) -> Result<(Vec<InstalledMapping>, BTreeSet<String>), IptablesError> {
        let mut removed = Vec::new();
        let mut ids = BTreeSet::new();
        for (runner, saved) in self.readable() {
            let keys = doomed(&saved);
            let Some(b) = batch::del(&keys, &saved) else {
                continue;
            };
            for key in &keys {
                let chain = rules::container_chain(&key.network, &key.container_id);
                removed.extend(mappings_of_chain(runner.family, &saved, &chain));
                ids.insert(key.container_id.clone());
            }
            runner.restore(&b)?;
        }
        Ok((removed, ids))
    }

    fn list_inner(&self) -> Vec<InstalledContainer> {
        let mut by_id: BTreeMap<(String, String), Vec<InstalledMapping>> = BTreeMap::new();
        for (runner, saved) in self.readable() {
            for (network, id, chain) in entries(&saved) {
                by_id
                    .entry((id, network))
                    .or_default()
                    .extend(mappings_of_chain(runner.family, &saved, &chain));
            }
        }
        by_id
            .into_iter()
            .map(|((container_id, network), mut mappings)| {
                mappings.sort();
                mappings.dedup();
                InstalledContainer {
                    backend: self.name_str(),
                    container_id,
                    network: Some(network),
                    mappings,
                }
            })
            .collect()
    }

    fn name_str(&self) -> &'static str {
        match self.variant {
            Variant::Legacy => "iptables-legacy",
            Variant::Nft => "iptables-nft",
        }
    }
}

impl Backend for Iptables {
    fn name(&self) -> &'static str {
        self.name_str()
    }

    fn add(&self, plan: &Plan) -> Result<(), BackendError> {
        Ok(self.add_inner(plan)?)
    }

    fn check(&self, plan: &Plan) -> Result<(), BackendError> {
        match self.check_inner(plan)? {
            None => Ok(()),
            Some(what) => Err(BackendError::CheckFailed {
                backend: self.name_str(),
                what,
            }),
        }
    }

    fn del(&self, key: &ContainerKey) -> Result<Vec<InstalledMapping>, BackendError> {
        Ok(self.del_where(|_| vec![key.clone()])?.0)
    }

    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError> {
        Ok(self.list_inner())
    }

    fn gc(&self, network: &str, keep: &BTreeSet<String>) -> Result<Vec<String>, BackendError> {
        let (_, ids) = self.del_where(|saved| {
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
}

/// (network, container ID, container chain) of every entry rule.
fn entries(saved: &SavedTable) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = saved
        .rules_of(rules::DNAT_CHAIN)
        .iter()
        .filter_map(|spec| {
            let words = rules::shell_words(spec);
            let comment = words.iter().skip_while(|w| *w != "--comment").nth(1)?;
            let (network, id) = rules::parse_entry_comment(comment)?;
            Some((network, id, rules::jump_target(spec)?.to_string()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Reads the DNAT rules of a container chain back into mappings.
fn mappings_of_chain(family: Family, saved: &SavedTable, chain: &str) -> Vec<InstalledMapping> {
    saved
        .rules_of(chain)
        .iter()
        .filter_map(|spec| parse_dnat(family, spec))
        .collect()
}

fn parse_dnat(family: Family, spec: &str) -> Option<InstalledMapping> {
    let words = rules::shell_words(spec);
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| w == flag)
            .and_then(|i| words.get(i + 1))
    };
    let to = after("--to-destination")?;
    let (ip, port) = to.rsplit_once(':')?;
    let container_ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let host_ip = after("-d")
        .and_then(|d| d.split('/').next())
        .and_then(|d| d.parse().ok());
    Some(InstalledMapping {
        family,
        protocol: Protocol::parse(after("-p")?)?,
        host_ip,
        host_port: after("--dport")?.parse().ok()?,
        container_ip,
        container_port: port.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dnat_rules_back() {
        let m = parse_dnat(
            Family::V6,
            "-d 2001:db8::1/128 -p tcp -m tcp --dport 9443 -j DNAT --to-destination [fd00:88::5]:443",
        )
        .expect("parsed");
        assert_eq!(m.host_ip, Some("2001:db8::1".parse().expect("ip")));
        assert_eq!((m.host_port, m.container_port), (9443, 443));
        assert_eq!(m.container_ip, "fd00:88::5".parse::<IpAddr>().expect("ip"));
        assert!(parse_dnat(
            Family::V4,
            "-s 10.0.0.0/8 -p tcp -m tcp --dport 1 -j CNI-HOSTPORT-SETMARK"
        )
        .is_none());
    }
}
