//! The benchmark's outputs: a table per section (latency with
//! ours/upstream ratios here, the others in `sections`), the targets
//! checked against the figures, JSON, and SVG plots (`plot`).

mod plot;
mod sections;

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::bench::{Report, Sample};

pub use self::plot::{plot, plot_dataplane};
pub use self::sections::{
    dataplane_table, mappings_table, restore_table, TARGET_CONSECUTIVE, TARGET_DATAPLANE,
    TARGET_RESTORE_GROWTH, TARGET_UDP_VS_TCP, TARGET_WATCH,
};

/// Our latency must be at most this fraction of upstream's on iptables.
pub const TARGET_VS_UPSTREAM: f64 = 0.5;
/// Our latency at the largest N must be at most this multiple of N = 0.
pub const TARGET_GROWTH: f64 = 1.5;
/// At most one read and one write per family (IPv4, IPv6) per command.
pub const TARGET_SPAWNED: usize = 4;

/// Processes one ADD or DEL may start on `backend`, and why: on nftables
/// the transaction alone (our table is read over netlink), on iptables one
/// read and one write per family.
pub fn spawn_target(backend: &str) -> (usize, &'static str) {
    if backend == "nftables" {
        (1, "the transaction alone")
    } else {
        (TARGET_SPAWNED, "one read and one write per family")
    }
}

fn find<'a>(samples: &'a [Sample], binary: &str, backend: &str, n: usize) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.binary == binary && s.backend == backend && s.n == n)
}

pub(crate) fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "-".into()
    }
}

pub fn table(samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>5}  {:<9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "backend", "N", "binary", "ADD med", "ADD p95", "DEL med", "DEL p95", "execs", "execs"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>5}  {:<9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "", "", "", "ms", "ms", "ms", "ms", "ADD", "DEL"
    );
    for s in samples {
        let _ = writeln!(
            out,
            "{:<16} {:>5}  {:<9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>6}",
            s.backend,
            s.n,
            s.binary,
            s.add.median_ms,
            s.add.p95_ms,
            s.del.median_ms,
            s.del.p95_ms,
            s.add_spawned.len(),
            s.del_spawned.len()
        );
        if s.binary == "upstream" {
            if let Some(o) = find(samples, "ours", &s.backend, s.n) {
                let _ = writeln!(
                    out,
                    "{:<16} {:>5}  {:<9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
                    "",
                    "",
                    "ours/up",
                    ratio(o.add.median_ms, s.add.median_ms),
                    ratio(o.add.p95_ms, s.add.p95_ms),
                    ratio(o.del.median_ms, s.del.median_ms),
                    ratio(o.del.p95_ms, s.del.p95_ms),
                    ratio(o.add_spawned.len() as f64, s.add_spawned.len() as f64),
                    ratio(o.del_spawned.len() as f64, s.del_spawned.len() as f64)
                );
            }
        }
    }
    out
}

/// The two medians (ADD, DEL) of `a` and `b`, side by side.
fn medians(a: &Sample, b: &Sample) -> [(&'static str, f64, f64); 2] {
    [
        ("ADD", a.add.median_ms, b.add.median_ms),
        ("DEL", a.del.median_ms, b.del.median_ms),
    ]
}

/// `a` against `limit` times `b`, and the line saying so.
pub(crate) fn target(limit: f64, a: f64, b: f64, what: String) -> (bool, String) {
    (
        a <= limit * b,
        format!("{what} = {} (target <= {limit}x)", ratio(a, b)),
    )
}

/// Every section's targets as (met, one line saying what was compared).
pub fn targets(report: &Report) -> Vec<(bool, String)> {
    let mut out = latency_targets(&report.latency);
    out.extend(sections::mappings_targets(&report.mappings));
    out.extend(sections::dataplane_targets(&report.dataplane));
    out.extend(sections::restore_targets(&report.restore, &report.watch));
    out
}

/// Every section's table that has rows, each under its title.
pub fn tables(report: &Report) -> String {
    let mut out = String::new();
    let mut section = |title: &str, empty: bool, text: String| {
        if !empty {
            let _ = writeln!(out, "== {title} ==\n{text}");
        }
    };
    section(
        "latency: ADD/DEL with N other containers (ms)",
        report.latency.is_empty(),
        table(&report.latency),
    );
    section(
        "mappings: one container with many mappings (ms; ours only)",
        report.mappings.is_empty(),
        mappings_table(&report.mappings),
    );
    section(
        "data plane: new TCP connection from a client namespace (µs per connection)",
        report.dataplane.is_empty(),
        dataplane_table(&report.dataplane),
    );
    section(
        "restore/watch: passes with nothing missing, ADD/DEL beside `portmap watch` (ms; ours only)",
        report.restore.is_empty() && report.watch.is_empty(),
        restore_table(&report.restore, &report.watch),
    );
    out
}

/// The latency section's targets.
pub fn latency_targets(samples: &[Sample]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let ours: Vec<&Sample> = samples.iter().filter(|s| s.binary == "ours").collect();
    for o in ours.iter().filter(|o| o.backend.starts_with("iptables")) {
        if let Some(u) = find(samples, "upstream", &o.backend, o.n) {
            for (op, a, b) in medians(o, u) {
                let what = format!(
                    "{} N={} {op}: ours {a:.1} ms vs upstream {b:.1} ms",
                    o.backend, o.n
                );
                out.push(target(TARGET_VS_UPSTREAM, a, b, what));
            }
        }
    }
    let mut backends: Vec<&str> = ours.iter().map(|s| s.backend.as_str()).collect();
    backends.dedup();
    for backend in backends {
        let rows: Vec<&&Sample> = ours.iter().filter(|s| s.backend == backend).collect();
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            continue;
        };
        if first.n == last.n {
            continue;
        }
        for (op, a, b) in medians(last, first) {
            let what = format!(
                "{backend} {op}: ours at N={} {a:.1} ms vs N={} {b:.1} ms",
                last.n, first.n
            );
            out.push(target(TARGET_GROWTH, a, b, what));
        }
    }
    for o in &ours {
        let (most, why) = spawn_target(&o.backend);
        for (op, spawned) in [("ADD", &o.add_spawned), ("DEL", &o.del_spawned)] {
            out.push((
                spawned.len() <= most,
                format!(
                    "{} N={} {op}: ours started {} processes [{}] (target <= {most}: {why})",
                    o.backend,
                    o.n,
                    spawned.len(),
                    spawned.join(" ")
                ),
            ));
        }
    }
    out
}

