//! Tables, targets and JSON of the mappings, data plane and
//! restore/watch sections.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{ratio, spawn_target, target};
use crate::bench::dataplane::State;
use crate::bench::mappings::Shape;
use crate::bench::{DataplaneRow, MappingRow, Reinstall, RestoreRow, WatchRow};

/// ADD+DEL of the many-UDP container at most this multiple of the TCP one.
pub const TARGET_UDP_VS_TCP: f64 = 2.0;
/// ADD and DEL of the consecutive container against a one-mapping ADD.
pub const TARGET_CONSECUTIVE: f64 = 20.0;
/// A new connection with many rules installed against the empty host.
pub const TARGET_DATAPLANE: f64 = 1.25;
/// A restore pass at the second N against the first (200 against 20).
pub const TARGET_RESTORE_GROWTH: f64 = 3.0;
/// nftables: all 1,000 containers back within this after a flush.
pub const TARGET_REINSTALL_S: f64 = 10.0;
/// ADD and DEL beside `portmap watch` against the quiet host.
pub const TARGET_WATCH: f64 = 3.0;

fn conntrack(spawned: &[String]) -> usize {
    spawned.iter().filter(|p| *p == "conntrack").count()
}

pub fn mappings_table(rows: &[MappingRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "backend",
        "container",
        "mappings",
        "ADD med",
        "ADD p95",
        "DEL med",
        "DEL p95",
        "execs",
        "execs"
    );
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "", "", "", "ms", "ms", "ms", "ms", "ADD", "DEL"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>6}",
            r.backend,
            r.shape.name(),
            r.mappings,
            r.add.median_ms,
            r.add.p95_ms,
            r.del.median_ms,
            r.del.p95_ms,
            r.add_spawned.len(),
            r.del_spawned.len()
        );
    }
    out.push_str(
        "upstream: not run here (Debian's v1.1.1 takes about 130 s for one iptables ADD of 1,000 mappings)\n",
    );
    out
}

pub fn mappings_targets(rows: &[MappingRow]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut backends: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
    backends.dedup();
    for backend in backends {
        let get = |shape| {
            rows.iter()
                .find(|r| r.backend == backend && r.shape == shape)
        };
        if let (Some(u), Some(t)) = (get(Shape::Udp), get(Shape::Tcp)) {
            let (a, b) = (
                u.add.median_ms + u.del.median_ms,
                t.add.median_ms + t.del.median_ms,
            );
            let what = format!(
                "{backend} {} mappings ADD+DEL: udp {a:.1} ms vs tcp {b:.1} ms",
                u.mappings
            );
            out.push(target(TARGET_UDP_VS_TCP, a, b, what));
            for (op, spawned, tcp) in [
                ("ADD", &u.add_spawned, &t.add_spawned),
                ("DEL", &u.del_spawned, &t.del_spawned),
            ] {
                out.push((
                    conntrack(spawned) == 0 && spawned.len() <= tcp.len(),
                    format!(
                        "{backend} {} udp mappings {op}: {} conntrack processes, {} processes in all vs tcp's {} (target: none, no more than tcp: ctnetlink)",
                        u.mappings,
                        conntrack(spawned),
                        spawned.len(),
                        tcp.len()
                    ),
                ));
            }
            let (most, why) = spawn_target(backend);
            for (op, spawned) in [("ADD", &u.add_spawned), ("DEL", &u.del_spawned)] {
                out.push((
                    spawned.len() <= most,
                    format!(
                        "{backend} {} udp mappings {op}: ours started {} processes [{}] (target <= {most}: {why})",
                        u.mappings,
                        spawned.len(),
                        spawned.join(" ")
                    ),
                ));
            }
        }
        if let (Some(c), Some(one)) = (get(Shape::Consecutive), get(Shape::One)) {
            for (op, a) in [("ADD", c.add.median_ms), ("DEL", c.del.median_ms)] {
                let b = one.add.median_ms;
                let what = format!(
                    "{backend} {} consecutive mappings {op} {a:.1} ms vs 1-mapping ADD {b:.1} ms",
                    c.mappings
                );
                out.push(target(TARGET_CONSECUTIVE, a, b, what));
            }
        }
    }
    out
}

