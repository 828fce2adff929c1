//! Restore passes and `portmap watch` at scale, observed from outside: a
//! pass with nothing missing reads each backend once (tool calls counted);
//! a pass leaves the plugin lock free while it reads (an ADD completes
//! meanwhile); watch ignores removals outside our tables and our own
//! ADD/DEL (its pass lines counted), restores within a second while
//! another table churns, and brings iptables-nft mappings back by event.

mod common;
mod watch_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{config, delete_map_element, ours, tcp_8080};
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use watch_support::{
    back_after, cli, count_calls, flush_ours, rig_for, spawn_restore, synthetic, wrap, Watch,
    READ_TOOLS,
};

/// Four containers, everything in place: the pass starts one read per
/// family (and, for iptables, one of the guard's mangle table), not one
/// per container, and writes nothing; on nftables it starts no process
/// at all (the table is read and proven whole over netlink, decode.rs),
/// on iptables-nft only the guard's (nat over netlink, iptables/netlink.rs).
#[rstest]
fn a_pass_with_nothing_missing_reads_each_backend_once(
    #[values("nftables", "nft", "legacy")] backend: &str,
) {
    let Some((rig, key)) = rig_for(backend) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    for i in 0..4 {
        let (id, cfg) = synthetic(&a, key, i);
        // Both families: IPv6 too, so each family is read.
        let mut cfg = cfg;
        let v6 = a.prev_result(false, true)["ips"][0].clone();
        cfg["prevResult"]["ips"]
            .as_array_mut()
            .expect("ips")
            .push(v6);
        rig.must(&ours(), "ADD", &id, Some(&a), &cfg);
    }
    let calls = count_calls(&rig, &READ_TOOLS);
    let pass = cli(&rig, &["restore"]);
    assert_eq!(pass.exit, Some(0), "{}", pass.summary());
    assert!(
        pass.stdout
            .contains("reinstalled 0 container(s), 4 in place"),
        "{}",
        pass.summary()
    );
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("{backend}: {lines:?}");
    // nftables: nothing (rules, guard and elements over netlink);
    // iptables-nft: the guard's `-t mangle -S` (nat tables over netlink);
    // legacy: each family's nat table and IPv4 mangle.
    let expected = match backend {
        "nftables" => 0,
        "nft" => 1,
        _ => 3,
    };
    assert_eq!(lines.len(), expected, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("-f") && !l.contains("restore")),
        "{lines:?}"
    );
}

/// A pass whose reads take seconds (the nft wrapper sleeps 2 s on each
/// list) holds no lock meanwhile: an ADD started during it completes
/// long before the pass does.
#[test]
fn a_pass_reads_without_the_lock() {
    let Some((rig, key)) = rig_for("nftables") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    // With conditions the pass cannot prove the rules over netlink and
    // lists the table with nft (the netlink read of the others is too
    // quick to hold anyone up).
    for i in 0..3 {
        let (id, mut cfg) = synthetic(&a, key, i);
        cfg["conditionsV4"] = serde_json::json!(["ip saddr 10.0.0.0/8"]);
        rig.must(&ours(), "ADD", &id, Some(&a), &cfg);
    }
    // ADD reads over netlink and writes with `nft -f`: only lists sleep (PATH holds only the tools: sleep by its path).
    wrap(&rig, &["nft"], "case \"$*\" in *list*) /bin/sleep 2;; esac");
    let started = Instant::now();
    let mut restore = spawn_restore(&rig);
    std::thread::sleep(Duration::from_millis(500));
    let (id, cfg) = synthetic(&a, key, 10);
    let add = rig.must(&ours(), "ADD", &id, Some(&a), &cfg);
    let add_done = started.elapsed();
    let running = restore.try_wait().expect("wait").is_none();
    let out = restore.wait_with_output().expect("restore");
    let pass_took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "ADD {:?} (done at {add_done:?}), pass {pass_took:?}",
        add.elapsed
    );
    assert!(out.status.success(), "{said}");
    assert!(
        running,
        "the ADD waited for the pass ({add_done:?}, pass {pass_took:?})"
    );
    assert!(add.elapsed < Duration::from_secs(1), "{:?}", add.elapsed);
    assert!(said.contains("reinstalled 0 container(s)"), "{said}");
    rig.must(&ours(), "CHECK", &id, Some(&a), &cfg);
}