pub fn json(report: &Report, machine: Value, ops: usize) -> Value {
    let rows: Vec<Value> = report
        .latency
        .iter()
        .map(|s| {
            json!({
                "binary": s.binary, "backend": s.backend, "n": s.n,
                "add": {"median_ms": s.add.median_ms, "p95_ms": s.add.p95_ms, "spawned": s.add_spawned},
                "del": {"median_ms": s.del.median_ms, "p95_ms": s.del.p95_ms, "spawned": s.del_spawned},
            })
        })
        .collect();
    let targets: Vec<Value> = targets(report)
        .into_iter()
        .map(|(met, what)| json!({"met": met, "what": what}))
        .collect();
    json!({
        "machine": machine, "ops_per_cell": ops, "results": rows,
        "mappings": sections::mappings_json(&report.mappings),
        "dataplane": sections::dataplane_json(&report.dataplane),
        "restore": sections::restore_json(&report.restore, &report.watch),
        "targets": targets,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::Stats;

    fn sample(binary: &str, n: usize, add: f64, del: f64, spawned: usize) -> Sample {
        Sample {
            binary: binary.into(),
            backend: "iptables-nft".into(),
            n,
            add: Stats {
                median_ms: add,
                p95_ms: add,
            },
            del: Stats {
                median_ms: del,
                p95_ms: del,
            },
            add_spawned: vec!["iptables-save".into(); spawned],
            del_spawned: vec!["iptables-save".into(); spawned],
        }
    }

    /// Ours and upstream at N = 0 and 1000; ours' DEL misses both targets.
    pub(super) fn samples() -> [Sample; 4] {
        [
            sample("ours", 0, 10.0, 10.0, 2),
            sample("upstream", 0, 40.0, 15.0, 20),
            sample("ours", 1000, 14.0, 20.0, 5),
            sample("upstream", 1000, 80.0, 60.0, 20),
        ]
    }

    #[test]
    fn targets_compare_ratios_growth_and_process_counts() {
        let samples = samples();
        let t = latency_targets(&samples);
        let met = |needle: &str| {
            t.iter()
                .find(|(_, w)| w.contains(needle))
                .map(|(m, _)| *m)
                .unwrap_or_else(|| panic!("no target line with {needle:?} in {t:?}"))
        };
        assert!(met("N=0 ADD: ours 10.0 ms vs upstream 40.0"));
        assert!(!met("N=0 DEL: ours 10.0 ms vs upstream 15.0"));
        assert!(met("ADD: ours at N=1000 14.0 ms vs N=0 10.0"));
        assert!(!met("DEL: ours at N=1000 20.0 ms vs N=0 10.0"));
        assert!(met("N=0 ADD: ours started 2"));
        assert!(!met("N=1000 DEL: ours started 5"));
        let mut nft = sample("ours", 0, 10.0, 10.0, 1);
        nft.backend = "nftables".into();
        let mut nft_two = sample("ours", 1000, 10.0, 10.0, 2);
        nft_two.backend = "nftables".into();
        let t = latency_targets(&[nft, nft_two]);
        let line = |n: &str| t.iter().find(|(_, w)| w.starts_with(n)).cloned();
        assert!(
            line("nftables N=0 ADD").is_some_and(|(m, w)| m && w.contains("the transaction alone"))
        );
        assert!(
            line("nftables N=1000 ADD").is_some_and(|(m, _)| !m),
            "two processes miss it"
        );
        assert!(table(&samples).contains("0.25x"));
    }
}
