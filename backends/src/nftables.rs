//! nftables backend: the upstream `cni_hostport` layout, applied as one
//! `nft -j` transaction, read back with one `nft -j list table` per family.
//!
//! Where we differ from upstream on purpose: hostports rules are inserted
//! (newest container wins, as with iptables) and carry that container's
//! conditions (upstream keeps one global set: last ADD wins); masqAll is
//! honoured; CHECK compares exact rules instead of counting comments.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::plan::{Dnat, FamilyPlan, MasqSource, Plan};
use crate::{
    Backend, BackendError, ContainerKey, Family, InstalledContainer, InstalledMapping,
    InstalledOptions, Protocol,
};

pub const TABLE: &str = "cni_hostport";
pub const TABLE_COMMENT: &str = "CNI portmap plugin";
pub const HOSTPORTS: &str = "hostports";
pub const HOSTIP_HOSTPORTS: &str = "hostip_hostports";
pub const HOSTPORTS_ALL: &str = "hostports_all";
pub const PREROUTING: &str = "prerouting";
pub const OUTPUT: &str = "output";
pub const MASQUERADING: &str = "masquerading";
/// Chains whose rules belong to one container (commented with its ID).
const CONTAINER_CHAINS: [&str; 3] = [HOSTPORTS, HOSTIP_HOSTPORTS, MASQUERADING];
const DSTNAT_PRIORITY: i32 = -100;
const SRCNAT_PRIORITY: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft binary not found in PATH")]
    NotFound,
    #[error("nftables: {action} failed")]
    Nft {
        action: String,
        #[source]
        source: NftablesError,
    },
    #[error("nftables: {action} failed")]
    Rejected { action: String, stderr: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: cannot parse the output of nft: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("nftables: unsupported condition {condition:?}: {reason}")]
    Condition { condition: String, reason: String },
}

impl NftError {
    pub fn details(&self) -> String {
        match self {
            NftError::Nft {
                source: NftablesError::NftFailed { stderr, .. },
                ..
            } => stderr.trim().to_string(),
            NftError::Nft { source, .. } => source.to_string(),
            NftError::Rejected { stderr, .. } => stderr.clone(),
            NftError::Spawn { source, .. } => source.to_string(),
            _ => String::new(),
        }
    }
}

/// The nftables backend, bound to one `nft` executable.
#[derive(Debug, Clone)]
pub struct Nftables {
    nft: PathBuf,
    /// Families known (from the kernel's table list) to hold our table;
    /// reads of the others are skipped. `None`: not known, read every family.
    tables_in: Option<Vec<Family>>,
}

/// Picks, by chain and comment, the listed rules whose expressions a
/// caller needs.
type Wanted<'w> = &'w dyn Fn(&str, Option<&str>) -> bool;

/// `nft -j list table` output, expressions left unparsed.
#[derive(serde::Deserialize)]
struct ListedDoc<'a> {
    #[serde(borrow)]
    nftables: Vec<ListedItem<'a>>,
}

#[derive(serde::Deserialize)]
struct ListedItem<'a> {
    #[serde(borrow, default)]
    rule: Option<ListedRule<'a>>,
}

#[derive(serde::Deserialize)]
struct ListedRule<'a> {
    chain: String,
    #[serde(default)]
    handle: u32,
    #[serde(default)]
    comment: Option<String>,
    #[serde(borrow)]
    expr: &'a serde_json::value::RawValue,
}

/// A rule as listed from the kernel; `expr` empty unless it was wanted.
#[derive(Debug, Clone)]
struct Listed {
    chain: String,
    handle: u32,
    comment: Option<String>,
    expr: Vec<Statement<'static>>,
}

impl Nftables {
    pub fn new(nft: PathBuf) -> Nftables {
        Nftables {
            nft,
            tables_in: None,
        }
    }

    /// This backend, reading only `families` (where the kernel has our
    /// table): a DEL then spawns no process for a family with nothing.
    pub fn with_tables_in(self, families: Vec<Family>) -> Nftables {
        Nftables {
            tables_in: Some(families),
            ..self
        }
    }

    /// Uses the `nft` found in PATH.
    pub fn from_path() -> Result<Nftables, NftError> {
        which::which("nft")
            .map(Nftables::new)
            .map_err(|_| NftError::NotFound)
    }