/// A pass reinstalling chunk after chunk (nftables: 100 containers per
/// transaction, each write slowed to 500 ms) takes the lock per chunk and
/// lets waiters in between: a runtime's ADD and DEL meanwhile wait for
/// one chunk's write, not for the pass.
#[test]
fn a_long_pass_lets_add_and_del_in_between() {
    let Some((rig, key)) = rig_for("nftables") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    const N: u32 = 401; // five chunks
    for i in 0..N {
        let (id, cfg) = synthetic(&a, key, i);
        rig.must(&ours(), "ADD", &id, Some(&a), &cfg);
    }
    flush_ours(&rig, "nftables");
    wrap(&rig, &["nft"], "case \"$*\" in *-f*) /bin/sleep 0.5;; esac");
    let mut restore = spawn_restore(&rig);
    std::thread::sleep(Duration::from_millis(700));
    let (id, cfg) = synthetic(&a, key, 1000);
    let add = rig.must(&ours(), "ADD", &id, Some(&a), &cfg).elapsed;
    let del = rig.must(&ours(), "DEL", &id, Some(&a), &cfg).elapsed;
    let running = restore.try_wait().expect("wait").is_none();
    let out = restore.wait_with_output().expect("restore");
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("during the pass: ADD {add:?}, DEL {del:?}");
    assert!(out.status.success(), "{said}");
    assert!(running, "the pass ended first: {said}");
    assert!(
        said.contains(&format!("reinstalled {N} container(s)")),
        "{said}"
    );
    // Our own write (500 ms slowed) plus one chunk of the pass's at most.
    for took in [add, del] {
        assert!(took < Duration::from_millis(2000), "{add:?} {del:?}");
    }
}

/// Churn outside our rules (another nft table; for iptables-nft also
/// another rule in nat PREROUTING) and our own ADD/DEL start no pass; a
/// removal of ours by somebody else starts exactly one.
#[rstest]
fn watch_ignores_other_tables_and_our_own_commands(#[values("nftables", "nft")] backend: &str) {
    let Some((rig, key)) = rig_for(backend) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg_a = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg_a);
    let host = &rig.topo.host;
    host.exec("nft", &["add", "table", "ip", "pmt_other"])
        .expect("table");
    host.exec("nft", &["add", "chain", "ip", "pmt_other", "c"])
        .expect("chain");
    let watch = Watch::start(&rig, 3600);
    for _ in 0..20 {
        host.exec("nft", &["add", "rule", "ip", "pmt_other", "c", "accept"])
            .expect("rule");
        host.exec("nft", &["flush", "chain", "ip", "pmt_other", "c"])
            .expect("flush");
        if backend == "nft" {
            let rule = ["-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "ACCEPT"];
            host.exec("iptables-nft", &rule).expect("add");
            let rule = ["-t", "nat", "-D", "PREROUTING", "-p", "udp", "-j", "ACCEPT"];
            host.exec("iptables-nft", &rule).expect("delete");
        }
    }
    for i in 0..5 {
        let (id, cfg) = synthetic(&a, key, i);
        rig.must(&ours(), "ADD", &id, Some(&a), &cfg);
        rig.must(&ours(), "DEL", &id, Some(&a), &cfg);
    }
    // Longer than the debounce cap: any pass would have run by now.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(watch.passes(), Vec::<String>::new(), "{}", watch.said());

    flush_ours(&rig, backend);
    let back = back_after(&rig, 8080, "a", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500));
    let said = watch.stop();
    let passes: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("portmap watch: pass ("))
        .collect();
    eprintln!("{backend}: back after {back:?}; {passes:?}");
    assert!(back.is_some(), "not restored: {said}");
    assert_eq!(passes.len(), 1, "{said}");
    let by = if backend == "nftables" {
        "nftables removal by nft"
    } else {
        "iptables-nft removal by iptables-nft"
    };
    assert!(
        passes[0].contains(by) && passes[0].contains("1 reinstalled"),
        "{said}"
    );
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg_a);
}