pub fn mappings_json(rows: &[MappingRow]) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "backend": r.backend, "container": r.shape.name(), "mappings": r.mappings,
                "add": {"median_ms": r.add.median_ms, "p95_ms": r.add.p95_ms, "spawned": r.add_spawned},
                "del": {"median_ms": r.del.median_ms, "p95_ms": r.del.p95_ms, "spawned": r.del_spawned},
            })
        })
        .collect()
}

fn empty_of<'a>(rows: &'a [DataplaneRow], r: &DataplaneRow) -> Option<&'a DataplaneRow> {
    rows.iter()
        .find(|e| e.backend == r.backend && e.target == r.target && e.state == State::Empty)
}

fn state_label(r: &DataplaneRow) -> String {
    match r.state {
        State::Empty => "empty".to_string(),
        State::Mappings => format!("{} mappings", r.installed),
        State::Containers => format!("{} containers", r.installed),
        State::IndexedContainers => format!(
            "{} ctrs ({})",
            r.installed,
            crate::bench::dataplane::indexed_layout(&r.backend).1
        ),
    }
}

pub fn dataplane_table(rows: &[DataplaneRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<12} {:>9} {:>9} {:>9}",
        "backend", "host state", "port", "med µs", "p95 µs", "vs empty"
    );
    for r in rows {
        let vs = empty_of(rows, r).map_or("-".to_string(), |e| ratio(r.median_us, e.median_us));
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<12} {:>9.1} {:>9.1} {:>9}",
            r.backend,
            state_label(r),
            r.target.name(),
            r.median_us,
            r.p95_us,
            vs
        );
    }
    if let Some(r) = rows.first() {
        let _ = writeln!(
            out,
            "({} batches of {} connect+close per cell, rounds interleaving the states; empty = the probe's one mapping only)",
            r.batches, r.conns
        );
    }
    out
}

pub fn dataplane_targets(rows: &[DataplaneRow]) -> Vec<(bool, String)> {
    rows.iter()
        .filter(|r| r.state != State::Empty)
        .filter_map(|r| {
            let e = empty_of(rows, r)?;
            let what = format!(
                "{} {} port with {}: {:.1} µs vs empty {:.1} µs",
                r.backend,
                r.target.name(),
                state_label(r),
                r.median_us,
                e.median_us
            );
            Some(target(TARGET_DATAPLANE, r.median_us, e.median_us, what))
        })
        .collect()
}

pub fn dataplane_json(rows: &[DataplaneRow]) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "backend": r.backend, "state": r.state.name(), "installed": r.installed,
                "port": r.target.name(), "median_us": r.median_us, "p95_us": r.p95_us,
                "batches": r.batches, "conns": r.conns,
            })
        })
        .collect()
}

pub fn restore_table(restore: &[RestoreRow], watch: &[WatchRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>5}  {:>12} {:>9} {:>5} {:>9} {:>9}",
        "backend", "N", "restore med", "p95", "runs", "in place", "vs first"
    );
    for r in restore {
        let first = restore.iter().find(|f| f.backend == r.backend);
        let vs = first.map_or("-".to_string(), |f| {
            ratio(r.pass.median_ms, f.pass.median_ms)
        });
        let _ = writeln!(
            out,
            "{:<16} {:>5}  {:>12.1} {:>9.1} {:>5} {:>9} {:>9}",
            r.backend,
            r.n,
            r.pass.median_ms,
            r.pass.p95_ms,
            r.runs,
            r.in_place.map_or("?".to_string(), |k| k.to_string()),
            vs
        );
        if let Some(limit) = r.over {
            let _ = writeln!(
                out,
                "{:<16} {:>5}  a pass took > {} s: stopped (not among the runs)",
                r.backend,
                r.n,
                limit.as_secs()
            );
        }
    }
    let flushed: Vec<(&RestoreRow, &Reinstall)> = restore
        .iter()
        .filter_map(|r| r.reinstall.as_ref().map(|x| (r, x)))
        .collect();
    if !flushed.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<16} {:>5}  {:>17}",
            "backend", "N", "after a flush (s)"
        );
        for (r, x) in flushed {
            let took = x.elapsed.map_or_else(
                || format!("> {} (stopped)", x.limit.as_secs()),
                |d| format!("{:.2}", d.as_secs_f64()),
            );
            let _ = writeln!(out, "{:<16} {:>5}  {took:>17}", r.backend, r.n);
        }
    }
    if !watch.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<16} {:>5}  {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
            "backend", "N", "ADD quiet", "ADD watch", "ratio", "DEL quiet", "DEL watch", "ratio"
        );
        for w in watch {
            let _ = writeln!(
                out,
                "{:<16} {:>5}  {:>10.1} {:>10.1} {:>7} {:>10.1} {:>10.1} {:>7}",
                w.backend,
                w.n,
                w.quiet_add.median_ms,
                w.watch_add.median_ms,
                ratio(w.watch_add.median_ms, w.quiet_add.median_ms),
                w.quiet_del.median_ms,
                w.watch_del.median_ms,
                ratio(w.watch_del.median_ms, w.quiet_del.median_ms)
            );
        }
    }
    out
}

