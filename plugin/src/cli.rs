//! Subcommands for people (when `CNI_COMMAND` is unset).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portmap_backends::iptables::{Iptables, Variant};
use portmap_backends::select::{self, cleanup_backends};
use portmap_backends::InstalledContainer;

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
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Sub::List { json } => list(json),
        Sub::Status => status(),
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
