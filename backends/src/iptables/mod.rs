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
    Backend, BackendError, ClosedPort, ContainerKey, Family, InstalledContainer, InstalledMapping,
    InstalledOptions, MasqMark, Protocol,
};
use rules::SavedTable;
pub use runner::{Detected, Runner, Variant};

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
        let detected = Variant::detect(&ipt).ok_or(IptablesError::NotUsable { variant: None })?;
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

    fn with_bases(detected: Detected, v4: &str, v6: &str) -> Result<Iptables, IptablesError> {
        let variant = detected.variant;
        let ipt = Iptables {
            variant,
            v4: Runner::find(Family::V4, v4, detected),
            v6: Runner::find(Family::V6, v6, detected),
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
        let keep = |r: Option<Runner>| r.filter(|r| families.contains(&r.family));
        let ipt = Iptables {
            variant: self.variant,
            v4: keep(self.v4),
            v6: keep(self.v6),
        };
        (ipt.v4.is_some() || ipt.v6.is_some()).then_some(ipt)
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
        let tables: Vec<(Family, SavedTable)> = self
            .readable()
            .into_iter()
            .map(|(runner, saved)| (runner.family, saved))
            .collect();
        containers(self.name_str(), &tables)
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

    fn records_network(&self) -> bool {
        true
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

    fn del(&self, key: &ContainerKey) -> Result<Vec<ClosedPort>, BackendError> {
        let (removed, _) = self.del_where(|_| vec![key.clone()])?;
        Ok(removed.iter().map(ClosedPort::from).collect())
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

/// The containers whose rules the saved tables hold, per (ID, network).
fn containers(backend: &'static str, tables: &[(Family, SavedTable)]) -> Vec<InstalledContainer> {
    let mut by_id: BTreeMap<(String, String), (Vec<InstalledMapping>, InstalledOptions)> =
        BTreeMap::new();
    for (family, saved) in tables {
        for (network, id, chain) in entries(saved) {
            let (mappings, options) = by_id.entry((id, network)).or_default();
            mappings.extend(mappings_of_chain(*family, saved, &chain));
            read_options(*family, saved, &chain, options);
        }
    }
    by_id
        .into_iter()
        .map(|((container_id, network), (mappings, options))| {
            // Chain order is config order, which decides between
            // overlapping mappings: keep it.
            InstalledContainer {
                backend,
                container_id,
                network: Some(network),
                mappings,
                options,
            }
        })
        .collect()
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

/// Adds what the container chain and its entry rules say about snat,
/// masqAll, the mark and conditions to `options`.
fn read_options(family: Family, saved: &SavedTable, chain: &str, options: &mut InstalledOptions) {
    for spec in saved.rules_of(chain) {
        let Some(target) = rules::jump_target(spec).filter(|t| *t != "DNAT") else {
            continue;
        };
        options.snat = true;
        options.mark = Some(if target == rules::SETMARK_CHAIN {
            MasqMark::Bit(setmark_bit(saved).unwrap_or(MasqMark::DEFAULT_BIT))
        } else {
            MasqMark::ExternalChain(target.to_string())
        });
        let words = rules::shell_words(spec);
        match words.iter().position(|w| w == "-s") {
            None => options.masq_all = true,
            Some(i) => {
                let source = words.get(i + 1).map(String::as_str).unwrap_or_default();
                if let Some((net, len)) = source.split_once('/') {
                    if net != "127.0.0.1" {
                        if let Ok(len) = len.parse() {
                            options.prefix_len.insert(family, len);
                        }
                    }
                }
            }
        }
    }
    // Entry rules hold the conditions: anything beyond the words we write.
    for (_, spec) in saved
        .jumps_to(chain)
        .filter(|(c, _)| *c == rules::DNAT_CHAIN)
    {
        let words = rules::shell_words(spec);
        let mut rest = words.iter();
        while let Some(w) = rest.next() {
            match w.as_str() {
                "-p" | "--comment" | "--dports" | "--destination-ports" | "-j" => {
                    rest.next();
                }
                "-m" => {
                    if !matches!(
                        rest.next().map(String::as_str),
                        Some("comment" | "multiport")
                    ) {
                        options.conditions = true;
                    }
                }
                _ => options.conditions = true,
            }
        }
    }
}

/// The bit our SETMARK chain sets, from its `--set-xmark V/V` rule.
fn setmark_bit(saved: &SavedTable) -> Option<u8> {
    saved
        .rules_of(rules::SETMARK_CHAIN)
        .iter()
        .find_map(|spec| {
            let words = rules::shell_words(spec);
            let value = words.iter().skip_while(|w| *w != "--set-xmark").nth(1)?;
            let hex = value.split('/').next()?.strip_prefix("0x")?;
            let v = u32::from_str_radix(hex, 16).ok()?;
            v.is_power_of_two().then(|| v.trailing_zeros() as u8)
        })
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
    use crate::plan::tests::golden_request;
    use crate::Request;
    use rstest::rstest;

    /// What iptables-save would print after an ADD of `req`, per family.
    fn saved_after_add(req: &Request) -> Vec<(Family, SavedTable)> {
        let plan = Plan::new(req);
        plan.families
            .iter()
            .map(|fam| {
                let mut lines = rules::container_rules(&plan, fam);
                lines.extend(
                    rules::entry_specs(&plan, fam)
                        .into_iter()
                        .map(|s| format!("-A {} {s}", rules::DNAT_CHAIN)),
                );
                if let MasqMark::Bit(bit) = plan.mark {
                    lines.push(rules::setmark_rule(bit));
                }
                (fam.family, SavedTable::parse(&lines.join("\n")))
            })
            .collect()
    }

    /// Reading rules back and re-planning them gives the same rules: what
    /// `portmap migrate` relies on.
    #[rstest]
    #[case::golden(golden_request())]
    #[case::masq_all_external_chain(Request { masq_all: true, mark: MasqMark::ExternalChain("KUBE-MARK-MASQ".into()), ..golden_request() })]
    #[case::snat_off(Request { snat: false, ..golden_request() })]
    #[case::mark_bit_5(Request { mark: MasqMark::Bit(5), ..golden_request() })]
    fn rules_read_back_re_plan_identically(#[case] req: Request) {
        let tables = saved_after_add(&req);
        let listed = containers("iptables-nft", &tables);
        assert_eq!(listed.len(), 1);
        let c = &listed[0];
        assert_eq!(c.network.as_deref(), Some("goldennet"));
        assert!(!c.options.conditions);
        let nft = crate::nftables::Nftables::new("/nonexistent/nft".into());
        let back = crate::migrate::request_of(c, None, &nft, |_| None).expect("request");
        assert_eq!((back.snat, back.masq_all), (req.snat, req.masq_all));
        if req.snat {
            assert_eq!(back.mark, req.mark);
        }
        let (want, got) = (Plan::new(&req), Plan::new(&back));
        for fam in &want.families {
            let again = got.family(fam.family).expect("family");
            assert_eq!(
                rules::container_rules(&got, again),
                rules::container_rules(&want, fam)
            );
        }
    }

    #[test]
    fn conditions_in_entry_rules_are_noticed() {
        let req = Request {
            conditions_v4: vec!["-s".into(), "192.0.2.0/24".into()],
            ..golden_request()
        };
        let listed = containers("iptables-nft", &saved_after_add(&req));
        assert!(listed[0].options.conditions);
        let nft = crate::nftables::Nftables::new("/nonexistent/nft".into());
        let err =
            crate::migrate::request_of(&listed[0], None, &nft, |_| None).expect_err("refused");
        assert!(err.to_string().contains("match conditions"), "{err}");
    }

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
