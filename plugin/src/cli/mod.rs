//! Subcommands for people (when `CNI_COMMAND` is unset).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portmap_backends::iptables::{Iptables, Variant};
use portmap_backends::migrate;
use portmap_backends::select::{self, cleanup_backends, Choice};
use portmap_backends::{host, Backend, InstalledContainer, Plan};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use portmap_backends::nfnetlink;

use crate::journal::{Entry, Journal, JournalError, Receipted};
use crate::lock;

#[derive(Parser)]
#[command(
    name = "portmap",
    version,
    about = "CNI portmap plugin with nftables and iptables backends",
    long_about = "CNI portmap plugin with nftables and iptables backends.\n\n\
        A container runtime runs it with CNI_COMMAND set (ADD, CHECK, DEL, VERSION, STATUS, GC) \
        and the network configuration on stdin. Run by a person, it inspects the port mappings \
        of the current network namespace.",
    after_help = "Examples:\n  \
        portmap status                 which backends work here and which one auto-selection picks\n  \
        portmap list                   every installed mapping, in every backend\n  \
        portmap list --json            the same as JSON\n  \
        portmap migrate --to nftables --dry-run\n                                 \
        what moving every mapping to nftables would do\n  \
        portmap migrate --to iptables-legacy --network podman\n                                 \
        move back; nftables rules do not record the network name\n  \
        echo '{\"cniVersion\":\"1.0.0\"}' | CNI_COMMAND=VERSION portmap"
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// List installed port mappings of every backend.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show which backends are usable here and which one auto-selection picks.
    Status,
    /// Reinstall every journaled container whose rules are missing or
    /// damaged (after a firewall reload), each in its own backend and one
    /// atomic batch. Changes nothing when everything is in place.
    Restore {
        /// Only print what would be reinstalled.
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep restoring: after nf_tables reports a removed table, chain or
    /// rule (a flush, `systemctl restart nftables`, a firewalld reload),
    /// within a second; iptables, which has no events, every --interval.
    /// One line per reinstalled container. Stops on SIGTERM or SIGINT.
    Watch {
        /// Seconds between checks of iptables-held containers.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
    },
    /// Move every installed mapping to one backend, container by container
    /// (add in the target, check, then delete in the source). Running it
    /// again is a no-op; after an interruption it finishes the move.
    Migrate {
        /// The backend that should hold every mapping afterwards.
        #[arg(long, value_enum)]
        to: Target,
        /// Network name for containers whose rules do not record it
        /// (nftables rules carry only the container ID); needed when
        /// moving such containers to iptables, whose chain names hash it.
        #[arg(long)]
        network: Option<String>,
        /// Only print what would move.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    /// nftables (`cni_hostport` tables)
    Nftables,
    /// the iptables found in PATH, whichever variant it is
    Iptables,
    /// iptables-nft explicitly
    IptablesNft,
    /// iptables-legacy explicitly
    IptablesLegacy,
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Sub::List { json } => list(json),
        Sub::Status => status(),
        Sub::Restore { dry_run } => restore(dry_run),
        Sub::Watch { interval } => watch(Duration::from_secs(interval)),
        Sub::Migrate {
            to,
            network,
            dry_run,
        } => migrate_to(to, network.as_deref(), dry_run),
    }
}

fn target_backend(to: Target) -> Result<Box<dyn Backend>, String> {
    Ok(match to {
        Target::Nftables => {
            select::select(Some(Choice::Nftables))
                .map_err(|e| e.to_string())?
                .backend
        }
        Target::Iptables => Box::new(Iptables::from_path().map_err(|e| e.to_string())?),
        Target::IptablesNft => {
            Box::new(Iptables::variant(Variant::Nft).map_err(|e| e.to_string())?)
        }
        Target::IptablesLegacy => {
            Box::new(Iptables::variant(Variant::Legacy).map_err(|e| e.to_string())?)
        }
    })
}

