//! `portmap-conformance`: list the catalogue, run it against a portmap
//! binary (and optionally a reference binary) over the backend axis, or
//! benchmark the two side by side.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portmap_conformance::report::{self, Cell, Verdict};
use portmap_conformance::run::{run_cell, CellSpec};
use portmap_conformance::scenarios::{catalogue, Axis};
use portmap_conformance::topology::Setup;
use portmap_conformance::{chain, cni};

#[path = "main/bench.rs"]
mod bench_cmd;
use bench_cmd::{bench, BenchOutputs, BenchSizes};

fn parse_setup(s: &str) -> Result<Setup, String> {
    Setup::parse(s).ok_or_else(|| format!("unknown setup {s:?} (veth or chain)"))
}

#[derive(Parser)]
#[command(
    name = "portmap-conformance",
    version,
    about = "Runs CNI portmap scenarios with real traffic in network namespaces against any portmap binary, and benchmarks it",
    after_help = "Examples:\n  \
        portmap-conformance list\n  \
        sudo portmap-conformance run --plugin target/release/portmap\n  \
        sudo portmap-conformance run --plugin target/release/portmap --reference /usr/lib/cni/portmap \\\n      \
            --backend iptables-nft --backend iptables-legacy --junit junit.xml --markdown summary.md\n  \
        sudo portmap-conformance bench --plugin target/release/portmap --reference /usr/lib/cni/portmap\n\n\
        Needs root (it creates network namespaces, and a mount namespace with the cell's own /run\n\
        for each plugin call). `run` exits 1 when any cell of --plugin fails;\n\
        the reference binary's results are reported, never gated on."
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

/// What `run` and `bench` exercise.
#[derive(clap::Args)]
struct Subjects {
    /// The portmap binary under test.
    #[arg(long)]
    plugin: PathBuf,
    /// A second binary (e.g. upstream's) beside it: through the same
    /// matrix and the interop scenarios, or in the same benchmark run.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// nftables, nftables-maps (nftablesLayout "maps"), iptables-nft, iptables-nft-tree
    /// (iptablesLayout "tree"), iptables-legacy or auto (repeatable;
    /// default: all for run, the first three for bench).
    #[arg(long = "backend")]
    backends: Vec<String>,
}

