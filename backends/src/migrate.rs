//! Moving installed mappings to another backend (`portmap migrate`).
//!
//! Each container moves on its own: add in the target (one atomic batch),
//! CHECK it there, then delete it from the source. A failure or a kill at
//! any point leaves the container working in one backend or both, and
//! running the migration again finishes the move without duplicates.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::{
    Attachment, Backend, BackendError, BackendKind, ContainerAddr, ContainerKey, Family,
    InstalledContainer, Known, LayoutChoice, Plan, PortMapping, Request, Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "container {container_id} ({backend}): its rules carry match conditions, \
         written in {backend}'s own syntax; re-create it with a config for the target backend"
    )]
    Conditions {
        container_id: String,
        backend: &'static str,
    },
    #[error(
        "container {container_id} ({backend}): the rules do not record its network name, \
         which {target} needs; pass --network NAME"
    )]
    NoNetwork {
        container_id: String,
        backend: &'static str,
        target: &'static str,
    },
    #[error("cannot list the mappings of {backend}: {source}")]
    List {
        backend: &'static str,
        #[source]
        source: Box<BackendError>,
    },
    #[error("container {container_id}: CHECK in {backend} after the add: {what}")]
    NotWhole {
        container_id: String,
        backend: &'static str,
        what: String,
    },
    #[error("container {container_id}: {step} in {backend} failed: {source}")]
    Step {
        container_id: String,
        step: &'static str,
        backend: &'static str,
        #[source]
        source: Box<BackendError>,
    },
}

/// One container moved (or, in a dry run, to be moved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub container_id: String,
    /// The attachment's network ("" where neither the rules nor the
    /// journal nor `--network` told it).
    pub network: String,
    pub from: BackendKind,
    pub to: BackendKind,
    pub mappings: usize,
}

#[derive(Debug, Default)]
pub struct Report {
    pub moved: Vec<Moved>,
    pub failed: Vec<MigrateError>,
}

/// Moves every attachment found in `sources` (except the target itself)
/// to `target`. Where the rules do not record the network (nftables), the
/// `journaled` attachments of the container tell which mappings are whose;
/// `network` names the network of what neither tells.
pub fn migrate(
    target: &dyn Backend,
    sources: &[Box<dyn Backend>],
    journaled: &[Attachment],
    network: Option<&str>,
    layout: Option<LayoutChoice>,
    dry_run: bool,
) -> Report {
    let mut report = Report::default();
    for source in sources.iter().filter(|s| s.name() != target.name()) {
        let containers = match source.list() {
            Ok(c) => c,
            Err(source_err) => {
                report.failed.push(MigrateError::List {
                    backend: source.name(),
                    source: Box::new(source_err),
                });
                continue;
            }
        };
        for c in containers {
            let parts = attachments_of(&c, journaled, network);
            for (i, part) in parts.iter().enumerate() {
                let known = known_of(&parts, i);
                match move_one(target, source.as_ref(), part, &known, layout, dry_run) {
                    Ok(m) => report.moved.push(m),
                    Err(e) => report.failed.push(e),
                }
            }
        }
    }
    report
}

/// What is known of attachment `i` of `parts` (one container's).
pub(crate) fn known_of(parts: &[InstalledContainer], i: usize) -> Known {
    Known {
        addrs: parts.get(i).map(addrs_of),
        others: parts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, p)| addrs_of(p))
            .collect(),
    }
}

/// `c` split into its attachments, each with its network: as the rules
/// record it (iptables), else by the journaled attachments' addresses,
/// else `network` for what is left.
pub(crate) fn attachments_of(
    c: &InstalledContainer,
    journaled: &[Attachment],
    network: Option<&str>,
) -> Vec<InstalledContainer> {
    if c.network.is_some() {
        return vec![c.clone()];
    }
    let mut left = c.mappings.clone();
    let mut parts = Vec::new();
    for a in journaled
        .iter()
        .filter(|a| a.key.container_id == c.container_id)
    {
        let (its, rest) = left
            .into_iter()
            .partition(|m| a.addrs.contains(&m.container_ip));
        left = rest;
        let its: Vec<_> = its;
        if !its.is_empty() {
            parts.push(InstalledContainer {
                network: Some(a.key.network.clone()),
                mappings: its,
                ..c.clone()
            });
        }
    }
    if !left.is_empty() {
        parts.push(InstalledContainer {
            network: network.map(str::to_string),
            mappings: left,
            ..c.clone()
        });
    }
    parts
}