pub fn restore_targets(restore: &[RestoreRow], watch: &[WatchRow]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut backends: Vec<&str> = restore.iter().map(|r| r.backend.as_str()).collect();
    backends.dedup();
    for backend in backends {
        let rows: Vec<&RestoreRow> = restore.iter().filter(|r| r.backend == backend).collect();
        if let [first, second, ..] = rows.as_slice() {
            if let Some(limit) = second.over.filter(|_| second.runs == 0) {
                out.push((
                    false,
                    format!(
                        "{backend} restore pass, nothing missing: N={} > {} s (stopped) vs N={} {:.1} ms (target <= {TARGET_RESTORE_GROWTH}x)",
                        second.n,
                        limit.as_secs(),
                        first.n,
                        first.pass.median_ms
                    ),
                ));
                continue;
            }
            let (a, b) = (second.pass.median_ms, first.pass.median_ms);
            let what = format!(
                "{backend} restore pass, nothing missing: N={} {a:.1} ms vs N={} {b:.1} ms",
                second.n, first.n
            );
            out.push(target(TARGET_RESTORE_GROWTH, a, b, what));
        }
    }
    // The nftables reinstall of the largest N (1,000 by default): one
    // transaction per chunk of containers, not one table read each.
    let largest = restore
        .iter()
        .filter(|r| r.backend == "nftables" && r.reinstall.is_some())
        .max_by_key(|r| r.n);
    if let Some((r, x)) = largest.and_then(|r| r.reinstall.as_ref().map(|x| (r, x))) {
        let took = x.elapsed.map_or(f64::INFINITY, |d| d.as_secs_f64());
        out.push((
            took <= TARGET_REINSTALL_S,
            format!(
                "nftables restore after a flush of N={}: {} (target <= {TARGET_REINSTALL_S} s)",
                r.n,
                x.elapsed.map_or_else(
                    || format!("> {} s (stopped)", x.limit.as_secs()),
                    |d| format!("{:.2} s", d.as_secs_f64())
                )
            ),
        ));
    }
    for w in watch {
        for (op, a, b) in [
            ("ADD", w.watch_add.median_ms, w.quiet_add.median_ms),
            ("DEL", w.watch_del.median_ms, w.quiet_del.median_ms),
        ] {
            let what = format!(
                "{} N={} {op} beside portmap watch {a:.1} ms vs quiet {b:.1} ms",
                w.backend, w.n
            );
            out.push(target(TARGET_WATCH, a, b, what));
        }
    }
    out
}

