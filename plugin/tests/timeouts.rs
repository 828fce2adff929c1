//! A firewall tool that hangs (a wrapper script that forks `sleep 600`
//! and waits) is killed at its timeout with its whole process group: ADD
//! is a CNI error naming the tool and leaves the firewall as it was, the
//! plugin-wide lock is free again, and nothing of the tool keeps running.
//! A hung `conntrack` tool plays no part: the UDP flush is ctnetlink.
//!
//! The plugin runs with `PORTMAP_TOOL_TIMEOUT_MS` (every tool timeout,
//! for tests) so a hang costs 1.5 s instead of the real 5-20 s.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{config, ours, tcp_8080, Rig};
use portmap_conformance::cni::{invoke, lock_path, Call, Outcome};
use portmap_conformance::toolpath::Tools;
use portmap_conformance::topology::Container;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_millis(1500);
/// These tests take turns: each holds the plugin-wide lock for a whole
/// timeout, which would count in another's measured latency.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Process start, the plugin's other (real) tools, and the plugin-wide
/// lock, which other tests on this machine may hold for a moment.
const MARGIN: Duration = Duration::from_secs(5);

/// `tool` in the rig's PATH replaced by a script that forks a long sleep
/// and waits for it, logging both pids; `restore` puts the real one back.
struct Hung {
    path: PathBuf,
    real: PathBuf,
    pids: PathBuf,
}

impl Hung {
    fn new(rig: &Rig, tool: &str) -> Hung {
        let path = rig.tools.path().join(tool);
        let real = std::fs::read_link(&path).expect("tool is a link to the real one");
        let pids = rig.tools.path().join(format!("{tool}.pids"));
        std::fs::remove_file(&path).expect("unlink");
        let p = pids.display();
        // The plugin's PATH is the rig's tool directory: no sleep there.
        let sleep = which::which("sleep").expect("sleep");
        let sleep = sleep.display();
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho $$ >> {p}\n{sleep} 600 &\necho $! >> {p}\nwait\n"),
        )
        .expect("write wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Hung { path, real, pids }
    }

    fn restore(&self) {
        std::fs::remove_file(&self.path).expect("unlink");
        std::os::unix::fs::symlink(&self.real, &self.path).expect("link");
    }

