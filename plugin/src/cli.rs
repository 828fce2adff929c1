//! Subcommands for people (when `CNI_COMMAND` is unset).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portmap_backends::iptables::{Iptables, Variant};
use portmap_backends::migrate;
use portmap_backends::select::{self, cleanup_backends, Choice};
use portmap_backends::{Backend, InstalledContainer};

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
    let report = migrate::migrate(target.as_ref(), &cleanup_backends(), network, dry_run);
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
                    })
                })
            })
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
    match select::probe_nftables() {
        Ok(n) => println!("nftables: usable ({})", n.binary().display()),
        Err(why) => println!("nftables: not usable: {why}"),
    }
    for variant in [Variant::Nft, Variant::Legacy] {
        match Iptables::variant(variant) {
            Ok(_) => println!("iptables-{variant}: tools found"),
            Err(e) => println!("iptables-{variant}: not usable: {e}"),
        }
    }
    match select::select(None) {
        Ok(s) => {
            println!("auto-selection: {} ({})", s.backend.name(), s.reason);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("auto-selection: none: {e}");
            ExitCode::FAILURE
        }
    }
}