#[derive(Subcommand)]
enum Sub {
    /// List the scenarios with one-line descriptions.
    List,
    /// Run scenarios × backends and print the matrix.
    Run {
        #[command(flatten)]
        subjects: Subjects,
        /// Only these scenarios (repeatable; default all).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// How containers are attached: `veth` (built in) or `chain` (Debian's
        /// bridge + host-local, their result threaded into portmap as
        /// prevResult). Repeatable; default both. Chain results are reported
        /// under `ours+chain` / `reference+chain`.
        #[arg(long = "setup", value_parser = parse_setup)]
        setups: Vec<Setup>,
        /// Write every cell (result, reason, seconds) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a JUnit XML report here (one test case per cell).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the matrix as Markdown here (suits $GITHUB_STEP_SUMMARY).
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Measure ADD/DEL latency and spawned processes (ours beside a
    /// reference binary), many mappings, the data plane, restore/watch.
    #[command(after_help = "Example:\n  \
        sudo portmap-conformance bench --plugin target/release/portmap --reference /usr/lib/cni/portmap \\\n      \
            --json bench.json --plot bench.svg --dataplane-plot dataplane.svg\n\n\
        Sections (--sections, default all), each per backend in fresh namespaces:\n  \
        latency    ADD/DEL with N other containers installed (with --plugin; both binaries write the\n             \
        same rules), rounds alternating which binary runs first; one more ADD and DEL per cell\n             \
        under `strace -f -e trace=execve` to count processes\n  \
        mappings   one container with --many UDP vs --many TCP mappings, and --consecutive TCP ports vs\n             \
        one mapping (ours only: upstream v1.1.1 takes minutes for 1,000 mappings)\n  \
        dataplane  new TCP connections from a client namespace to an unpublished host port and to a\n             \
        published one: the probe alone, beside --dp-mappings mappings, beside --dp-containers\n             \
        containers (interleaved rounds; median of --dp-batches batches of --dp-conns)\n  \
        restore    `portmap restore` with nothing missing at --restore-sizes journaled containers, then\n             \
        ADD/DEL beside `portmap watch` at the largest against the same host without it")]
    Bench {
        #[command(flatten)]
        subjects: Subjects,
        #[command(flatten)]
        sizes: BenchSizes,
        /// Write the figures, the machine and the targets as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// SVG plot of median latency against N.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// SVG plot of the data plane's cost per host state.
        #[arg(long)]
        dataplane_plot: Option<PathBuf>,
        /// Exit 3 when a target is missed (they are always printed).
        #[arg(long)]
        gate: bool,
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
            subjects:
                Subjects {
                    plugin,
                    reference,
                    backends,
                },
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
        Sub::Bench {
            subjects:
                Subjects {
                    plugin,
                    reference,
                    backends,
                },
            sizes,
            json,
            plot,
            dataplane_plot,
            gate,
        } => {
            let outputs = BenchOutputs {
                json,
                plot,
                dataplane_plot,
                gate,
            };
            match bench(plugin, reference, &backends, sizes, &outputs) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("portmap-conformance: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn parse_axes(backends: &[String], default: &[Axis]) -> Result<Vec<Axis>, String> {
    if backends.is_empty() {
        return Ok(default.to_vec());
    }
    backends
        .iter()
        .map(|b| Axis::parse(b).ok_or(format!("unknown backend {b:?}")))
        .collect()
}

fn absolute(path: &PathBuf) -> Result<PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(
    plugin: PathBuf,
    reference: Option<PathBuf>,
    backends: &[String],
    only: &[String],
    setups: &[Setup],
    [json, junit, markdown]: [Option<PathBuf>; 3],
) -> Result<ExitCode, String> {
    let all = catalogue();
    // Everything before the first cell: a refusal here (an unknown
    // scenario, a plugin with no VERSION answer) still writes the reports,
    // with no cell and the refusal as the reason, so a gate's artifacts
    // say why nothing ran.
    let prepared = prepare(&plugin, reference.as_ref(), backends, only, setups, &all);
    let Prepared {
        setups,
        axes,
        chosen,
        plugin,
        reference,
        described,
        cni_version,
    } = match prepared {
        Ok(p) => p,
        Err(e) => {
            let shown = plugin.display().to_string();
            let texts = [
                format!("{:#}\n", report::refused_json(&shown, &e)),
                report::refused_junit(&e),
                report::refused_markdown(&e),
            ];
            for (path, text) in [&json, &junit, &markdown].into_iter().zip(texts) {
                if let Some(p) = path {
                    if let Err(w) = std::fs::write(p, text) {
                        eprintln!("portmap-conformance: {}: {w}", p.display());
                    }
                }
            }
            return Err(e);
        }
    };
    let mut runs: Vec<(&str, &PathBuf, Option<&PathBuf>, Setup)> = Vec::new();
    for setup in &setups {
        runs.push((report::OURS, &plugin, reference.as_ref(), *setup));
        if let Some(r) = &reference {
            runs.push((report::REFERENCE, r, Some(&plugin), *setup));
        }
    }
    let total = runs.len() * axes.len() * chosen.len();
    let mut cells: Vec<Cell> = Vec::new();
    for (binary, bin, other, setup) in &runs {
        let spec = CellSpec {
            plugin: bin,
            reference: other.map(PathBuf::as_path),
            binary,
            setup: *setup,
            cni_version: &cni_version,
        };
        let label = match setup {
            Setup::Veth => binary.to_string(),
            other => format!("{binary}+{}", other.name()),
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
    println!("\n{}", report::matrix(&cells, described.as_deref()));
    let write = |path: &Option<PathBuf>, text: String| -> Result<(), String> {
        match path {
            Some(p) => std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display())),
            None => Ok(()),
        }
    };
    write(&json, format!("{:#}\n", report::json(&cells)))?;
    write(&junit, report::junit(&cells))?;
    write(&markdown, report::markdown(&cells, described.as_deref()))?;
    let ours_failed = cells
        .iter()
        .any(|c| c.binary == report::OURS && matches!(c.verdict, Verdict::Fail(_)));
    Ok(if ours_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What a run has settled before its first cell.
struct Prepared<'a> {
    setups: Vec<Setup>,
    axes: Vec<Axis>,
    chosen: Vec<&'a portmap_conformance::scenarios::Scenario>,
    plugin: PathBuf,
    reference: Option<PathBuf>,
    described: Option<String>,
    cni_version: String,
}

fn prepare<'a>(
    plugin: &PathBuf,
    reference: Option<&PathBuf>,
    backends: &[String],
    only: &[String],
    setups: &[Setup],
    all: &'a [portmap_conformance::scenarios::Scenario],
) -> Result<Prepared<'a>, String> {
    let setups = if setups.is_empty() {
        vec![Setup::Veth, Setup::Chain]
    } else {
        setups.to_vec()
    };
    let axes = parse_axes(backends, &Axis::ALL)?;
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
    let plugin = absolute(plugin)?;
    let reference = reference.map(absolute).transpose()?;
    let described = reference.as_deref().map(cni::describe);
    // One CNI version for every config of the run: the newest that the
    // plugin, the reference and the chain's plugins all speak.
    let mut speakers: Vec<&std::path::Path> = vec![&plugin];
    speakers.extend(reference.as_deref());
    if setups.contains(&Setup::Chain) {
        speakers.push(std::path::Path::new(chain::BRIDGE_PLUGIN));
        speakers.push(std::path::Path::new(chain::HOST_LOCAL_PLUGIN));
    }
    let cni_version = cni::negotiate(&speakers)?;
    println!(
        "CNI version {cni_version}: the newest that {} all support",
        cni::paths(&speakers)
    );
    Ok(Prepared {
        setups,
        axes,
        chosen,
        plugin,
        reference,
        described,
        cni_version,
    })
}