    pub fn binary(&self) -> &std::path::Path {
        &self.nft
    }

    /// Lists the rules of `<family> cni_hostport`; `None` when the table is
    /// missing. Only rules `wanted` (by chain and comment) get their
    /// expressions: parsing them is most of a read's cost with many
    /// containers, and most callers need few.
    fn read(&self, family: Family, wanted: Wanted<'_>) -> Result<Option<Vec<Listed>>, NftError> {
        if self
            .tables_in
            .as_ref()
            .is_some_and(|f| !f.contains(&family))
        {
            return Ok(None);
        }
        let args = ["list", "table", nf_family_name(family), TABLE];
        let raw = match helper::get_current_ruleset_raw(Some(&self.nft), args) {
            Ok(raw) => raw,
            Err(NftablesError::NftFailed { ref stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                return Ok(None)
            }
            Err(source) => {
                return Err(NftError::Nft {
                    action: format!("list table {} {TABLE}", nf_family_name(family)),
                    source,
                })
            }
        };
        let doc: ListedDoc<'_> = serde_json::from_str(&raw)?;
        let mut rules = Vec::new();
        for r in doc.nftables.into_iter().filter_map(|item| item.rule) {
            let expr = if wanted(&r.chain, r.comment.as_deref()) {
                serde_json::from_str(r.expr.get())?
            } else {
                Vec::new()
            };
            rules.push(Listed {
                chain: r.chain,
                handle: r.handle,
                comment: r.comment,
                expr,
            });
        }
        Ok(Some(rules))
    }

    /// One `nft -j -f -` transaction. Not the crate's `apply_ruleset`: it
    /// lets nft's stderr through to ours, and nft's own words belong in
    /// the CNI error's details.
    fn apply(&self, batch: Batch<'_>, action: &str) -> Result<(), NftError> {
        let mut doc = serde_json::to_value(batch.to_nftables())?;
        add_table_comment(&mut doc);
        let payload = serde_json::to_string(&doc)?;
        let out = crate::exec::run_with_stdin(&self.nft, &["-j", "-f", "-"], &payload).map_err(
            |source| NftError::Spawn {
                program: self.nft.display().to_string(),
                source,
            },
        )?;
        if !out.status.success() {
            return Err(NftError::Rejected {
                action: action.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    fn add_inner(&self, plan: &Plan) -> Result<(), NftError> {
        let mut batch = Batch::new();
        for fam in &plan.families {
            if fam.dnats.is_empty() {
                continue;
            }
            let expected = expected_rules(fam)?;
            let existing = self.read(fam.family, &|_, _| false)?.unwrap_or_default();
            add_skeleton(&mut batch, fam.family, !fam.masquerade.is_empty());
            for old in existing
                .iter()
                .filter(|r| is_ours(r, &plan.key.container_id))
            {
                batch.delete(NfListObject::Rule(rule_ref(
                    fam.family, &old.chain, old.handle,
                )));
            }
            // Inserted in reverse so the container's rules keep config order
            // at the head of the chain: the newest container wins.
            for (chain, expr) in expected.iter().rev().filter(|(c, _)| *c == HOSTPORTS) {
                batch.add_cmd(NfCmd::Insert(NfListObject::Rule(rule(
                    fam.family,
                    chain,
                    expr.clone(),
                    &plan.key.container_id,
                ))));
            }
            for (chain, expr) in expected.iter().filter(|(c, _)| *c == MASQUERADING) {
                batch.add(NfListObject::Rule(rule(
                    fam.family,
                    chain,
                    expr.clone(),
                    &plan.key.container_id,
                )));
            }
        }
        self.apply(
            batch,
            &format!("add rules for container {}", plan.key.container_id),
        )
    }

    fn check_inner(&self, plan: &Plan) -> Result<Option<String>, NftError> {
        for fam in &plan.families {
            if fam.dnats.is_empty() {
                continue;
            }
            let table = format!("{} {TABLE}", nf_family_name(fam.family));
            let id = plan.key.container_id.as_str();
            // The wiring chains' rules, and this container's own.
            let wanted = |chain: &str, comment: Option<&str>| {
                !CONTAINER_CHAINS.contains(&chain) || owner_of(chain, comment) == Some(id)
            };
            let Some(listed) = self.read(fam.family, &wanted)? else {
                return Ok(Some(format!("table {table} is missing")));
            };
            for (chain, expr) in wiring_rules() {
                if !listed.iter().any(|r| r.chain == chain && r.expr == expr) {
                    return Ok(Some(format!(
                        "table {table}: chain {chain} lacks its jump to {}",
                        jump_target(&expr)
                    )));
                }
            }
            let mut ours: Vec<&Listed> = listed
                .iter()
                .filter(|r| is_ours(r, &plan.key.container_id))
                .collect();
            for (chain, expr) in expected_rules(fam)? {
                match ours.iter().position(|r| r.chain == chain && r.expr == expr) {
                    Some(i) => {
                        ours.remove(i);
                    }
                    None => {
                        return Ok(Some(format!(
                            "table {table}: chain {chain} is missing the rule for {}",
                            describe(fam, chain, &expr)
                        )))
                    }
                }
            }
            if let Some(extra) = ours.first() {
                return Ok(Some(format!(
                    "table {table}: chain {} has an unexpected rule (handle {}) for container {}",
                    extra.chain, extra.handle, plan.key.container_id
                )));
            }
        }
        Ok(None)
    }

    /// Deletes, in one transaction, the rules of every container `doomed`
    /// picks; returns the removed mappings and container IDs. DEL picks
    /// one container, GC every one not kept: one read per family either way.
    fn del_where(
        &self,
        doomed: impl Fn(&str) -> bool,
    ) -> Result<(Vec<InstalledMapping>, BTreeSet<String>), NftError> {
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        let mut ids = BTreeSet::new();
        let wanted =
            |chain: &str, comment: Option<&str>| owner_of(chain, comment).is_some_and(&doomed);
        for family in [Family::V4, Family::V6] {
            let Some(listed) = self.read(family, &wanted)? else {
                continue;
            };
            let (ours, others): (Vec<&Listed>, Vec<&Listed>) = listed
                .iter()
                .filter(|r| owner(r).is_some())
                .partition(|r| owner(r).is_some_and(&doomed));
            if ours.is_empty() {
                continue;
            }
            ids.extend(ours.iter().filter_map(|r| owner(r)).map(str::to_string));
            removed.extend(ours.iter().filter_map(|r| parse_mapping(family, r)));
            if others.is_empty() {
                // Last container out: the whole table goes, in the same transaction.
                batch.delete(NfListObject::Table(Table {
                    family: nf_family(family),
                    name: TABLE.into(),
                    handle: None,
                }));
            } else {
                for r in ours {
                    batch.delete(NfListObject::Rule(rule_ref(family, &r.chain, r.handle)));
                }
            }
        }
        if !ids.is_empty() {
            let names: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.apply(
                batch,
                &format!("delete rules of container {}", names.join(", ")),
            )?;
        }
        Ok((removed, ids))
    }

    fn list_inner(&self) -> Result<Vec<InstalledContainer>, NftError> {
        let mut tables = Vec::new();
        for family in [Family::V4, Family::V6] {
            tables.push((family, self.read(family, &|_, _| true)?.unwrap_or_default()));
        }
        Ok(containers(&tables))
    }
}

/// The containers whose rules the listed tables hold.
fn containers(tables: &[(Family, Vec<Listed>)]) -> Vec<InstalledContainer> {
    let mut by_id: BTreeMap<String, (Vec<InstalledMapping>, InstalledOptions)> = BTreeMap::new();
    for (family, rules) in tables {
        for r in rules {
            let Some(id) = owner(r).map(str::to_string) else {
                continue;
            };
            let (mappings, options) = by_id.entry(id).or_default();
            mappings.extend(parse_mapping(*family, r));
            read_options(r, options);
        }
    }
    by_id
        .into_iter()
        .map(|(container_id, (mut mappings, options))| {
            mappings.sort();
            InstalledContainer {
                backend: NAME,
                container_id,
                network: None,
                mappings,
                options,
            }
        })
        .collect()
}

pub const NAME: &str = "nftables";

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        NAME
    }

    fn records_network(&self) -> bool {
        false
    }

    fn add(&self, plan: &Plan) -> Result<(), BackendError> {
        Ok(self.add_inner(plan)?)
    }

    fn check(&self, plan: &Plan) -> Result<(), BackendError> {
        match self.check_inner(plan)? {
            None => Ok(()),
            Some(what) => Err(BackendError::CheckFailed {
                backend: NAME,
                what,
            }),
        }
    }

    fn del(&self, key: &ContainerKey) -> Result<Vec<InstalledMapping>, BackendError> {
        Ok(self.del_where(|id| id == key.container_id)?.0)
    }

    fn list(&self) -> Result<Vec<InstalledContainer>, BackendError> {
        Ok(self.list_inner()?)
    }

    fn gc(&self, _network: &str, keep: &BTreeSet<String>) -> Result<Vec<String>, BackendError> {
        // nftables rules carry only the container ID (upstream format), so
        // every container not kept is collected, whatever its network.
        let (_, ids) = self.del_where(|id| !keep.contains(id))?;
        Ok(ids.into_iter().collect())
    }
}

/// The container a rule belongs to: its comment, in a per-container chain.
fn owner(r: &Listed) -> Option<&str> {
    owner_of(&r.chain, r.comment.as_deref())
}

/// The container a rule in `chain` with `comment` belongs to: only the
/// per-container chains carry container IDs.
fn owner_of<'c>(chain: &str, comment: Option<&'c str>) -> Option<&'c str> {
    comment.filter(|_| CONTAINER_CHAINS.contains(&chain))
}

fn is_ours(r: &Listed, container_id: &str) -> bool {
    owner(r) == Some(container_id)
}

pub fn nf_family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn nf_family(family: Family) -> NfFamily {
    match family {
        Family::V4 => NfFamily::IP,
        Family::V6 => NfFamily::IP6,
    }
}

/// nft 1.0.x has no table comment in its JSON schema (text syntax has); we
/// send it anyway so newer nft records it, older nft ignores the key.
fn add_table_comment(doc: &mut serde_json::Value) {
    let Some(cmds) = doc.get_mut("nftables").and_then(|v| v.as_array_mut()) else {
        return;
    };
    for cmd in cmds {
        if let Some(table) = cmd
            .pointer_mut("/add/table")
            .and_then(|t| t.as_object_mut())
        {
            table.insert("comment".into(), TABLE_COMMENT.into());
        }
    }
}

fn add_skeleton(batch: &mut Batch<'_>, family: Family, masquerade: bool) {
    let fam = nf_family(family);
    batch.add(NfListObject::Table(Table {
        family: fam,
        name: TABLE.into(),
        handle: None,
    }));
    for name in [HOSTPORTS, HOSTIP_HOSTPORTS, HOSTPORTS_ALL] {
        batch.add(NfListObject::Chain(chain(family, name)));
    }
    let hooks = [
        (PREROUTING, NfHook::Prerouting, DSTNAT_PRIORITY),
        (OUTPUT, NfHook::Output, DSTNAT_PRIORITY),
    ];
    for (name, hook, prio) in hooks {
        batch.add(NfListObject::Chain(base_chain(family, name, hook, prio)));
    }
    if masquerade {
        batch.add(NfListObject::Chain(base_chain(
            family,
            MASQUERADING,
            NfHook::Postrouting,
            SRCNAT_PRIORITY,
        )));
    }
    // The shared chains are rewritten on every ADD, so a ruleset written by
    // an older upstream (prerouting without the fib guard) gets repaired.
    for name in [HOSTPORTS_ALL, PREROUTING, OUTPUT] {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(family, name))));
    }
    for (chain_name, expr) in wiring_rules() {
        batch.add(NfListObject::Rule(Rule {
            family: fam,
            table: TABLE.into(),
            chain: chain_name.into(),
            expr: expr.into(),
            ..Rule::default()
        }));
    }
}