fn migrate_to(to: Target, network: Option<&str>, dry_run: bool) -> ExitCode {
    let target = match target_backend(to) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portmap: migrate: target not usable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Runtimes' ADD/DEL must not interleave with a move.
    let _lock = match lock::acquire(std::path::Path::new(lock::LOCK_PATH)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portmap: migrate: {}", e.msg);
            return ExitCode::FAILURE;
        }
    };
    // Which network each nftables rule is of: the journal knows.
    let journaled: Vec<portmap_backends::Attachment> = match Journal::here() {
        Ok(j) => {
            let keys: Vec<_> = j
                .entries()
                .into_iter()
                .flatten()
                .map(|(_, e)| e.request.key)
                .collect();
            j.attachments(&keys)
        }
        Err(_) => Vec::new(),
    };
    let report = migrate::migrate(
        target.as_ref(),
        &cleanup_backends(),
        &journaled,
        network,
        dry_run,
    );
    if !dry_run {
        if let Ok(j) = Journal::here() {
            j.write_ledger(nfnetlink::generation().ok());
        }
    }
    if !dry_run {
        if let Err(e) = journal_moves(&report.moved) {
            eprintln!("portmap: migrate: {e}");
            return ExitCode::FAILURE;
        }
    }
    let verb = if dry_run { "would move" } else { "moved" };
    for m in &report.moved {
        println!(
            "{verb} {}: {} -> {} ({} mappings)",
            m.container_id, m.from, m.to, m.mappings
        );
    }
    for e in &report.failed {
        eprintln!("portmap: migrate: {e}");
    }
    println!(
        "{} {} container(s) to {}, {} failed",
        if dry_run { "would move" } else { "moved" },
        report.moved.len(),
        target.name(),
        report.failed.len()
    );
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Journal entries follow their containers to the new backend, so a
/// restore reinstalls them where they now are.
fn journal_moves(moved: &[migrate::Moved]) -> Result<(), JournalError> {
    let journal = Journal::here()?;
    for (_, mut entry) in journal.entries().into_iter().flatten() {
        let id = &entry.request.key.container_id;
        let network = &entry.request.key.network;
        if let Some(m) = moved
            .iter()
            .find(|m| &m.container_id == id && &m.network == network && m.from == entry.backend)
        {
            entry.backend = m.to.to_string();
            journal.write(&entry)?;
            // The old backend's receipt names rules that are gone.
            journal.write_receipt(&entry.request.key, &entry.ifname, None)?;
        }
    }
    Ok(())
}

/// What `restore` found for one journal entry.
enum Restored {
    InPlace,
    Reinstalled(String),
    /// Rules missing and the container's namespace gone: the entry goes.
    Dropped,
}

fn restore_one(journal: &Journal, entry: &Entry, dry_run: bool) -> Result<Restored, String> {
    let backend = select::backend_named(&entry.backend)?;
    let plan = Plan::new(&entry.request);
    let guard_lost =
        || plan.localnet_container().is_some() && !backend.localnet_guard().unwrap_or(false);
    let why = match backend.check(&plan) {
        // The guard is the host's (CHECK leaves it out), but the container's
        // ADD installed it: reinstalling puts it back.
        Ok(()) if guard_lost() => "the localnet guard is missing".to_string(),
        Ok(()) => return Ok(Restored::InPlace),
        Err(why) => {
            let stale = entry.is_stale().map_err(|e| {
                format!(
                    "skipped, entry kept: cannot tell whether its network namespace {} still exists: {e}",
                    entry.netns
                )
            })?;
            if stale {
                if !dry_run {
                    journal
                        .remove(&entry.request.key)
                        .map_err(|e| e.to_string())?;
                }
                return Ok(Restored::Dropped);
            }
            why.to_string()
        }
    };
    if !dry_run {
        let known = journal.known(&entry.request.key);
        let receipt = backend
            .install(&plan, Some(&known))
            .map_err(|e| format!("{e}: {}", e.details()))?;
        journal.write_ledger(nfnetlink::generation().ok());
        // The rules moved: DEL goes by the new receipt (or reads all).
        let receipt = receipt.map(|receipt| Receipted {
            backend: entry.backend.clone(),
            receipt,
        });
        let _ = journal.write_receipt(&entry.request.key, &entry.ifname, receipt.as_ref());
        host::after_add(&plan).map_err(|e| e.to_string())?;
    }
    Ok(Restored::Reinstalled(why))
}

