//! The watch soak: one ADD and one DEL of a container with a mapping per
//! second beside `portmap watch`, in the test's own namespaces. Watch's
//! CPU (utime+stime from /proc/PID/stat) must stay under 5% of one core
//! and its RSS (VmRSS) flat; our own commands start no pass; and watch
//! still restores at the end. Measured after a warm-up (13 s: an event
//! pass that reinstalls, timer ticks at 1 s, the 12th tick's full pass);
//! 30 s in the suite, `scripts/soak.sh [minutes]` the full form
//! (PORTMAP_SOAK_SECS, default 10 min).

mod common;
mod watch_support;

use std::time::{Duration, Instant};

use common::{config, ours, tcp_8080};
use portmap_conformance::traffic::EchoServer;
use watch_support::{back_after, clock_ticks, flush_ours, rig_for, synthetic, usage, Watch};

/// Most CPU watch may use, in percent of one core.
const MAX_CPU_PERCENT: f64 = 5.0;
/// Most its RSS may grow from the first sample to the last.
const MAX_RSS_GROWTH_KB: u64 = 1024;

#[test]
fn watch_soak() {
    let secs: u64 = std::env::var("PORTMAP_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let Some((rig, key)) = rig_for("nftables") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg_a = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg_a);
    let watch = Watch::start(&rig, 1);
    let started = Instant::now();
    let pid = watch.pid();
    // Warm up every path once (an event pass that reinstalls, timer
    // ticks, the 12th tick's pass over everything), then measure.
    flush_ours(&rig, "nftables");
    assert!(
        back_after(&rig, 8080, "a", Duration::from_secs(4)).is_some(),
        "{}",
        watch.said()
    );
    std::thread::sleep(Duration::from_secs(13).saturating_sub(started.elapsed()));
    let warm = watch.passes().len();
    let (cpu0, rss0) = usage(pid);
    let start = Instant::now();
    let mut rss_max = rss0;
    let mut rounds = 0u64;
    let mut series = vec![rss0];
    while start.elapsed() < Duration::from_secs(secs) {
        let round = Instant::now();
        let (id, cfg) = synthetic(&a, key, (rounds % 50) as u32);
        rig.must(&ours(), "ADD", &id, Some(&a), &cfg);
        rig.must(&ours(), "DEL", &id, Some(&a), &cfg);
        rounds += 1;
        let rss = usage(pid).1;
        rss_max = rss_max.max(rss);
        if rounds.is_multiple_of(10) {
            series.push(rss);
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let elapsed = start.elapsed();
    let (cpu1, rss1) = usage(pid);
    let cpu_secs = (cpu1 - cpu0) as f64 / clock_ticks() as f64;
    let percent = 100.0 * cpu_secs / elapsed.as_secs_f64();
    let passes = watch.passes().split_off(warm);
    eprintln!(
        "soak: {rounds} ADD+DEL in {elapsed:?}; watch CPU {cpu_secs:.2} s = {percent:.2}% of a core; \
         RSS {rss0} kB -> {rss1} kB (max {rss_max}; every 10 s: {series:?}); {} pass(es)",
        passes.len()
    );
    assert!(rounds as f64 >= 0.8 * secs as f64, "{rounds} rounds");
    assert!(percent < MAX_CPU_PERCENT, "{percent:.2}%");
    assert!(
        rss_max <= rss0 + MAX_RSS_GROWTH_KB,
        "RSS {rss0} kB grew to {rss_max} kB"
    );
    assert!(passes.is_empty(), "our own commands: {passes:?}");
    // Still watching.
    flush_ours(&rig, "nftables");
    let back = back_after(&rig, 8080, "a", Duration::from_secs(4));
    let said = watch.stop();
    assert!(back.is_some(), "watch no longer restores: {said}");
}