/// The shared jumps every container relies on, in order.
fn wiring_rules() -> Vec<(&'static str, Vec<Statement<'static>>)> {
    let local_jump = vec![
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            right: Expression::String("local".into()),
            op: Operator::EQ,
        }),
        jump(HOSTPORTS_ALL),
    ];
    vec![
        (HOSTPORTS_ALL, vec![jump(HOSTIP_HOSTPORTS)]),
        (HOSTPORTS_ALL, vec![jump(HOSTPORTS)]),
        (PREROUTING, local_jump.clone()),
        (OUTPUT, local_jump),
    ]
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

fn jump_target(expr: &[Statement<'_>]) -> String {
    expr.iter()
        .find_map(|s| match s {
            Statement::Jump(j) => Some(j.target.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

fn chain(family: Family, name: &'static str) -> Chain<'static> {
    Chain {
        family: nf_family(family),
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    }
}

fn base_chain(family: Family, name: &'static str, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain(family, name)
    }
}

fn rule(
    family: Family,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: &str,
) -> Rule<'static> {
    Rule {
        family: nf_family(family),
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: expr.into(),
        comment: Some(comment.to_string().into()),
        ..Rule::default()
    }
}

fn rule_ref(family: Family, chain: &str, handle: u32) -> Rule<'static> {
    Rule {
        family: nf_family(family),
        table: TABLE.into(),
        chain: chain.to_string().into(),
        handle: Some(handle),
        ..Rule::default()
    }
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn addr_expr(addr: IpAddr) -> Expression<'static> {
    Expression::String(addr.to_string().into())
}

/// The container's own rules for one family, in install order, with chain.
fn expected_rules(
    fam: &FamilyPlan,
) -> Result<Vec<(&'static str, Vec<Statement<'static>>)>, NftError> {
    let ipx = nf_family_name(fam.family);
    let conditions = parse_conditions(&fam.conditions)?;
    let mut rules = Vec::new();
    for d in &fam.dnats {
        let mut expr = conditions.clone();
        if let Some(host_ip) = d.host_ip {
            expr.push(matches(payload(ipx, "daddr"), addr_expr(host_ip)));
        }
        expr.push(dport_match(d));
        expr.push(Statement::DNAT(Some(NAT {
            addr: Some(addr_expr(fam.container.addr)),
            family: None,
            port: Some(Expression::Number(u32::from(d.container_port))),
            flags: None,
        })));
        rules.push((HOSTPORTS, expr));
    }
    for source in &fam.masquerade {
        let saddr = match source {
            MasqSource::Container => addr_expr(fam.container.addr),
            MasqSource::Localhost => Expression::String("127.0.0.1".into()),
            MasqSource::Any => Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(
                    match fam.family {
                        Family::V4 => "0.0.0.0",
                        Family::V6 => "::",
                    }
                    .into(),
                )),
                len: 0,
            })),
        };
        rules.push((
            MASQUERADING,
            vec![
                matches(payload(ipx, "saddr"), saddr),
                matches(payload(ipx, "daddr"), addr_expr(fam.container.addr)),
                Statement::Masquerade(None),
            ],
        ));
    }
    Ok(rules)
}