/// What one restore pass did.
#[derive(Default)]
struct Pass {
    in_place: usize,
    reinstalled: usize,
    dropped: usize,
    failed: usize,
}

/// Checks the `wanted` entries of `journal` under the plugin lock and
/// reinstalls what is missing; one line per container it acted on.
fn restore_pass(journal: &Journal, dry_run: bool, wanted: &dyn Fn(&Entry) -> bool) -> Pass {
    let mut pass = Pass::default();
    // Runtimes' ADD/DEL must not interleave (an ADD journals before it
    // installs: without the lock we would race it).
    let _lock = match lock::acquire(std::path::Path::new(lock::LOCK_PATH)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portmap: restore: {}", e.msg);
            pass.failed += 1;
            return pass;
        }
    };
    for entry in journal.entries() {
        let (path, entry) = match entry {
            Ok(e) => e,
            Err(e) => {
                pass.failed += 1;
                eprintln!("portmap: restore: {e}");
                continue;
            }
        };
        if !wanted(&entry) {
            continue;
        }
        let id = &entry.request.key.container_id;
        match restore_one(journal, &entry, dry_run) {
            Ok(Restored::InPlace) => pass.in_place += 1,
            Ok(Restored::Dropped) => {
                pass.dropped += 1;
                println!(
                    "{} {id}: its rules are gone and so is its network namespace {}",
                    if dry_run { "would forget" } else { "forgot" },
                    entry.netns
                );
            }
            Ok(Restored::Reinstalled(why)) => {
                pass.reinstalled += 1;
                let verb = if dry_run {
                    "would reinstall"
                } else {
                    "reinstalled"
                };
                println!("{verb} {id} in {} ({why})", entry.backend);
            }
            Err(e) => {
                pass.failed += 1;
                eprintln!(
                    "portmap: restore: {} ({id} in {}): {e}",
                    path.display(),
                    entry.backend
                );
            }
        }
    }
    pass
}

