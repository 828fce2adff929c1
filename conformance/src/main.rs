//! `portmap-conformance`: list the catalogue, or run it against a portmap
//! binary (and optionally a reference binary) over the backend axis.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portmap_conformance::report::{self, Cell, Verdict};
use portmap_conformance::run::{run_cell, CellSpec};
use portmap_conformance::scenarios::{catalogue, Axis};
use portmap_conformance::topology::Setup;

fn parse_setup(s: &str) -> Result<Setup, String> {
    Setup::parse(s).ok_or_else(|| format!("unknown setup {s:?} (veth or chain)"))
}

#[derive(Parser)]
#[command(
    name = "portmap-conformance",
    version,
    about = "Runs CNI portmap scenarios with real traffic in network namespaces against any portmap binary",
    after_help = "Examples:\n  \
        portmap-conformance list\n  \
        sudo portmap-conformance run --plugin target/release/portmap\n  \
        sudo portmap-conformance run --plugin target/release/portmap --reference /usr/lib/cni/portmap \\\n      \
            --backend iptables-nft --backend iptables-legacy --junit junit.xml --markdown summary.md\n\n\
        Needs root (it creates network namespaces). Exit status 1 when any cell of --plugin fails;\n\
        the reference binary's results are reported, never gated on."
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// List the scenarios with one-line descriptions.
    List,
    /// Run scenarios × backends and print the matrix.
    Run {
        /// The portmap binary under test.
        #[arg(long)]
        plugin: PathBuf,
        /// A second binary (e.g. upstream's) run through the same matrix and
        /// used for the interop scenarios.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// nftables, iptables-nft, iptables-legacy or auto (repeatable; default all).
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// Only these scenarios (repeatable; default all).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// How containers are attached: `veth` (built in) or `chain` (Debian's
        /// bridge + host-local, their result threaded into portmap as
        /// prevResult). Repeatable; default both. Chain results are reported
        /// under `ours+chain` / `reference+chain`.
        #[arg(long = "setup", value_parser = parse_setup)]
        setups: Vec<Setup>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        junit: Option<PathBuf>,
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Sub::List => {
            for s in catalogue() {
                println!("{:<28} {}", s.name, s.description);
            }
            ExitCode::SUCCESS
        }
        Sub::Run {
            plugin,
            reference,
            backends,
            scenarios,
            setups,
            json,
            junit,
            markdown,
        } => {
            match run(
                plugin,
                reference,
                &backends,
                &scenarios,
                &setups,
                [json, junit, markdown],
            ) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("portmap-conformance: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn run(
    plugin: PathBuf,
    reference: Option<PathBuf>,
    backends: &[String],
    only: &[String],
    setups: &[Setup],
    [json, junit, markdown]: [Option<PathBuf>; 3],
) -> Result<ExitCode, String> {
    let setups = if setups.is_empty() {
        vec![Setup::Veth, Setup::Chain]
    } else {
        setups.to_vec()
    };
    let axes: Vec<Axis> = if backends.is_empty() {
        Axis::ALL.to_vec()
    } else {
        backends
            .iter()
            .map(|b| Axis::parse(b).ok_or(format!("unknown backend {b:?}")))
            .collect::<Result<_, _>>()?
    };
    let all = catalogue();
    for name in only {
        if !all.iter().any(|s| s.name == name) {
            return Err(format!(
                "unknown scenario {name:?} (see `portmap-conformance list`)"
            ));
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|n| n == s.name))
        .collect();
    let plugin =
        std::fs::canonicalize(&plugin).map_err(|e| format!("{}: {e}", plugin.display()))?;
    let reference = reference
        .map(|r| std::fs::canonicalize(&r).map_err(|e| format!("{}: {e}", r.display())))
        .transpose()?;
    let mut runs: Vec<(String, &PathBuf, Option<&PathBuf>, Setup)> = Vec::new();
    for setup in &setups {
        let suffix = match setup {
            Setup::Veth => String::new(),
            other => format!("+{}", other.name()),
        };
        runs.push((format!("ours{suffix}"), &plugin, reference.as_ref(), *setup));
        if let Some(r) = &reference {
            runs.push((format!("reference{suffix}"), r, Some(&plugin), *setup));
        }
    }
    let total = runs.len() * axes.len() * chosen.len();
    let mut cells: Vec<Cell> = Vec::new();
    for (label, bin, other, setup) in &runs {
        let spec = CellSpec {
            plugin: bin,
            reference: other.map(PathBuf::as_path),
            label,
            setup: *setup,
        };
        for axis in &axes {
            for s in &chosen {
                print!(
                    "[{:>3}/{total}] {label:<15} {:<15} {:<28} ",
                    cells.len() + 1,
                    axis.name(),
                    s.name
                );
                let _ = std::io::stdout().flush();
                let cell = run_cell(&spec, *axis, s);
                println!(
                    "{} ({:.1}s) {}",
                    cell.verdict.word(),
                    cell.seconds,
                    cell.verdict.reason()
                );
                cells.push(cell);
            }
        }
    }
    println!("\n{}", report::matrix(&cells));
    let write = |path: &Option<PathBuf>, text: String| -> Result<(), String> {
        match path {
            Some(p) => std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display())),
            None => Ok(()),
        }
    };
    write(&json, format!("{:#}\n", report::json(&cells)))?;
    write(&junit, report::junit(&cells))?;
    write(&markdown, report::markdown(&cells))?;
    let ours_failed = cells
        .iter()
        .any(|c| c.plugin.starts_with("ours") && matches!(c.verdict, Verdict::Fail(_)));
    Ok(if ours_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
