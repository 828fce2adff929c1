//! `bench`'s options and its run: sections, sizes, outputs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use portmap_conformance::scenarios::Axis;
use portmap_conformance::{bench, bench_report};

use super::{absolute, parse_axes};

fn parse_section(s: &str) -> Result<bench::Section, String> {
    bench::Section::parse(s)
        .ok_or_else(|| format!("unknown section {s:?} (latency, mappings, dataplane, restore)"))
}

/// What `bench` runs, and how much of it.
#[derive(clap::Args)]
pub(super) struct BenchSizes {
    /// Sections to run, comma-separated: latency, mappings, dataplane, restore.
    #[arg(long, value_delimiter = ',', value_parser = parse_section,
          default_value = "latency,mappings,dataplane,restore")]
    sections: Vec<bench::Section>,
    /// latency: containers already installed when measuring.
    #[arg(long, value_delimiter = ',', default_value = "0,100,1000")]
    sizes: Vec<usize>,
    /// latency: ADD+DEL pairs per binary and cell.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    ops: u16,
    /// mappings: mappings of the UDP and of the TCP container.
    #[arg(long, default_value_t = 1000)]
    many: usize,
    /// mappings: consecutive TCP mappings of the large container.
    #[arg(long, default_value_t = 5000)]
    consecutive: usize,
    /// mappings: ADD+DEL pairs per container.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    mapping_ops: u16,
    /// dataplane: mappings of the one large container.
    #[arg(long, default_value_t = 5000)]
    dp_mappings: usize,
    /// dataplane: containers of one mapping each.
    #[arg(long, default_value_t = 1000)]
    dp_containers: usize,
    /// dataplane: batches per host state and port.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u16).range(1..))]
    dp_batches: u16,
    /// dataplane: connections per batch.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    dp_conns: u16,
    /// restore: journaled containers per measurement (target: the second
    /// against the first; watch runs beside the largest).
    #[arg(long, value_delimiter = ',', default_value = "20,200,1000")]
    restore_sizes: Vec<usize>,
    /// restore: passes per N (fewer once 10 s are spent on one N; a pass
    /// over 60 s is stopped and reported as such).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    restore_ops: u16,
    /// restore: ADD+DEL pairs beside `portmap watch` (and as many without).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    watch_ops: u16,
}

pub(super) struct BenchOutputs {
    pub(super) json: Option<PathBuf>,
    pub(super) plot: Option<PathBuf>,
    pub(super) dataplane_plot: Option<PathBuf>,
    pub(super) gate: bool,
}

pub(super) fn bench(
    plugin: PathBuf,
    reference: Option<PathBuf>,
    backends: &[String],
    sizes: BenchSizes,
    out: &BenchOutputs,
) -> Result<ExitCode, String> {
    let ops = usize::from(sizes.ops);
    let opts = bench::Options {
        plugin: absolute(&plugin)?,
        reference: reference.as_ref().map(absolute).transpose()?,
        backends: parse_axes(
            backends,
            &[Axis::Nftables, Axis::IptablesNft, Axis::IptablesLegacy],
        )?,
        sections: sizes.sections,
        latency: bench::latency::Sizes {
            sizes: sizes.sizes,
            ops,
        },
        mappings: bench::mappings::Sizes {
            many: sizes.many,
            consecutive: sizes.consecutive,
            ops: usize::from(sizes.mapping_ops),
        },
        dataplane: bench::dataplane::Sizes {
            mappings: sizes.dp_mappings,
            containers: sizes.dp_containers,
            batches: usize::from(sizes.dp_batches),
            conns: usize::from(sizes.dp_conns),
        },
        restore: bench::restore::Sizes {
            sizes: sizes.restore_sizes,
            ops: usize::from(sizes.restore_ops),
            watch_ops: usize::from(sizes.watch_ops),
        },
    };
    let progress = |line: &str| {
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    };
    let started = std::time::Instant::now();
    let report = bench::run(&opts, &progress).map_err(|e| e.to_string())?;
    eprintln!();
    println!("{}", bench_report::tables(&report));
    let targets = bench_report::targets(&report);
    println!("targets:");
    for (met, what) in &targets {
        println!("  {} {what}", if *met { "met   " } else { "MISSED" });
    }
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &out.json {
        let doc = bench_report::json(&report, bench::machine(), ops);
        std::fs::write(path, format!("{doc:#}\n"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let plots = [
        (&out.plot, report.latency.is_empty()),
        (&out.dataplane_plot, report.dataplane.is_empty()),
    ];
    for (i, (path, empty)) in plots.into_iter().enumerate() {
        let Some(path) = path.as_ref().filter(|_| !empty) else {
            continue;
        };
        let drawn = if i == 0 {
            bench_report::plot(&report.latency, path)
        } else {
            bench_report::plot_dataplane(&report.dataplane, path)
        };
        drawn.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let missed = targets.iter().filter(|(met, _)| !met).count();
    Ok(if out.gate && missed > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