fn restore(dry_run: bool) -> ExitCode {
    let journal = match Journal::here() {
        Ok(j) => j,
        Err(e) => {
            eprintln!("portmap: restore: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pass = restore_pass(&journal, dry_run, &|_| true);
    println!(
        "{} {} container(s), {} in place, {} gone, {} could not be restored",
        if dry_run {
            "would reinstall"
        } else {
            "reinstalled"
        },
        pass.reinstalled,
        pass.in_place,
        pass.dropped,
        pass.failed
    );
    if pass.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Quiet time after the last removal before restoring: a reload removes
/// many things, one pass should follow it, not one per notification.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How long one wait for notifications lasts (and so how soon SIGTERM is seen).
const TICK: Duration = Duration::from_millis(200);

fn watch(interval: Duration) -> ExitCode {
    let handler = SigAction::new(SigHandler::Handler(stop), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no other handler for these signals is replaced
        // that anything else relies on.
        if let Err(e) = unsafe { sigaction(signal, &handler) } {
            eprintln!("portmap: watch: cannot handle {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let journal = match Journal::here() {
        Ok(j) => j,
        Err(e) => {
            eprintln!("portmap: watch: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut events = match nfnetlink::Events::subscribe(TICK) {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!(
                "portmap: watch: no nf_tables notifications ({e}): checking every {interval:?}"
            );
            None
        }
    };
    println!(
        "portmap watch: journal {}; nf_tables notifications: {}; iptables every {interval:?}",
        journal.dir().display(),
        if events.is_some() { "on" } else { "off" }
    );
    let mut removal_at: Option<Instant> = None;
    let mut next_check = Instant::now() + interval;
    while !STOP.load(Ordering::SeqCst) {
        match &mut events {
            Some(ev) => match ev.removed() {
                Ok(true) => removal_at = Some(Instant::now()),
                Ok(false) => {}
                Err(e) => eprintln!("portmap: watch: {e}"),
            },
            None => std::thread::sleep(TICK),
        }
        if removal_at.is_some_and(|t| t.elapsed() >= DEBOUNCE) {
            removal_at = None;
            restore_pass(&journal, false, &|_| true);
        }
        // Without events (or for iptables, which has none) check on a timer.
        if Instant::now() >= next_check {
            next_check = Instant::now() + interval;
            let nft_covered = events.is_some();
            restore_pass(&journal, false, &|e| {
                !(nft_covered && e.backend == portmap_backends::nftables::NAME)
            });
        }
    }
    println!("portmap watch: stopped");
    ExitCode::SUCCESS
}

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
            select::backend_named(&e.backend)
                .map(|b| b.check(&Plan::new(&e.request)).is_err())
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

fn list(json: bool) -> ExitCode {
    let (all, errors) = installed();
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .flat_map(|c| {
                c.mappings.iter().map(move |m| {
                    serde_json::json!({
                        "backend": c.backend,
                        "family": m.family.to_string(),
                        "containerID": c.container_id,
                        "network": c.network,
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
            "{:<16} {:<6} {:<24} {:<30} {:<30} PROTO",
            "BACKEND", "FAMILY", "CONTAINER", "HOST", "CONTAINER ADDRESS"
        );
        for c in &all {
            for m in &c.mappings {
                let host_ip = m
                    .host_ip
                    .map_or_else(|| "*".to_string(), |ip| ip.to_string());
                println!(
                    "{:<16} {:<6} {:<24} {:<30} {:<30} {}",
                    c.backend,
                    m.family,
                    c.container_id,
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

fn status() -> ExitCode {
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
            s.backend.name()
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
    for line in portmap_backends::guard::report() {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Where the installed mappings are, and what to run when they are not
/// where auto-selection would put new ones.
fn mapping_advice(all: &[InstalledContainer], picked: &str) -> Vec<String> {
    let mut per_backend: Vec<(&str, usize)> = Vec::new();
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
    let network = |from: &str, to: &str| {
        if from == "nftables" && to != "nftables" {
            " --network NAME"
        } else {
            ""
        }
    };
    for (backend, n) in per_backend.iter().filter(|(b, _)| *b != picked) {
        let target = picked.split('-').next().unwrap_or(picked);
        out.push(format!(
            "warning: {n} container(s) have mappings in {backend}, but auto-selection picks {picked} now: \
             their DEL still works (it sweeps every backend), new containers go to {picked}; \
             to move them: portmap migrate --to {target}{}",
            network(backend, target)
        ));
    }
    if per_backend.iter().any(|(b, _)| *b == "nftables") {
        out.push(format!(
            "note: upstream portmap before v1.5 (Debian's 1.1.1 among them) knows only iptables \
             and cannot remove nftables rules: before switching back to it, run \
             portmap migrate --to iptables{}",
            network("nftables", "iptables")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portmap_backends::InstalledOptions;

    fn container(backend: &'static str, id: &str) -> InstalledContainer {
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
            container("nftables", "a"),
            container("iptables-legacy", "b"),
            container("iptables-legacy", "c"),
        ];
        let lines = mapping_advice(&all, "nftables");
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
        let lines = mapping_advice(&all[1..], "iptables-legacy");
        assert_eq!(lines, ["mappings: 2 container(s) in iptables-legacy"]);
        assert_eq!(
            mapping_advice(&[], "nftables"),
            ["mappings: none installed"]
        );
    }

    #[test]
    fn moving_to_an_iptables_variant_names_the_plain_target() {
        let lines = mapping_advice(&[container("nftables", "a")], "iptables-legacy");
        assert!(
            lines[1].ends_with("portmap migrate --to iptables --network NAME"),
            "{lines:?}"
        );
    }
}
