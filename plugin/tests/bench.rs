//! The benchmark harness on a small scale: every cell of every section
//! measured, process counts observed with strace, reports written.
//! Figures are reported by `scripts/bench.sh`, never asserted here.

use std::path::PathBuf;

use portmap_conformance::bench::dataplane::{State, Target};
use portmap_conformance::bench::{self, dataplane, latency, mappings, restore, Options, Section};
use portmap_conformance::bench_report::{self, TARGET_SPAWNED};
use portmap_conformance::netns::prerequisites;
use portmap_conformance::scenarios::Axis;

mod common;
use common::{ours, upstream_available, UPSTREAM};

#[test]
fn small_bench_measures_every_cell_and_counts_processes() {
    let tools = ["nft", "iptables-nft-save", "iptables-legacy-save", "strace"];
    if !prerequisites(&tools) || !upstream_available() {
        return;
    }
    let opts = Options {
        plugin: ours(),
        reference: Some(PathBuf::from(UPSTREAM)),
        backends: vec![Axis::Nftables, Axis::IptablesNft, Axis::IptablesLegacy],
        sections: Section::ALL.to_vec(),
        latency: latency::Sizes {
            sizes: vec![3, 0],
            ops: 3,
        },
        mappings: mappings::Sizes {
            many: 20,
            consecutive: 50,
            ops: 2,
        },
        dataplane: dataplane::Sizes {
            mappings: 50,
            containers: 4,
            batches: 3,
            conns: 20,
        },
        restore: restore::Sizes {
            sizes: vec![2, 4],
            ops: 2,
            watch_ops: 2,
        },
    };
    let report = bench::run(&opts, &|_| {}).expect("bench runs");
    other_sections(&report);
    let samples = report.latency.clone();
    let cells: Vec<(&str, &str, usize)> = samples
        .iter()
        .map(|s| (s.binary.as_str(), s.backend.as_str(), s.n))
        .collect();
    // Upstream v1.1.1 has no nftables backend: measured on iptables only.
    assert_eq!(
        cells,
        [
            ("ours", "nftables", 0),
            ("ours", "nftables", 3),
            ("ours", "iptables-nft", 0),
            ("upstream", "iptables-nft", 0),
            ("ours", "iptables-nft", 3),
            ("upstream", "iptables-nft", 3),
            ("ours", "iptables-legacy", 0),
            ("upstream", "iptables-legacy", 0),
            ("ours", "iptables-legacy", 3),
            ("upstream", "iptables-legacy", 3),
        ]
    );
    for s in &samples {
        assert!(
            s.add.median_ms > 0.0 && s.add.p95_ms >= s.add.median_ms,
            "{s:?}"
        );
        assert!(
            s.del.median_ms > 0.0 && s.del.p95_ms >= s.del.median_ms,
            "{s:?}"
        );
        if s.binary == "ours" {
            // Every process ours starts is a firewall tool, and few of them.
            let (most, _) = bench_report::spawn_target(&s.backend);
            for spawned in [&s.add_spawned, &s.del_spawned] {
                assert!(
                    !spawned.is_empty() && spawned.len() <= most,
                    "{} N={}: {spawned:?}",
                    s.backend,
                    s.n
                );
                assert!(
                    spawned.iter().all(|p| p == "nft"
                        || p.starts_with("iptables")
                        || p.starts_with("ip6tables")),
                    "{spawned:?}"
                );
            }
        } else {
            // Upstream runs one iptables process per rule operation.
            assert!(s.add_spawned.len() > TARGET_SPAWNED, "{s:?}");
        }
    }
    let doc = bench_report::json(&report, bench::machine(), 3);
    assert_eq!(doc["results"].as_array().map(Vec::len), Some(samples.len()));
    assert_eq!(doc["mappings"].as_array().map(Vec::len), Some(12));
    assert_eq!(doc["dataplane"].as_array().map(Vec::len), Some(24));
    assert_eq!(doc["restore"]["passes"].as_array().map(Vec::len), Some(6));
    assert_eq!(doc["restore"]["watch"].as_array().map(Vec::len), Some(3));
    // Per backend: 1 + 2 + 2 + 2 mapping lines, 6 data plane (three
    // states beside the empty one, the maps or tree layout's among them),
    // 1 + 2 restore/watch; nftables the reinstall after a flush.
    let targets = doc["targets"].as_array().map_or(0, Vec::len);
    let latency_targets = bench_report::latency_targets(&samples).len();
    assert_eq!(targets, latency_targets + 3 * (7 + 6 + 3) + 1, "{doc:#}");
    let tables = bench_report::tables(&report);
    for title in [
        "== latency",
        "== mappings",
        "== data plane",
        "== restore/watch",
    ] {
        assert!(tables.contains(title), "{title} missing:\n{tables}");
    }
    assert!(tables.contains("ours/up"), "{tables}");
}

fn finite(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// The mappings, data plane and restore/watch rows: every cell there,
/// figures positive and finite, processes observed.
fn other_sections(report: &bench::Report) {
    let backends = ["nftables", "iptables-nft", "iptables-legacy"];
    assert_eq!(report.mappings.len(), 12, "{:?}", report.mappings);
    for (r, backend) in report
        .mappings
        .iter()
        .zip(backends.iter().flat_map(|b| [b; 4]))
    {
        assert_eq!(r.backend, *backend);
        assert!(finite(r.add.median_ms) && finite(r.del.median_ms), "{r:?}");
        assert!(r.add.p95_ms >= r.add.median_ms, "{r:?}");
        assert!(
            !r.add_spawned.is_empty() && !r.del_spawned.is_empty(),
            "{r:?}"
        );
        let want = match r.shape {
            mappings::Shape::One => 1,
            mappings::Shape::Tcp | mappings::Shape::Udp => 20,
            mappings::Shape::Consecutive => 50,
        };
        assert_eq!(r.mappings, want, "{r:?}");
    }
    // Every backend has its indexed layout's row (maps, tree).
    assert_eq!(report.dataplane.len(), 24);
    for backend in backends {
        for state in State::ALL {
            for target in [Target::Unpublished, Target::Published] {
                let r = report
                    .dataplane
                    .iter()
                    .find(|r| r.backend == backend && r.state == state && r.target == target)
                    .unwrap_or_else(|| panic!("{backend} {state:?} {target:?} missing"));
                assert!(finite(r.median_us) && r.p95_us >= r.median_us, "{r:?}");
                // Connections take longer than nothing and less than the timeout.
                assert!(r.median_us < 3e6, "{r:?}");
                let installed = match state {
                    State::Empty => 0,
                    State::Mappings => 50,
                    State::Containers | State::IndexedContainers => 4,
                };
                assert_eq!((r.installed, r.batches, r.conns), (installed, 3, 20));
            }
        }
    }
    let passes: Vec<(&str, usize, Option<usize>)> = report
        .restore
        .iter()
        .map(|r| (r.backend.as_str(), r.n, r.in_place))
        .collect();
    let want: Vec<(&str, usize, Option<usize>)> = backends
        .iter()
        .flat_map(|b| [(*b, 2, Some(2)), (*b, 4, Some(4))])
        .collect();
    assert_eq!(passes, want, "restore passes (N, in place as printed)");
    for r in &report.restore {
        assert!(finite(r.pass.median_ms) && r.runs >= 1, "{r:?}");
    }
    assert_eq!(report.watch.len(), 3);
    for w in &report.watch {
        assert_eq!(w.n, 4);
        for s in [&w.quiet_add, &w.quiet_del, &w.watch_add, &w.watch_del] {
            assert!(finite(s.median_ms), "{w:?}");
        }
    }
}
