//! `portmap list` and `portmap status`: what is installed, what is
//! missing, which backends work, and advice when mappings are not where
//! auto-selection would put new ones.

use std::process::ExitCode;

use portmap_backends::iptables::{Iptables, Variant};
use portmap_backends::nftables::MAP;
use portmap_backends::select::{self, cleanup_backends};
use std::net::IpAddr;

use portmap_backends::{Attachment, BackendKind, InstalledContainer, Plan, Verdict};

use super::Target;

use crate::firewalld::{self, Presence};
use crate::journal::{Entry, Journal};

/// Journal entries whose rules are not all in place.
fn missing() -> Vec<Entry> {
    let Ok(journal) = Journal::here() else {
        return vec![];
    };
    journal
        .entries()
        .into_iter()
        .flatten()
        .map(|(_, e)| e)
        // Unsure whether the namespace is gone: still missing.
        .filter(|e| !matches!(e.is_stale(), Ok(true)))
        .filter(|e| {
            select::backend_for(e.backend)
                .map(|b| !matches!(b.check(&Plan::new(&e.request)), Ok(Verdict::Whole)))
                .unwrap_or(true)
        })
        .collect()
}

fn installed() -> (Vec<InstalledContainer>, Vec<String>) {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for b in cleanup_backends() {
        match b.list() {
            Ok(list) => all.extend(list),
            Err(e) => errors.push(format!("{}: {e}", b.name())),
        }
    }
    (all, errors)
}

/// The network of each mapping: as the rules record it (iptables), else
/// as the journal does (nftables rules carry the container ID alone; the
/// container address tells its attachments apart).
fn network_of(c: &InstalledContainer, addr: IpAddr, journaled: &[Attachment]) -> Option<String> {
    c.network.clone().or_else(|| {
        journaled
            .iter()
            .find(|a| a.key.container_id == c.container_id && a.addrs.contains(&addr))
            .map(|a| a.key.network.clone())
    })
}