fn dport_match(d: &Dnat) -> Statement<'static> {
    matches(
        payload(d.protocol.as_str(), "dport"),
        Expression::Number(u32::from(d.host_port)),
    )
}

fn describe(fam: &FamilyPlan, chain: &str, expr: &[Statement<'_>]) -> String {
    if chain == MASQUERADING {
        return format!("masquerade to {}", fam.container.addr);
    }
    let mut proto = String::new();
    let mut port = 0;
    let mut target = String::new();
    for s in expr {
        match s {
            Statement::Match(m) => {
                if let (
                    Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
                    Expression::Number(n),
                ) = (&m.left, &m.right)
                {
                    proto = p.protocol.to_string();
                    port = *n;
                }
            }
            Statement::DNAT(Some(nat)) => {
                if let Some(Expression::Number(p)) = nat.port {
                    target = format!(
                        "{}",
                        std::net::SocketAddr::new(fam.container.addr, p as u16)
                    );
                }
            }
            _ => {}
        }
    }
    format!("mapping {proto} {port} -> {target}")
}

/// Reads a DNAT rule back into a mapping; masquerade rules yield nothing.
fn parse_mapping(family: Family, r: &Listed) -> Option<InstalledMapping> {
    let mut protocol = None;
    let mut host_port = None;
    let mut host_ip = None;
    let mut target = None;
    for s in &r.expr {
        match s {
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
                right,
                op: Operator::EQ,
            }) => match (p.field.as_ref(), right) {
                ("dport", Expression::Number(n)) => {
                    protocol = Protocol::parse(&p.protocol);
                    host_port = u16::try_from(*n).ok();
                }
                ("daddr", Expression::String(a)) => host_ip = a.parse().ok(),
                _ => {}
            },
            Statement::DNAT(Some(NAT {
                addr: Some(Expression::String(a)),
                port: Some(Expression::Number(p)),
                ..
            })) => target = Some((a.parse().ok()?, u16::try_from(*p).ok()?)),
            _ => {}
        }
    }
    let (container_ip, container_port) = target?;
    Some(InstalledMapping {
        family,
        protocol: protocol?,
        host_ip,
        host_port: host_port?,
        container_ip,
        container_port,
    })
}

