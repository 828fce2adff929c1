//! Reliability of the real binary per backend: parallel stress, SIGKILL
//! at random points, and a firewall flushed behind the plugin's back.

use std::io::Write;
use std::process::Stdio;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portmap_conformance::cni::{invoke, state_dir, Call};
use portmap_conformance::netns::Netns;
use portmap_conformance::toolpath::{IptablesVariant, Tools};
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use serde_json::{json, Value};

mod common;
use common::{config, ours, tcp_8080, Rig};

/// Backend key and tools for each backend under test.
fn backend(name: &str) -> (&'static str, Tools) {
    match name {
        "nftables" => ("nftables", Tools::default()),
        "iptables-nft" => ("iptables", Tools::default()),
        "iptables-legacy" => (
            "iptables",
            Tools {
                iptables: Some(IptablesVariant::Legacy),
                ..Tools::default()
            },
        ),
        other => panic!("unknown backend {other}"),
    }
}

/// A config for a container that needs no namespace of its own: the
/// plugin only reads the prevResult's addresses.
fn synthetic(key: &str, ip: &str, host_port: u16) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "stress", "type": "portmap", "backend": key,
        "runtimeConfig": {"portMappings": [
            {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": format!("{ip}/16"), "interface": 0}]}
    })
}

/// 8 workers x 200 operations (ADD of 100 distinct containers, DEL of
/// every other one right after its successor's ADD). At the end the
/// backend holds exactly the 400 survivors: nothing lost, nothing
/// duplicated, nothing left over.
#[rstest]
fn parallel_add_del_stress_leaves_exactly_the_expected_set(
    #[values("nftables", "iptables-nft", "iptables-legacy")] name: &str,
) {
    let _shared = MACHINE.read().unwrap_or_else(|p| p.into_inner());
    let (key, tools) = backend(name);
    let Some(rig) = Rig::new(tools) else { return };
    const WORKERS: u16 = 8;
    const PER_WORKER: u16 = 100;
    let sandbox = Netns::new("sandbox").expect("netns");
    let netns = sandbox.path().display().to_string();
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (rig, netns) = (&rig, &netns);
            s.spawn(move || {
                for k in 0..PER_WORKER {
                    let id = format!("w{w}-c{k}");
                    let cfg = synthetic(key, &format!("10.88.{w}.{}", k + 2), port(w, k));
                    let mut call = Call::new("ADD", &id, None, rig.tools.path(), &cfg);
                    call.netns = netns.clone();
                    let out = invoke(&ours(), &rig.topo.host, &call).expect("run");
                    assert!(out.ok(), "ADD {id}: {}", out.summary());
                    if k % 2 == 1 {
                        let prev = format!("w{w}-c{}", k - 1);
                        let call = Call::new("DEL", &prev, None, rig.tools.path(), &cfg);
                        let out = invoke(&ours(), &rig.topo.host, &call).expect("run");
                        assert!(out.ok(), "DEL {prev}: {}", out.summary());
                    }
                }
            });
        }
    });
    let mut want: Vec<(String, String, u64)> = (0..WORKERS)
        .flat_map(|w| {
            (1..PER_WORKER).step_by(2).map(move |k| {
                (
                    name.to_string(),
                    format!("w{w}-c{k}"),
                    u64::from(port(w, k)),
                )
            })
        })
        .collect();
    want.sort();
    assert_eq!(rig.listed(), want);
    // Duplicates would not show in the (deduplicated) listing: count rules,
    // per view (iptables-nft rules show both in nft's syntax and in
    // iptables-nft-save's).
    let rules = rig.ruleset();
    let dnats = rules
        .matches("dnat to")
        .count()
        .max(rules.matches("-j DNAT").count());
    assert_eq!(dnats, want.len(), "one DNAT per survivor");
}

/// The kill test calibrates its kill window from the command's own run
/// time; the stress test's 8 workers running beside it on a 2-core host
/// stretch runs past that window (nftables ADD takes ~6 ms). Stress tests
/// share the machine with each other; a kill test has it to itself.
static MACHINE: RwLock<()> = RwLock::new(());

fn port(worker: u16, k: u16) -> u16 {
    20000 + worker * 1000 + k
}

/// Deterministic pseudo-random delays (no dependency, reproducible).
struct Lcg(u64);

impl Lcg {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Starts the plugin in its own process group and SIGKILLs the group
/// (plugin and the nft/iptables-restore it runs) after `delay`, unless it
/// finished first. Returns whether it was killed.
fn run_and_kill(
    rig: &Rig,
    sandbox: &Netns,
    command: &str,
    id: &str,
    cfg: &Value,
    delay: Duration,
) -> bool {
    use std::os::unix::process::CommandExt;
    let mut call = Call::new(command, id, None, rig.tools.path(), cfg);
    call.netns = sandbox.path().display().to_string();
    let mut cmd = rig.topo.host.command(ours());
    call.apply_env(&mut cmd);
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(cfg.to_string().as_bytes());
    }
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.wait();
    true
}

/// What the firewall holds of container `id`: all of it (CHECK passes),
/// none of it (no trace in any listing), or something in between.
fn state_of(rig: &Rig, sandbox: &Netns, id: &str, cfg: &Value) -> &'static str {
    let mut check = Call::new("CHECK", id, None, rig.tools.path(), cfg);
    check.netns = sandbox.path().display().to_string();
    if invoke(&ours(), &rig.topo.host, &check).expect("run").ok() {
        return "all";
    }
    let traces = rig.ruleset().contains(id) || rig.listed().iter().any(|(_, c, _)| c == id);
    if traces {
        "partial"
    } else {
        "none"
    }
}