pub fn restore_json(restore: &[RestoreRow], watch: &[WatchRow]) -> Value {
    let stats = |s: &crate::bench::Stats| json!({"median_ms": s.median_ms, "p95_ms": s.p95_ms});
    json!({
        "passes": restore.iter().map(|r| json!({
            "backend": r.backend, "n": r.n, "pass": stats(&r.pass), "runs": r.runs,
            "in_place": r.in_place, "stopped_over_s": r.over.map(|d| d.as_secs()),
            "after_flush_s": r.reinstall.as_ref().and_then(|x| x.elapsed).map(|d| d.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "watch": watch.iter().map(|w| json!({
            "backend": w.backend, "n": w.n,
            "quiet": {"add": stats(&w.quiet_add), "del": stats(&w.quiet_del)},
            "watch": {"add": stats(&w.watch_add), "del": stats(&w.watch_del)},
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::dataplane::Target;
    use crate::bench::Stats;

    fn st(ms: f64) -> Stats {
        Stats {
            median_ms: ms,
            p95_ms: ms,
        }
    }

    fn mapping(shape: Shape, mappings: usize, add: f64, del: f64, spawned: &[&str]) -> MappingRow {
        let spawned: Vec<String> = spawned.iter().map(|s| s.to_string()).collect();
        MappingRow {
            backend: "nftables".into(),
            shape,
            mappings,
            add: st(add),
            del: st(del),
            add_spawned: spawned.clone(),
            del_spawned: spawned,
        }
    }

    #[test]
    fn mapping_targets_compare_udp_with_tcp_and_consecutive_with_one() {
        let rows = [
            mapping(Shape::One, 1, 5.0, 10.0, &["nft"]),
            mapping(Shape::Tcp, 1000, 40.0, 20.0, &["nft"]),
            mapping(Shape::Udp, 1000, 100.0, 50.0, &["nft", "conntrack"]),
            mapping(Shape::Consecutive, 5000, 90.0, 120.0, &["nft"]),
        ];
        let t = mappings_targets(&rows);
        let met = |needle: &str| {
            t.iter()
                .find(|(_, w)| w.contains(needle))
                .map(|(m, _)| *m)
                .unwrap_or_else(|| panic!("no {needle:?} in {t:?}"))
        };
        assert!(!met("ADD+DEL: udp 150.0 ms vs tcp 60.0 ms = 2.50x"));
        assert!(!met("udp mappings ADD: 1 conntrack processes"));
        assert!(met(
            "consecutive mappings ADD 90.0 ms vs 1-mapping ADD 5.0 ms = 18.00x"
        ));
        assert!(!met("consecutive mappings DEL 120.0 ms"));
        assert!(mappings_table(&rows).contains("consecutive tcp"));
    }

    #[test]
    fn dataplane_and_restore_targets_are_ratios_to_their_baseline() {
        let row = |state, installed, us| DataplaneRow {
            backend: "iptables-nft".into(),
            state,
            installed,
            target: Target::Published,
            median_us: us,
            p95_us: us,
            batches: 3,
            conns: 10,
        };
        let rows = [
            row(State::Empty, 0, 80.0),
            row(State::Mappings, 5000, 120.0),
            row(State::Containers, 1000, 90.0),
        ];
        let t = dataplane_targets(&rows);
        assert_eq!(t.len(), 2);
        assert!(
            !t[0].0
                && t[0]
                    .1
                    .contains("with 5000 mappings: 120.0 µs vs empty 80.0 µs = 1.50x")
        );
        assert!(t[1].0, "{t:?}");
        assert!(dataplane_table(&rows).contains("1.12x"));
        let pass = |n, ms| RestoreRow {
            backend: "nftables".into(),
            n,
            pass: st(ms),
            runs: 1,
            in_place: Some(n),
            over: None,
            reinstall: None,
        };
        let watch = WatchRow {
            backend: "nftables".into(),
            n: 1000,
            quiet_add: st(5.0),
            quiet_del: st(10.0),
            watch_add: st(20.0),
            watch_del: st(12.0),
        };
        let t = restore_targets(
            &[pass(20, 10.0), pass(200, 25.0), pass(1000, 300.0)],
            &[watch],
        );
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(t[0].0 && t[0].1.contains("N=200 25.0 ms vs N=20 10.0 ms = 2.50x"));
        assert!(!t[1].0 && t[1].1.contains("ADD beside portmap watch"));
        assert!(t[2].0);
        let mut big = pass(1000, 300.0);
        big.reinstall = Some(Reinstall {
            elapsed: Some(std::time::Duration::from_secs(12)),
            limit: std::time::Duration::from_secs(180),
        });
        let rows = [pass(20, 10.0), big];
        let t = restore_targets(&rows, &[]);
        assert!(
            t.iter()
                .any(|(met, w)| !met && w.contains("after a flush of N=1000: 12.00 s")),
            "{t:?}"
        );
        assert!(restore_table(&rows, &[]).contains("12.00"));
    }
}