fn addrs_of(c: &InstalledContainer) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = c.mappings.iter().map(|m| m.container_ip).collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Moves one attachment: `known` tells its rules from the container's
/// other attachments' (in a target or source that keys by ID alone).
fn move_one(
    target: &dyn Backend,
    source: &dyn Backend,
    c: &InstalledContainer,
    known: &Known,
    layout: Option<LayoutChoice>,
    dry_run: bool,
) -> Result<Moved, MigrateError> {
    let req = request_of(c, None, target, crate::host::connected_prefix)?;
    let req = match layout {
        Some(l) => l.apply(req),
        None => req,
    };
    let moved = Moved {
        network: req.key.network.clone(),
        container_id: c.container_id.clone(),
        from: source.kind(),
        to: target.kind(),
        mappings: c.mappings.len(),
    };
    if dry_run {
        return Ok(moved);
    }
    install_whole(target, &Plan::new(&req), known, "add")?;
    // The source keys by what it recorded (iptables: network + ID).
    let source_key = ContainerKey {
        network: c.network.clone().unwrap_or_default(),
        container_id: c.container_id.clone(),
    };
    source
        .del(&source_key, known, None)
        .map_err(step_failed(&c.container_id, "delete", source))?;
    Ok(moved)
}

/// Installs `plan` in `target` (replacing what `known` owns), then CHECKs
/// it: an error unless it is whole. `step` names the install in errors.
pub(crate) fn install_whole(
    target: &dyn Backend,
    plan: &Plan,
    known: &Known,
    step: &'static str,
) -> Result<(), MigrateError> {
    let id = &plan.key.container_id;
    target
        .install(plan, Some(known))
        .map_err(step_failed(id, step, target))?;
    match target
        .check(plan)
        .map_err(step_failed(id, "check", target))?
    {
        Verdict::Whole => Ok(()),
        Verdict::Damaged(what) => Err(MigrateError::NotWhole {
            container_id: id.clone(),
            backend: target.name(),
            what,
        }),
    }
}

fn step_failed(
    id: &str,
    step: &'static str,
    backend: &dyn Backend,
) -> impl FnOnce(crate::BackendError) -> MigrateError {
    let (container_id, backend) = (id.to_string(), backend.name());
    move |source| MigrateError::Step {
        container_id,
        step,
        backend,
        source: Box::new(source),
    }
}

/// The request that re-creates `c`'s rules in `target`. `subnet_prefix`
/// tells a container's prefix length where the rules do not (nftables
/// matches the address only; iptables matches the subnet).
pub fn request_of(
    c: &InstalledContainer,
    network: Option<&str>,
    target: &dyn Backend,
    subnet_prefix: impl Fn(IpAddr) -> Option<u8>,
) -> Result<Request, MigrateError> {
    if c.options.conditions {
        return Err(MigrateError::Conditions {
            container_id: c.container_id.clone(),
            backend: c.backend.name(),
        });
    }
    let network = match (c.network.as_deref().or(network), target.records_network()) {
        (Some(n), _) => n.to_string(),
        (None, false) => String::new(),
        (None, true) => {
            return Err(MigrateError::NoNetwork {
                container_id: c.container_id.clone(),
                backend: c.backend.name(),
                target: target.name(),
            })
        }
    };
    let addr = |family: Family| {
        c.mappings
            .iter()
            .find(|m| m.family == family)
            .map(|m| ContainerAddr {
                addr: m.container_ip,
                prefix_len: c
                    .options
                    .prefix_len
                    .get(&family)
                    .copied()
                    .or_else(|| subnet_prefix(m.container_ip))
                    .unwrap_or(family.max_prefix()),
            })
    };
    let mut seen = BTreeSet::new();
    let mappings = c
        .mappings
        .iter()
        .filter(|m| seen.insert((m.protocol, m.host_port, m.container_port, m.host_ip)))
        .map(|m| PortMapping {
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: m.protocol,
            host_ip: m.host_ip,
        })
        .collect();
    Ok(Request {
        key: ContainerKey {
            network,
            container_id: c.container_id.clone(),
        },
        v4: addr(Family::V4),
        v6: addr(Family::V6),
        mappings,
        snat: c.options.snat,
        masq_all: c.options.masq_all,
        mark: c.options.mark.clone().unwrap_or_default(),
        conditions_v4: vec![],
        conditions_v6: vec![],
        layout: Default::default(),
        iptables_layout: Default::default(),
    })
}