/// Steady churn: another table changing every 50 ms (ignored), and a
/// chain of our ip6 table made and removed by somebody else each round,
/// so the debounce never settles; the cap still runs the pass within a
/// second of our ip table's removal.
#[test]
fn watch_restores_within_a_second_under_churn() {
    let Some((rig, key)) = rig_for("nftables") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let host = &rig.topo.host;
    host.exec("nft", &["add", "table", "ip", "pmt_other"])
        .expect("table");
    host.exec("nft", &["add", "chain", "ip", "pmt_other", "c"])
        .expect("chain");
    let watch = Watch::start(&rig, 3600);
    let done = AtomicBool::new(false);
    let back = std::thread::scope(|s| {
        s.spawn(|| {
            // Bounded: 400 rounds of 50 ms at most.
            for _ in 0..400 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let _ = host.exec("nft", &["add", "rule", "ip", "pmt_other", "c", "accept"]);
                let _ = host.exec("nft", &["flush", "chain", "ip", "pmt_other", "c"]);
                let _ = host.exec("nft", &["add", "chain", "ip6", "cni_hostport", "pmt_churn"]);
                let _ = host.exec(
                    "nft",
                    &["delete", "chain", "ip6", "cni_hostport", "pmt_churn"],
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        flush_ours(&rig, "nftables");
        let back = back_after(&rig, 8080, "a", Duration::from_secs(4));
        done.store(true, Ordering::SeqCst);
        back
    });
    let said = watch.stop();
    eprintln!("restored {back:?} after the removal, under churn");
    let back = back.unwrap_or_else(|| panic!("not restored: {said}"));
    // The 1 s cap, the pass itself, and the 20 ms probe interval.
    assert!(back < Duration::from_millis(1500), "{back:?}: {said}");
    assert!(said.contains("reinstalled ctr-a in nftables"), "{said}");
    // The churn in our ip6 table did start passes, capped: never more
    // than about one a second (the pass of the removal among them).
    let passes = said.matches("portmap watch: pass (").count();
    assert!((1..=4).contains(&passes), "{passes} passes: {said}");
}

/// iptables-nft keeps its rules in nf_tables: with the timer an hour
/// away, a flush of the nat table still comes back by notification.
#[test]
fn iptables_nft_mappings_come_back_by_event() {
    let Some((rig, key)) = rig_for("nft") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let watch = Watch::start(&rig, 3600);
    flush_ours(&rig, "nft");
    let back = back_after(&rig, 8080, "a", Duration::from_secs(4));
    let said = watch.stop();
    eprintln!("iptables-nft: restored {back:?} after the flush");
    let back = back.unwrap_or_else(|| panic!("not restored: {said}"));
    assert!(back < Duration::from_millis(1500), "{back:?}: {said}");
    assert!(said.contains("reinstalled ctr-a in iptables-nft"), "{said}");
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
}

/// The nftables maps layout: a map element deleted behind our back comes
/// back by notification (DELSETELEM), the timer an hour away.
#[test]
fn a_deleted_map_element_comes_back_by_event() {
    let Some((rig, key)) = rig_for("nftables") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let mut cfg = config(&a, Some(key), tcp_8080());
    cfg["nftablesLayout"] = serde_json::json!("maps");
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let watch = Watch::start(&rig, 3600);
    delete_map_element(&rig, "tcp . 8080");
    let back = back_after(&rig, 8080, "a", Duration::from_secs(4));
    let said = watch.stop();
    let back = back.unwrap_or_else(|| panic!("not restored: {said}"));
    assert!(back < Duration::from_millis(1500), "{back:?}: {said}");
    assert!(said.contains("reinstalled ctr-a in nftables"), "{said}");
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
}