/// Adds what one rule says about snat, masqAll and conditions to `options`.
fn read_options(r: &Listed, options: &mut InstalledOptions) {
    let payload_matches = r.expr.iter().filter_map(|s| match s {
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
            right,
            op,
        }) => Some((p.field.as_ref(), right, op)),
        _ => None,
    });
    if r.chain == MASQUERADING {
        options.snat = true;
        for (field, right, _) in payload_matches {
            if let ("saddr", Expression::Named(NamedExpression::Prefix(p))) = (field, right) {
                options.masq_all |= p.len == 0;
            }
        }
        return;
    }
    // A DNAT rule we write matches one dport and at most one daddr; any
    // other match came from the config's conditions.
    let ours = payload_matches
        .filter(|(field, _, op)| matches!(op, Operator::EQ) && matches!(*field, "dport" | "daddr"))
        .count();
    let all = r
        .expr
        .iter()
        .filter(|s| matches!(s, Statement::Match(_)))
        .count();
    options.conditions |= all > ours || ours > 2;
}

/// Turns condition words (nft syntax, e.g. `ip saddr 192.0.2.0/24` or
/// `iifname != "lo"`) into match statements. The JSON API takes no rule
/// text, so we parse the common selector forms and refuse the rest.
pub fn parse_conditions(conditions: &[String]) -> Result<Vec<Statement<'static>>, NftError> {
    let text = conditions.join(" ");
    let words: Vec<&str> = text.split_whitespace().collect();
    let fail = |reason: &str| NftError::Condition {
        condition: text.clone(),
        reason: reason.to_string(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let left = match words[i] {
            proto @ ("ip" | "ip6" | "tcp" | "udp" | "sctp" | "th") => {
                let field = words
                    .get(i + 1)
                    .ok_or_else(|| fail("selector without a field"))?;
                i += 2;
                payload(proto, field)
            }
            "meta" => {
                let key = words.get(i + 1).ok_or_else(|| fail("meta without a key"))?;
                i += 2;
                meta(key).ok_or_else(|| fail("unknown meta key"))?
            }
            key => {
                i += 1;
                meta(key).ok_or_else(|| fail(&format!("unknown selector {key:?}")))?
            }
        };
        let op = match words.get(i).copied() {
            Some("==" | "eq") => Some(Operator::EQ),
            Some("!=" | "ne") => Some(Operator::NEQ),
            Some("<" | "lt") => Some(Operator::LT),
            Some(">" | "gt") => Some(Operator::GT),
            Some("<=" | "le") => Some(Operator::LEQ),
            Some(">=" | "ge") => Some(Operator::GEQ),
            _ => None,
        };
        if op.is_some() {
            i += 1;
        }
        let value = words
            .get(i)
            .ok_or_else(|| fail("selector without a value"))?;
        i += 1;
        out.push(Statement::Match(Match {
            left,
            right: value_expr(value),
            op: op.unwrap_or(Operator::EQ),
        }));
    }
    Ok(out)
}

