//! The benchmark harness on a small scale: every cell measured, process
//! counts observed with strace, reports written. Latency is reported by
//! `scripts/bench.sh`, never asserted here.

use std::path::PathBuf;

use portmap_conformance::bench::{self, Options};
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
        sizes: vec![3, 0],
        ops: 3,
    };
    let samples = bench::run(&opts, &|_| {}).expect("bench runs");
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
    let doc = bench_report::json(&samples, bench::machine(), 3);
    assert_eq!(doc["results"].as_array().map(Vec::len), Some(samples.len()));
    assert!(doc["targets"].as_array().is_some_and(|t| !t.is_empty()));
    let table = bench_report::table(&samples);
    assert!(table.contains("ours/up"), "{table}");
}