pub(super) fn list(json: bool) -> ExitCode {
    let (all, errors) = installed();
    let journaled = Journal::here()
        .map(|j| j.all_attachments())
        .unwrap_or_default();
    let journaled = &journaled;
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .flat_map(|c| {
                c.mappings.iter().map(move |m| {
                    serde_json::json!({
                        "backend": c.backend,
                        "family": m.family.to_string(),
                        "containerID": c.container_id,
                        "network": network_of(c, m.container_ip, journaled),
                        "protocol": m.protocol.as_str(),
                        "hostIP": m.host_ip.map(|ip| ip.to_string()),
                        "hostPort": m.host_port,
                        "containerIP": m.container_ip.to_string(),
                        "containerPort": m.container_port,
                        "state": "installed",
                    })
                })
            })
            .chain(missing().iter().flat_map(|e| {
                let r = &e.request;
                let addr = r.v4.or(r.v6).map(|a| a.addr.to_string());
                r.mappings.iter().map(move |m| {
                    serde_json::json!({
                        "backend": e.backend,
                        "containerID": r.key.container_id,
                        "network": r.key.network,
                        "protocol": m.protocol.as_str(),
                        "hostIP": m.host_ip.map(|ip| ip.to_string()),
                        "hostPort": m.host_port,
                        "containerIP": addr,
                        "containerPort": m.container_port,
                        "state": "missing",
                    })
                })
            }))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!(
            "{:<16} {:<6} {:<24} {:<16} {:<30} {:<30} PROTO",
            "BACKEND", "FAMILY", "CONTAINER", "NETWORK", "HOST", "CONTAINER ADDRESS"
        );
        for c in &all {
            for m in &c.mappings {
                let host_ip = m
                    .host_ip
                    .map_or_else(|| "*".to_string(), |ip| ip.to_string());
                let network = network_of(c, m.container_ip, journaled);
                println!(
                    "{:<16} {:<6} {:<24} {:<16} {:<30} {:<30} {}",
                    c.backend,
                    m.family,
                    c.container_id,
                    network.as_deref().unwrap_or("?"),
                    format!("{host_ip}:{}", m.host_port),
                    std::net::SocketAddr::new(m.container_ip, m.container_port).to_string(),
                    m.protocol
                );
            }
        }
        let lost = missing();
        if !lost.is_empty() {
            println!(
                "\njournaled, but their rules are missing or damaged (run `portmap restore`):"
            );
            for e in &lost {
                let ports: Vec<String> = e
                    .request
                    .mappings
                    .iter()
                    .map(|m| format!("{}/{}", m.host_port, m.protocol))
                    .collect();
                println!(
                    "  {} (network {}, {}): {}",
                    e.request.key.container_id,
                    e.request.key.network,
                    e.backend,
                    ports.join(" ")
                );
            }
        }
    }
    if !json {
        println!();
        for line in portmap_backends::guard::report() {
            println!("{line}");
        }
    }
    for e in &errors {
        eprintln!("portmap: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(super) fn status() -> ExitCode {
    let version = |tool: &str| {
        select::tool_version(std::path::Path::new(tool)).unwrap_or_else(|| "version unknown".into())
    };
    match select::probe_nftables() {
        Ok(n) => println!(
            "nftables: usable ({}, {})",
            n.binary().display(),
            version(&n.binary().display().to_string())
        ),
        Err(why) => println!("nftables: not usable: {why}"),
    }
    for variant in [Variant::Nft, Variant::Legacy] {
        match Iptables::variant(variant) {
            Ok(_) => println!(
                "iptables-{variant}: tools found ({})",
                version(&format!("iptables-{variant}"))
            ),
            Err(e) => println!("iptables-{variant}: not usable: {e}"),
        }
    }
    let picked = match select::select_checked(None) {
        Ok(s) => {
            println!("auto-selection: {} ({})", s.backend.name(), s.reason);
            s.backend.kind()
        }
        Err(e) => {
            println!("auto-selection: none: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (all, errors) = installed();
    for e in &errors {
        println!("warning: could not read {e}");
    }
    for line in mapping_advice(&all, picked) {
        println!("{line}");
    }
    let presence = firewalld::presence();
    for line in firewalld_report(&presence, &all, &firewalld::watchers()) {
        println!("{line}");
    }
    for line in portmap_backends::guard::report() {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Where the installed mappings are, and what to run when they are not
/// where auto-selection would put new ones.
fn mapping_advice(all: &[InstalledContainer], picked: BackendKind) -> Vec<String> {
    let mut per_backend: Vec<(BackendKind, usize)> = Vec::new();
    for c in all {
        match per_backend.iter_mut().find(|(b, _)| *b == c.backend) {
            Some((_, n)) => *n += 1,
            None => per_backend.push((c.backend, 1)),
        }
    }
    let mut out = vec![match per_backend.as_slice() {
        [] => "mappings: none installed".to_string(),
        counts => format!(
            "mappings: {}",
            counts
                .iter()
                .map(|(b, n)| format!("{n} container(s) in {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }];
    // nftables rules carry only the container ID; iptables chain names
    // hash the network name too.
    let network = |from: BackendKind, to: Target| {
        if from == BackendKind::Nftables && to != Target::Nftables {
            " --network NAME"
        } else {
            ""
        }
    };
    for (backend, n) in per_backend.iter().filter(|(b, _)| *b != picked) {
        // `migrate --to` names iptables plainly: whichever variant is here.
        let target = match picked {
            BackendKind::Nftables => Target::Nftables,
            _ => Target::Iptables,
        };
        out.push(format!(
            "warning: {n} container(s) have mappings in {backend}, but auto-selection picks {picked} now: \
             their DEL still works (it sweeps every backend), new containers go to {picked}; \
             to move them: portmap migrate --to {target}{}",
            network(*backend, target)
        ));
    }
    let in_maps = all.iter().filter(|c| c.options.map_elements).count();
    if in_maps > 0 {
        out.push(format!(
            "warning: {in_maps} container(s) have mappings as elements of nftables map {MAP} \
             (nftablesLayout \"maps\"), which upstream's portmap cannot delete (its DEL deletes \
             rules by comment): before switching to upstream's binary, run \
             portmap migrate --to nftables --layout rules"
        ));
    }
    let in_tree: Vec<BackendKind> = all
        .iter()
        .filter(|c| c.options.tree_leaves)
        .map(|c| c.backend)
        .collect();
    if !in_tree.is_empty() {
        let target = match in_tree.iter().all(|b| *b == in_tree[0]) {
            true => in_tree[0].name(),
            false => "iptables",
        };
        out.push(format!(
            "warning: {} container(s) have mappings as leaves of the iptables port tree \
             (iptablesLayout \"tree\"), which upstream's portmap cannot delete (its DEL deletes \
             entry rules in CNI-HOSTPORT-DNAT only, then fails on the chain a leaf still \
             jumps to): before switching to upstream's binary, run \
             portmap migrate --to {target} --layout rules",
            in_tree.len()
        ));
    }
    if per_backend.iter().any(|(b, _)| *b == BackendKind::Nftables) {
        out.push(format!(
            "note: upstream portmap before v1.5 (Debian's 1.1.1 among them) knows only iptables \
             and cannot remove nftables rules: before switching back to it, run \
             portmap migrate --to iptables{}",
            network(BackendKind::Nftables, Target::Iptables)
        ));
    }
    out
}

/// Whether firewalld runs here, its backend, which of our mappings its
/// reloads flush and whether a `portmap watch` puts them back.
fn firewalld_report(p: &Presence, all: &[InstalledContainer], watchers: &[u32]) -> Vec<String> {
    let on_bus = matches!(p.on_bus, Ok(true));
    if p.here.is_empty() {
        return vec![if on_bus {
            format!(
                "firewalld: owns {} on the system bus but runs in another network namespace: \
                 its reloads do not touch this one's rules",
                firewalld::BUS_NAME
            )
        } else {
            "firewalld: not running in this network namespace".to_string()
        }];
    }
    let pids: Vec<String> = p.here.iter().map(u32::to_string).collect();
    let backend = p
        .backend
        .as_ref()
        .map_or("backend unknown".to_string(), |(b, from)| {
            format!("backend {b} (from {from})")
        });
    let mut out = vec![format!(
        "firewalld: running in this network namespace (pid {}), {backend}; its start and \
         every reload flush every iptables table (iptables -F -X -Z), whatever its backend",
        pids.join(", ")
    )];
    if let Err(e) = &p.on_bus {
        out.push(format!(
            "firewalld: its D-Bus signals cannot be followed here: {e}"
        ));
    }
    let flushed: Vec<&InstalledContainer> = all
        .iter()
        .filter(|c| firewalld::flushes(c.backend))
        .collect();
    if flushed.is_empty() {
        out.push(
            "firewalld: none of our mappings is in iptables (nftables ones outlive its reloads)"
                .to_string(),
        );
        return out;
    }
    out.push(format!(
        "firewalld: its reloads flush {} container(s) of ours (nftables ones are kept):",
        flushed.len()
    ));
    for c in &flushed {
        let mut ports: Vec<String> = c
            .mappings
            .iter()
            .map(|m| format!("{}/{}", m.host_port, m.protocol))
            .collect();
        // One per family in the rules, once here.
        ports.dedup();
        out.push(format!(
            "  {} in {}: {}",
            c.container_id,
            c.backend,
            ports.join(" ")
        ));
    }
    out.push(if watchers.is_empty() {
        "warning: no `portmap watch` runs in this network namespace: after a firewalld reload \
         these stay unreachable until `portmap restore` (enable portmap-watch.service)"
            .to_string()
    } else {
        let pids: Vec<String> = watchers.iter().map(u32::to_string).collect();
        format!(
            "firewalld: `portmap watch` (pid {}) restores them after each start and reload",
            pids.join(", ")
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portmap_backends::InstalledOptions;

    fn container(backend: BackendKind, id: &str) -> InstalledContainer {
        InstalledContainer {
            backend,
            container_id: id.into(),
            network: None,
            mappings: vec![],
            options: InstalledOptions::default(),
        }
    }

    #[test]
    fn advice_warns_about_mappings_outside_the_picked_backend() {
        let all = [
            container(BackendKind::Nftables, "a"),
            container(BackendKind::IptablesLegacy, "b"),
            container(BackendKind::IptablesLegacy, "c"),
        ];
        let lines = mapping_advice(&all, BackendKind::Nftables);
        assert_eq!(
            lines[0],
            "mappings: 1 container(s) in nftables, 2 container(s) in iptables-legacy"
        );
        assert!(lines[1].starts_with("warning: 2 container(s) have mappings in iptables-legacy, but auto-selection picks nftables now"), "{lines:?}");
        assert!(
            lines[1].ends_with("portmap migrate --to nftables"),
            "{lines:?}"
        );
        assert!(
            lines[2].ends_with("run portmap migrate --to iptables --network NAME"),
            "{lines:?}"
        );
        let lines = mapping_advice(&all[1..], BackendKind::IptablesLegacy);
        assert_eq!(lines, ["mappings: 2 container(s) in iptables-legacy"]);
        assert_eq!(
            mapping_advice(&[], BackendKind::Nftables),
            ["mappings: none installed"]
        );
    }

    #[test]
    fn advice_warns_while_a_tree_holds_leaves_and_names_the_variant() {
        let mut leafy = container(BackendKind::IptablesLegacy, "a");
        leafy.options.tree_leaves = true;
        let all = [leafy, container(BackendKind::IptablesLegacy, "b")];
        let lines = mapping_advice(&all, BackendKind::IptablesLegacy);
        let warning = lines
            .iter()
            .find(|l| l.contains("port tree"))
            .expect("a tree warning");
        assert!(warning.starts_with("warning: 1 container(s) have mappings as leaves"));
        assert!(
            warning.ends_with("portmap migrate --to iptables-legacy --layout rules"),
            "{warning}"
        );
        let lines = mapping_advice(&all[1..], BackendKind::IptablesLegacy);
        assert!(lines.iter().all(|l| !l.contains("port tree")), "{lines:?}");
    }

    #[test]
    fn advice_warns_while_a_map_holds_elements() {
        let mut mapped = container(BackendKind::Nftables, "a");
        mapped.options.map_elements = true;
        let all = [mapped, container(BackendKind::Nftables, "b")];
        let lines = mapping_advice(&all, BackendKind::Nftables);
        assert_eq!(
            lines[1],
            "warning: 1 container(s) have mappings as elements of nftables map hostports_map \
             (nftablesLayout \"maps\"), which upstream's portmap cannot delete (its DEL deletes \
             rules by comment): before switching to upstream's binary, run \
             portmap migrate --to nftables --layout rules"
        );
        let lines = mapping_advice(&all[1..], BackendKind::Nftables);
        assert!(
            lines.iter().all(|l| !l.contains("hostports_map")),
            "{lines:?}"
        );
    }

    #[test]
    fn moving_to_an_iptables_variant_names_the_plain_target() {
        let lines = mapping_advice(
            &[container(BackendKind::Nftables, "a")],
            BackendKind::IptablesLegacy,
        );
        assert!(
            lines[1].ends_with("portmap migrate --to iptables --network NAME"),
            "{lines:?}"
        );
    }

    #[test]
    fn firewalld_report_names_what_its_reloads_flush() {
        let presence = |here: Vec<u32>, on_bus: bool| Presence {
            here,
            on_bus: Ok(on_bus),
            backend: Some(("iptables".into(), "its D-Bus config")),
        };
        let all = [
            container(BackendKind::Nftables, "kept"),
            container(BackendKind::IptablesLegacy, "lost"),
        ];
        let lines = firewalld_report(&presence(vec![7], true), &all, &[]);
        assert!(
            lines[0].contains("pid 7), backend iptables (from its D-Bus config)"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "firewalld: its reloads flush 1 container(s) of ours (nftables ones are kept):"
        );
        assert_eq!(lines[2], "  lost in iptables-legacy: ");
        assert!(
            lines[3].starts_with("warning: no `portmap watch`"),
            "{lines:?}"
        );
        let lines = firewalld_report(&presence(vec![7], true), &all, &[9]);
        assert!(lines[3].contains("(pid 9) restores them"), "{lines:?}");
        let lines = firewalld_report(&presence(vec![7], true), &all[..1], &[]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("none of our mappings is in iptables"));
        let lines = firewalld_report(&presence(vec![], true), &all, &[]);
        assert!(
            lines[0].contains("runs in another network namespace"),
            "{lines:?}"
        );
        let lines = firewalld_report(&presence(vec![], false), &all, &[]);
        assert_eq!(lines, ["firewalld: not running in this network namespace"]);
    }
}