fn meta(key: &str) -> Option<Expression<'static>> {
    let key: MetaKey = serde_json::from_value(serde_json::Value::String(key.to_string())).ok()?;
    Some(Expression::Named(NamedExpression::Meta(Meta { key })))
}

fn value_expr(word: &str) -> Expression<'static> {
    let word = word.trim_matches('"');
    if let Some((a, len)) = word.split_once('/') {
        if let (Ok(a), Ok(len)) = (a.parse::<IpAddr>(), len.parse::<u32>()) {
            return Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(addr_expr(a)),
                len,
            }));
        }
    }
    match word.parse::<u32>() {
        Ok(n) => Expression::Number(n),
        Err(_) => Expression::String(Cow::Owned(word.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::golden_request;
    use crate::{MasqMark, Request};
    use rstest::rstest;

    /// The rules an ADD of `req` installs, as `list table` gives them back.
    fn listed_after_add(req: &Request) -> Vec<(Family, Vec<Listed>)> {
        let plan = Plan::new(req);
        plan.families
            .iter()
            .map(|fam| {
                let rules = expected_rules(fam)
                    .expect("rules")
                    .into_iter()
                    .enumerate()
                    .map(|(i, (chain, expr))| Listed {
                        chain: chain.to_string(),
                        handle: i as u32,
                        comment: Some(req.key.container_id.clone()),
                        expr,
                    })
                    .collect();
                (fam.family, rules)
            })
            .collect()
    }

    fn sorted_rules(fam: &FamilyPlan) -> Vec<String> {
        let mut v: Vec<String> = expected_rules(fam)
            .expect("rules")
            .iter()
            .map(|r| serde_json::to_string(r).expect("json"))
            .collect();
        v.sort();
        v
    }

    /// Reading rules back and re-planning them gives the same rules: what
    /// `portmap migrate` relies on.
    #[rstest]
    #[case::golden(golden_request())]
    #[case::masq_all(Request { masq_all: true, ..golden_request() })]
    #[case::snat_off(Request { snat: false, ..golden_request() })]
    fn rules_read_back_re_plan_identically(#[case] req: Request) {
        let listed = containers(&listed_after_add(&req));
        assert_eq!(listed.len(), 1);
        let c = &listed[0];
        assert_eq!((c.network.as_deref(), c.options.conditions), (None, false));
        let nft = Nftables::new("/nonexistent/nft".into());
        let back = crate::migrate::request_of(c, None, &nft, |_| None).expect("request");
        assert_eq!((back.snat, back.masq_all), (req.snat, req.masq_all));
        assert_eq!(back.mark, MasqMark::default());
        let (want, got) = (Plan::new(&req), Plan::new(&back));
        for fam in &want.families {
            let again = got.family(fam.family).expect("family");
            assert_eq!(sorted_rules(again), sorted_rules(fam));
        }
    }

    #[test]
    fn conditions_are_noticed() {
        let req = Request {
            conditions_v4: vec!["iifname != \"lo\"".into()],
            ..golden_request()
        };
        let listed = containers(&listed_after_add(&req));
        assert!(listed[0].options.conditions);
        let plain = containers(&listed_after_add(&golden_request()));
        assert!(!plain[0].options.conditions);
    }

    #[test]
    fn conditions_parse_into_matches() {
        let got = parse_conditions(&["ip saddr 192.0.2.0/24".into(), "iifname != eth0".into()])
            .expect("parses");
        let json = serde_json::to_string(&got).expect("json");
        assert_eq!(
            json,
            r#"[{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.0.2.0","len":24}},"op":"=="}},{"match":{"left":{"meta":{"key":"iifname"}},"right":"eth0","op":"!="}}]"#
        );
    }

    #[test]
    fn conditions_refuse_unknown_selectors() {
        let err = parse_conditions(&["frobnicate 3".into()]).expect_err("refused");
        assert!(
            err.to_string().contains("unknown selector \"frobnicate\""),
            "{err}"
        );
        let err = parse_conditions(&["ip saddr".into()]).expect_err("refused");
        assert!(err.to_string().contains("without a value"), "{err}");
    }

    #[test]
    fn table_comment_is_added_to_table_objects_only() {
        let mut batch = Batch::new();
        add_skeleton(&mut batch, Family::V4, true);
        let mut doc = serde_json::to_value(batch.to_nftables()).expect("json");
        add_table_comment(&mut doc);
        assert_eq!(
            doc.pointer("/nftables/0/add/table/comment"),
            Some(&TABLE_COMMENT.into())
        );
        assert_eq!(doc.pointer("/nftables/1/add/chain/comment"), None);
    }
}