/// Whether the journal (in the rig's state dir) has an entry for `id`.
fn journaled(rig: &Rig, id: &str) -> bool {
    std::fs::read_dir(state_dir(rig.tools.path()))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|ns| {
            std::fs::read_dir(ns.path().join(id))
                .into_iter()
                .flatten()
                .flatten()
        })
        .any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // Not a temp file a killed writer left: those are not entries.
            name.ends_with(".json") && !name.starts_with('.')
        })
}

/// SIGKILL at random points of 100 ADDs and 100 DELs: the container's
/// rules are always all there or all absent, and the next re-ADD or DEL
/// repairs whatever the kill interrupted. The journal agrees: a killed ADD
/// whose rules are in place has its entry (written first), and the next
/// `portmap restore` completes an ADD that journaled; a killed DEL that
/// left its entry left all its rules (the entry goes first).
#[rstest]
fn sigkill_at_random_points_never_half_applies(
    #[values("nftables", "iptables-nft", "iptables-legacy")] name: &str,
) {
    let _alone = MACHINE.write().unwrap_or_else(|p| p.into_inner());
    let (key, tools) = backend(name);
    let Some(rig) = Rig::new(tools) else { return };
    // One IPv4 container: the kill tests one family's batch (iptables
    // applies one batch per family; see the README's known limits).
    let cfg = synthetic(key, "10.88.0.5", 8080);
    let sandbox = Netns::new("sandbox").expect("netns");
    // Calibrate one window per command to this machine: the fastest of
    // five complete runs, so a slow first run (cold caches, a loaded CI
    // host) cannot stretch the window past most runs' end.
    let mut window = [u64::MAX; 2];
    for _ in 0..5 {
        for (slot, command) in ["ADD", "DEL"].into_iter().enumerate() {
            let start = Instant::now();
            assert!(!run_and_kill(
                &rig,
                &sandbox,
                command,
                "probe",
                &cfg,
                Duration::from_secs(30)
            ));
            window[slot] = window[slot].min(start.elapsed().as_micros() as u64);
        }
    }
    let mut rng = Lcg(0x5eed);
    let mut killed = 0;
    for round in 0..100 {
        let id = format!("k{round}");
        for (slot, command) in ["ADD", "DEL"].into_iter().enumerate() {
            let delay = Duration::from_micros(rng.next_below(window[slot] + 1));
            killed += usize::from(run_and_kill(&rig, &sandbox, command, &id, &cfg, delay));
            let state = state_of(&rig, &sandbox, &id, &cfg);
            assert_ne!(
                state,
                "partial",
                "{command} {id} killed after {delay:?}:\n{}",
                rig.ruleset()
            );
            let entry = journaled(&rig, &id);
            match command {
                "ADD" => {
                    assert!(state != "all" || entry, "ADD {id}: rules without entry");
                    let restore = rig.cli(&["restore"]);
                    assert_eq!(restore.exit, Some(0), "{}", restore.summary());
                    let want = if entry { "all" } else { "none" };
                    assert_eq!(
                        state_of(&rig, &sandbox, &id, &cfg),
                        want,
                        "restore after ADD {id} killed after {delay:?} (entry: {entry})"
                    );
                }
                _ => assert!(!entry || state == "all", "DEL {id}: entry without rules"),
            }
            // Repair: the next complete ADD (or DEL) wins whatever the state.
            assert!(!run_and_kill(
                &rig,
                &sandbox,
                command,
                &id,
                &cfg,
                Duration::from_secs(30)
            ));
            let want = if command == "ADD" { "all" } else { "none" };
            assert_eq!(
                state_of(&rig, &sandbox, &id, &cfg),
                want,
                "after repeating {command} {id}"
            );
            assert_eq!(
                journaled(&rig, &id),
                command == "ADD",
                "journal after {command} {id}"
            );
        }
    }
    eprintln!("{name}: {killed} of 200 invocations killed mid-run (windows ADD/DEL {window:?} us)");
    assert!(
        killed >= 50,
        "the kills must land inside runs, got {killed}"
    );
    assert_eq!(rig.listed(), vec![]);
}

/// A firewall reload behind the plugin's back (`nft flush ruleset`,
/// `iptables -t nat -F`) is seen by CHECK; re-ADD restores the rules
/// without duplicates and traffic flows again.
#[rstest]
fn external_flush_is_detected_and_re_add_restores(
    #[values("nftables", "iptables-nft", "iptables-legacy")] name: &str,
) {
    let (key, tools) = backend(name);
    let Some(rig) = Rig::new(tools) else { return };
    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let installed = rig.ruleset();
    let flush: Vec<(&str, Vec<&str>)> = match name {
        "nftables" => vec![("nft", vec!["flush", "ruleset"])],
        "iptables-nft" => vec![
            ("iptables-nft", vec!["-t", "nat", "-F"]),
            ("ip6tables-nft", vec!["-t", "nat", "-F"]),
        ],
        _ => vec![
            ("iptables-legacy", vec!["-t", "nat", "-F"]),
            ("ip6tables-legacy", vec!["-t", "nat", "-F"]),
        ],
    };
    for (tool, args) in &flush {
        rig.topo.host.exec(tool, args).expect("flush");
    }
    assert_eq!(rig.answers(8080), None);
    let check = rig.call(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    assert_eq!(
        check.exit,
        Some(1),
        "CHECK must see the flush: {}",
        check.summary()
    );
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    assert_eq!(
        rig.ruleset(),
        installed,
        "re-ADD restores exactly what ADD made"
    );
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
}