    /// Every process the wrapper started, one shell and one sleep per run.
    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Ran at least once, and nothing it started is alive (a zombie is
    /// dead: init reaps the reparented sleep when it gets to it).
    fn assert_all_dead(&self) {
        let pids = self.pids();
        assert!(
            !pids.is_empty() && pids.len().is_multiple_of(2),
            "wrapper runs: {pids:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while !pids.iter().all(|p| dead(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive: Vec<&i32> = pids.iter().filter(|p| !dead(**p)).collect();
        assert!(alive.is_empty(), "still running: {alive:?} of {pids:?}");
    }
}

fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn call(rig: &Rig, command: &str, id: &str, c: &Container, cfg: &Value) -> Outcome {
    let mut call = Call::new(command, id, Some(c), rig.tools.path(), cfg);
    call.env
        .push(("PORTMAP_TOOL_TIMEOUT_MS", TIMEOUT.as_millis().to_string()));
    invoke(&ours(), &rig.topo.host, &call).expect("run plugin")
}

/// The plugin lock the rig's calls take (`PORTMAP_LOCK`) is free again:
/// a killed tool left no invocation holding it.
fn assert_lock_free(rig: &Rig) {
    let path = lock_path(rig.tools.path());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("the calls made their lock file");
    let deadline = Instant::now() + Duration::from_secs(3);
    while file.try_lock().is_err() {
        assert!(Instant::now() < deadline, "{} stays held", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn within_timeout(out: &Outcome) {
    assert!(
        out.elapsed >= TIMEOUT && out.elapsed < TIMEOUT + MARGIN,
        "took {:?}: {}",
        out.elapsed,
        out.summary()
    );
}

#[rstest::rstest]
#[case::iptables_restore("iptables", "iptables-restore")]
#[case::iptables_save("iptables", "iptables-save")]
#[case::nft("nftables", "nft")]
fn a_hung_tool_fails_add_applies_nothing_and_frees_the_lock(
    #[case] backend: &str,
    #[case] tool: &str,
) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    // Another container's rules first: the hung ADD must leave them as
    // they are, and nftables then skips the skeleton it finds whole (the
    // ADD it would retry after a refusal, not after a hang).
    let b = rig.topo.container("b", 6).expect("container");
    let b_cfg = config(
        &b,
        Some(backend),
        json!([{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}]),
    );
    let b_add = call(&rig, "ADD", "ctr-b", &b, &b_cfg);
    assert!(b_add.ok(), "{}", b_add.summary());
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, Some(backend), tcp_8080());
    let before = rig.ruleset();
    let hung = Hung::new(&rig, tool);

    let add = call(&rig, "ADD", "ctr-a", &a, &cfg);
    eprintln!("{tool}: ADD failed after {:?}: {}", add.elapsed, add.stdout);
    assert_eq!(add.exit, Some(1), "{}", add.summary());
    let msg = add.error_msg();
    let secs = format!("{TIMEOUT:?}");
    assert!(
        msg.contains(tool) && msg.contains(&secs) && msg.contains("killed"),
        "{msg}"
    );
    let details = add.json().expect("CNI error")["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        details.contains("killed") && details.contains(backend),
        "{details}"
    );
    within_timeout(&add);
    hung.assert_all_dead();
    assert_eq!(hung.pids().len(), 2, "one run, not retried");
    assert_eq!(rig.ruleset(), before, "a killed {tool} applied nothing");
    assert_lock_free(&rig);

    // The next invocation neither waits nor finds leftovers.
    hung.restore();
    let again = call(&rig, "ADD", "ctr-a", &a, &cfg);
    assert!(again.ok(), "{}", again.summary());
    assert!(again.elapsed < MARGIN, "took {:?}", again.elapsed);
    for (id, c, cfg) in [("ctr-a", &a, &cfg), ("ctr-b", &b, &b_cfg)] {
        let del = call(&rig, "DEL", id, c, cfg);
        assert!(del.ok(), "{}", del.summary());
    }
    let left = rig.ruleset();
    assert!(!left.contains("ctr-a") && !left.contains("ctr-b"), "{left}");
}

/// The UDP conntrack flush runs no process (ctnetlink): a `conntrack`
/// in PATH that would hang is never started, and ADD and DEL take no
/// timeout.
#[test]
fn a_hung_conntrack_tool_is_never_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(
        &a,
        None,
        json!([{"hostPort": 5353, "containerPort": 80, "protocol": "udp"}]),
    );
    let hung = Hung::new(&rig, "conntrack");
    let add = call(&rig, "ADD", "ctr-a", &a, &cfg);
    eprintln!("conntrack: ADD took {:?}", add.elapsed);
    assert!(add.ok(), "{}", add.summary());
    assert!(!add.stderr.contains("warning"), "{}", add.summary());
    assert!(add.elapsed < TIMEOUT, "took {:?}", add.elapsed);
    assert!(rig.ruleset().contains("5353"), "{}", rig.ruleset());
    let del = call(&rig, "DEL", "ctr-a", &a, &cfg);
    assert!(del.ok(), "{}", del.summary());
    assert!(!del.stderr.contains("warning"), "{}", del.summary());
    assert!(del.elapsed < TIMEOUT, "took {:?}", del.elapsed);
    assert!(!rig.ruleset().contains("5353"), "{}", rig.ruleset());
    assert_eq!(hung.pids(), Vec::<i32>::new(), "the tool never ran");
    hung.restore();
    assert_lock_free(&rig);
}

/// A runtime that kills the plugin (its own timeout) kills the tool the
/// plugin was running too: the tool leads a process group of its own (for
/// our timeout), so only its parent-death signal takes it down, before it
/// could commit a batch for a plugin that is gone.
#[test]
fn a_tool_dies_with_the_plugin_that_ran_it() {
    use std::io::Write;
    use std::process::Stdio;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, Some("iptables"), tcp_8080());
    let hung = Hung::new(&rig, "iptables-restore");
    let mut call = Call::new("ADD", "ctr-a", Some(&a), rig.tools.path(), &cfg);
    call.env.push(("PORTMAP_TOOL_TIMEOUT_MS", "60000".into()));
    let mut cmd = rig.topo.host.command(ours());
    call.apply_env(&mut cmd);
    let mut plugin = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    if let Some(mut stdin) = plugin.stdin.take() {
        stdin.write_all(cfg.to_string().as_bytes()).expect("stdin");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hung.pids().len() < 2 {
        assert!(Instant::now() < deadline, "the tool never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tool = hung.pids()[0];
    assert!(!dead(tool), "the tool runs while the plugin does");
    plugin
        .kill()
        .expect("kill the plugin alone, as a runtime would");
    let _ = plugin.wait();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(tool) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let survived = !dead(tool);
    // The wrapper's own child (a sleep) is not the plugin's: end it here.
    for pid in hung.pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    hung.restore();
    assert!(!survived, "the tool {tool} outlived the killed plugin");
}
