//! Subcommands for people (when `CNI_COMMAND` is unset): the clap surface
//! and dispatch; each command's work in its own file.

mod inspect;
mod install;
mod migrate;
pub mod restore;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use inspect::{list, status};
use install::install;
use migrate::migrate_to;
use restore::{restore, watch};

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
        portmap install --dest /host/opt/cni/bin\n                                 \
        copy this binary there atomically (a DaemonSet's install container)\n  \
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
    /// Show which backends are usable here and which one auto-selection
    /// picks; whether firewalld runs here and which mappings its reloads
    /// flush; a warning while nftables map elements (nftablesLayout maps)
    /// exist, which upstream's binary cannot delete.
    Status,
    /// Reinstall every journaled container whose rules are missing or
    /// damaged (after a firewall reload), each in its own backend and one
    /// atomic batch. Changes nothing when everything is in place.
    Restore {
        /// Only print what would be reinstalled.
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep restoring: within a second after nf_tables reports that
    /// somebody else removed a rule, chain or table of ours (a flush,
    /// `systemctl restart nftables`, a firewalld reload; nftables and
    /// iptables-nft); after firewalld's D-Bus `Reloaded` signal and its
    /// restarts (system bus, DBUS_SYSTEM_BUS_ADDRESS honoured); and
    /// iptables-legacy, which has no events, every --interval. Our own
    /// ADD/DEL start nothing. One line per pass and per reinstalled
    /// container. Stops on SIGTERM or SIGINT.
    Watch {
        /// Seconds between checks of iptables-legacy-held containers
        /// (every 12th check also looks at the others).
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
        /// The layout every mapping of the target backend should have
        /// afterwards: `rules` (upstream's, which upstream's binary can
        /// delete), with --to nftables `maps` (single ports as map
        /// elements), with --to iptables* `tree` (single ports dispatched
        /// through the port tree's chains). Each container that is not in
        /// it is re-installed in one transaction (one restore per family).
        #[arg(long, value_enum)]
        layout: Option<LayoutArg>,
        /// Only print what would move.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy this binary into a CNI bin directory atomically (temp file in
    /// that directory, fsync, mode 0755, rename over the old one): a
    /// runtime never sees a partial file, and a running old binary is no
    /// obstacle. The Kubernetes DaemonSet's install container runs it.
    Install {
        /// The CNI bin directory (must exist), e.g. the node's /opt/cni/bin
        /// mounted at /host/opt/cni/bin.
        #[arg(long)]
        dest: std::path::PathBuf,
        /// File name in that directory (the plugin `type` runtimes look up).
        #[arg(long, default_value = "portmap")]
        name: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LayoutArg {
    /// one rule per mapping (upstream's layout)
    Rules,
    /// single-port mappings as elements of map hostports_map (nftables)
    Maps,
    /// single-port mappings as leaves of the port tree (iptables)
    Tree,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
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

/// As `--to` spells it.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().ok_or(std::fmt::Error)?;
        f.write_str(value.get_name())
    }
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Sub::List { json } => list(json),
        Sub::Status => status(),
        Sub::Restore { dry_run } => restore(dry_run),
        Sub::Watch { interval } => {
            // firewalld's Reloaded (and start, stop): its flush takes legacy
            // iptables too, which sends no nf_tables notification.
            let (tx, triggers) = std::sync::mpsc::channel();
            crate::firewalld::Listener::start(move |t| {
                let _ = tx.send(restore::Trigger::Signal(t.to_string()));
            });
            watch(Duration::from_secs(interval), triggers)
        }
        Sub::Migrate {
            to,
            network,
            layout,
            dry_run,
        } => {
            use portmap_backends::{IptablesLayout, Layout, LayoutChoice};
            let layout = match (layout, to == Target::Nftables) {
                (None, _) => None,
                (Some(LayoutArg::Rules), true) => Some(LayoutChoice::Nftables(Layout::Rules)),
                (Some(LayoutArg::Maps), true) => Some(LayoutChoice::Nftables(Layout::Maps)),
                (Some(LayoutArg::Rules), false) => {
                    Some(LayoutChoice::Iptables(IptablesLayout::Rules))
                }
                (Some(LayoutArg::Tree), false) => {
                    Some(LayoutChoice::Iptables(IptablesLayout::Tree))
                }
                (Some(LayoutArg::Maps), false) | (Some(LayoutArg::Tree), true) => {
                    eprintln!(
                        "portmap: migrate: --layout maps applies to --to nftables, \
                         --layout tree to --to iptables (and its variants)"
                    );
                    return ExitCode::FAILURE;
                }
            };
            migrate_to(to, network.as_deref(), layout, dry_run)
        }
        Sub::Install { dest, name } => install(&dest, &name),
    }
}
