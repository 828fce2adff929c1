//! A real firewalld (Debian's package) in the test's host namespace (own
//! network and mount namespace, private dbus-daemon: firewalld/daemon.rs),
//! for each firewalld backend and each of ours: a published port answers,
//! from the host and through it from a remote namespace, after firewalld's
//! start, `firewall-cmd --reload`, `--complete-reload` and a restart (kill,
//! start). Ours on nftables keeps its rules throughout (no watch runs);
//! on iptables firewalld's `iptables -F -X -Z` takes them every time and
//! `portmap watch` brings them back within 1 s of firewall-cmd returning
//! (of the start being over): by nf_tables event on iptables-nft, by
//! firewalld's D-Bus signals on iptables-legacy, where the watch's poll
//! interval (60 s) is far beyond the test. `portmap status` is checked
//! against what runs. The root namespace is compared before and after.

mod common;
#[path = "firewalld/daemon.rs"]
mod daemon;
#[path = "firewalld/systemd_unit.rs"]
mod systemd_unit;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{config, ours, tcp_8080, Rig};
use daemon::Daemon;
use portmap_conformance::cni::{lock_path, run_with_input, state_dir};
use portmap_conformance::netns::{prerequisites, Netns};
use portmap_conformance::toolpath::{IptablesVariant, Tools};
use portmap_conformance::topology::HOST_V4;
use portmap_conformance::traffic::{tcp_ask, EchoServer};
use rstest::rstest;

/// One firewalld at a time: the 1 s bounds hold on a loaded 2-core VM.
static SERIAL: Mutex<()> = Mutex::new(());

/// How soon after firewall-cmd returns (a start is over) the port answers.
const WITHIN: Duration = Duration::from_secs(1);
/// The host's address on the remote namespace's link (conformance's veth::remote).
const HOST_ON_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Our binary in the rig's host namespace with only the rig's PATH,
/// journal and lock in its environment.
fn ours_command(rig: &Rig) -> Command {
    let mut cmd = rig.topo.host.command(ours());
    cmd.env_clear()
        .env("PATH", rig.tools.path())
        .env("PORTMAP_STATE_DIR", state_dir(rig.tools.path()))
        .env("PORTMAP_LOCK", lock_path(rig.tools.path()));
    cmd
}

/// One firewalld test at a time; `None` (a skip, a failure under CI)
/// without firewalld, its client, dbus-daemon, nsenter, unshare and `extra`.
fn firewalld_turn(extra: &[&str]) -> Option<MutexGuard<'static, ()>> {
    let serial = serial();
    let mut tools = vec![
        "firewalld",
        "firewall-cmd",
        "dbus-daemon",
        "nsenter",
        "unshare",
    ];
    tools.extend(extra);
    prerequisites(&tools).then_some(serial)
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the test must leave: the root namespace as `state_before`, none
/// of this process's named namespaces, the daemon's directory `dir` gone.
fn assert_left_nothing(state_before: &str, dir: &Path) {
    let (state_after, netns_left) = host_state();
    assert_eq!(state_after, state_before, "the root namespace changed");
    assert!(netns_left.is_empty(), "namespaces left: {netns_left:?}");
    assert!(!dir.exists(), "{} left", dir.display());
}

/// `portmap watch` on the rig's journal and lock, on the test's bus.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    /// Started, on the bus (asserted).
    fn start(rig: &Rig, bus: &str, log: PathBuf) -> Watch {
        let w = Watch::spawn(rig, bus, log);
        assert!(
            w.said().contains("firewalld signals: on"),
            "watch is not on firewalld's bus: {}",
            w.said()
        );
        w
    }

    /// Started and past its firewalld line, whatever it says.
    fn spawn(rig: &Rig, bus: &str, log: PathBuf) -> Watch {
        let child = ours_command(rig)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .args(["watch", "--interval", "60"])
            .stdout(std::fs::File::create(&log).expect("watch log"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("watch err"))
            .spawn()
            .expect("start portmap watch");
        let w = Watch { child, log };
        w.wait_for("firewalld signals:", Duration::from_secs(5));
        w
    }

    fn wait_for(&self, text: &str, limit: Duration) {
        let start = Instant::now();
        while !self.said().contains(text) {
            assert!(
                start.elapsed() < limit,
                "no {text:?} in {limit:?}: {}",
                self.said()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it printed, stdout then stderr.
    fn said(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        read(&self.log) + &read(&self.log.with_extension("err"))
    }

    fn reinstalled(&self) -> usize {
        self.said().matches("reinstalled ctr-a in").count()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// A client on the host and one beyond it (its SYN is forwarded) both
/// get the container's answer. A SYN that firewalld drops while it
/// reloads costs the probe's timeout: short, since a veth answers in
/// microseconds, so that the time measured is the outage's.
fn answers(rig: &Rig, remote: &Netns) -> bool {
    let probe = Duration::from_millis(150);
    let ask = |ns: &Netns, host: Ipv4Addr| {
        tcp_ask(ns, SocketAddr::new(IpAddr::V4(host), 8080), probe)
            .expect("client")
            .map(|a| a.tag)
    };
    ask(&rig.topo.host, HOST_V4).as_deref() == Some("a")
        && ask(remote, HOST_ON_REMOTE).as_deref() == Some("a")
}

/// Polls until both clients get the container's answer: how long that
/// took and how many probes it needed.
fn answer_time(
    rig: &Rig,
    remote: &Netns,
    what: &str,
    said: &dyn Fn() -> String,
) -> (Duration, usize) {
    let start = Instant::now();
    let mut probes = 0;
    loop {
        probes += 1;
        if answers(rig, remote) {
            return (start.elapsed(), probes);
        }
        assert!(
            start.elapsed() < WITHIN * 5,
            "{what}: port 8080 still dead after {:?}\nruleset:\n{}\n{}",
            start.elapsed(),
            rig.ruleset(),
            said()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `portmap status` in the rig's host namespace, on the test's bus.
fn status(rig: &Rig, bus: &str) -> String {
    let mut cmd = ours_command(rig);
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus).arg("status");
    let out = run_with_input(cmd, b"").expect("portmap status");
    assert_eq!(out.exit, Some(0), "status: {}", out.summary());
    out.stdout
}

/// scripts/host-state.sh: the root namespace's sysctls and firewall, and
/// (apart) the named namespaces of this process.
fn host_state() -> (String, Vec<String>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/host-state.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("host-state.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (state, netns) = text
        .split_once("--- ip netns list")
        .expect("host-state.sh sections");
    // Other test binaries make and drop namespaces meanwhile: only ours count.
    let mine = format!("-{}-", std::process::id());
    let netns = netns
        .lines()
        .filter(|l| l.contains(&mine))
        .map(str::to_string)
        .collect();
    (state.to_string(), netns)
}

#[rstest]
#[case::fw_nftables_ours_nftables("nftables", "nftables")]
#[case::fw_iptables_ours_nftables("iptables", "nftables")]
#[case::fw_nftables_ours_iptables_nft("nftables", "nft")]
#[case::fw_iptables_ours_iptables_nft("iptables", "nft")]
#[case::fw_iptables_legacy_ours_iptables_legacy("iptables", "legacy")]
fn published_ports_survive_firewalld(#[case] fw_backend: &'static str, #[case] ours_is: &str) {
    let Some(_turn) = firewalld_turn(&["iptables-legacy-save"]) else {
        return;
    };
    let (state_before, _) = host_state();
    let dir = run_cell(fw_backend, ours_is);
    assert_left_nothing(&state_before, &dir);
}

/// One cell; returns the daemon's temp directory (gone by then).
fn run_cell(fw_backend: &'static str, ours_is: &str) -> PathBuf {
    let cell = format!("firewalld {fw_backend} / ours {ours_is}");
    let (tools, key) = match ours_is {
        "nftables" => (Tools::default(), "nftables"),
        "nft" => (
            Tools {
                iptables: Some(IptablesVariant::Nft),
                ..Tools::default()
            },
            "iptables",
        ),
        _ => (
            Tools {
                iptables: Some(IptablesVariant::Legacy),
                both_variants: false,
                ..Tools::default()
            },
            "iptables",
        ),
    };
    let ours_on_iptables = key == "iptables";
    let Some(rig) = Rig::new(tools) else {
        panic!("{cell}: no rig (prerequisites checked above)");
    };
    let remote = rig.topo.remote().expect("remote namespace");
    let a = rig.topo.container("a", 5).expect("container a");
    let _server = EchoServer::start(&a.ns, "a", 80).expect("echo server");
    let cfg = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    assert!(answers(&rig, &remote), "{cell}: no answer before firewalld");

    let mut fw = Daemon::new(&rig.topo.host, fw_backend, ours_is == "legacy");
    let dir = fw.dir().to_path_buf();
    let bus = fw.bus_address();
    let watch = ours_on_iptables.then(|| Watch::start(&rig, &bus, dir.join("watch.log")));
    let said = || watch.as_ref().map(Watch::said).unwrap_or_default();
    let reinstalled = || watch.as_ref().map_or(0, Watch::reinstalled);

    // Each step: what it does, then how long the port stays dead after.
    let step = |fw: &mut Daemon, what: &str, act: &mut dyn FnMut(&mut Daemon) -> Duration| {
        let before = reinstalled();
        let took = act(fw);
        let (dead, probes) = answer_time(&rig, &remote, &format!("{cell}: {what}"), &said);
        eprintln!(
            "{cell}: {what}: took {took:?}, port answered {dead:?} after ({probes} probe(s))"
        );
        assert!(
            dead <= WITHIN,
            "{cell}: {what}: answered only {dead:?} after\n{}",
            said()
        );
        if ours_on_iptables {
            // It did flush ours, and the watch put them back.
            assert!(
                reinstalled() > before,
                "{cell}: {what}: nothing reinstalled\n{}",
                said()
            );
        } else {
            // On nftables the first probe answers: nothing was lost.
            assert_eq!(probes, 1, "{cell}: {what}: answered after {dead:?}");
        }
        rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    };
    let reload = |args: &'static [&'static str]| {
        move |fw: &mut Daemon| {
            let (out, took) = fw.firewall_cmd(args);
            assert!(
                out.status.success(),
                "firewall-cmd {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            took
        }
    };
    step(&mut fw, "start", &mut |fw| fw.start_firewalld());
    let ours_name = match ours_is {
        "nftables" => "nftables",
        "nft" => "iptables-nft",
        _ => "iptables-legacy",
    };
    check_status(
        &cell,
        &rig,
        &bus,
        &fw,
        watch.as_ref(),
        fw_backend,
        ours_name,
    );
    step(&mut fw, "--reload", &mut reload(&["--reload"]));
    step(
        &mut fw,
        "--complete-reload",
        &mut reload(&["--complete-reload"]),
    );
    step(&mut fw, "restart", &mut |fw| {
        fw.stop_firewalld();
        fw.start_firewalld()
    });
    if let Some(w) = &watch {
        let said = w.said();
        if ours_is == "legacy" {
            // No nf_tables event and a 60 s poll: only D-Bus can have done it.
            for trigger in [
                "firewalld reloaded",
                "firewalld stopped",
                "firewalld started",
            ] {
                assert!(
                    said.contains(&format!("portmap watch: {trigger}: restore pass")),
                    "{said}"
                );
            }
        }
    }
    drop(watch);
    if ours_on_iptables {
        // No watch now: status warns that firewalld's reloads lose them.
        let text = status(&rig, &bus);
        assert!(
            text.contains("warning: no `portmap watch` runs in this network namespace"),
            "{cell}: {text}"
        );
    }
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    drop(fw);
    dir
}

fn check_status(
    cell: &str,
    rig: &Rig,
    bus: &str,
    fw: &Daemon,
    watch: Option<&Watch>,
    fw_backend: &str,
    ours_name: &str,
) {
    let text = status(rig, bus);
    let pid = fw.firewalld_pid().expect("firewalld runs");
    let running = format!(
        "firewalld: running in this network namespace (pid {pid}), backend {fw_backend} (from its D-Bus config)"
    );
    assert!(text.contains(&running), "{cell}: {text}");
    match watch {
        None => assert!(
            text.contains("firewalld: none of our mappings is in iptables"),
            "{cell}: {text}"
        ),
        Some(w) => {
            for line in [
                "firewalld: its reloads flush 1 container(s) of ours (nftables ones are kept):"
                    .to_string(),
                format!("  ctr-a in {ours_name}: 8080/tcp"),
                format!(
                    "firewalld: `portmap watch` (pid {}) restores them after each start and reload",
                    w.pid()
                ),
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "{cell}: no line {line:?} in\n{text}"
                );
            }
        }
    }
}

/// Without a bus the watch says firewalld signals are off, once, and
/// restores by nf_tables event as before; with one it follows the bus
/// away and back (reconnecting, 1 s then 2 s apart).
#[test]
fn watch_without_a_bus_and_after_losing_it() {
    let _serial = serial();
    if !prerequisites(&["dbus-daemon", "nsenter", "unshare"]) {
        return;
    }
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _server = EchoServer::start(&a.ns, "a", 80).expect("echo server");
    let cfg = config(&a, Some("nftables"), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let nowhere = rig.tools.path().join("no-bus");
    let watch = Watch::spawn(
        &rig,
        &format!("unix:path={}", nowhere.display()),
        rig.tools.path().join("watch.log"),
    );
    let said = watch.said();
    assert_eq!(said.matches("firewalld signals").count(), 1, "{said}");
    assert!(
        said.contains("portmap watch: firewalld signals: off ("),
        "{said}"
    );
    rig.topo
        .host
        .exec("nft", &["flush", "ruleset"])
        .expect("flush");
    watch.wait_for("reinstalled ctr-a in nftables", Duration::from_secs(3));
    drop(watch);

    let first = Daemon::new(&rig.topo.host, "nftables", false);
    let bus = first.bus_address();
    let watch = Watch::start(&rig, &bus, rig.tools.path().join("watch2.log"));
    assert!(
        watch.said().contains("(firewalld is not running now)"),
        "{}",
        watch.said()
    );
    drop(first);
    watch.wait_for("lost the system bus; reconnecting", Duration::from_secs(3));
    let second = Daemon::new(&rig.topo.host, "nftables", false);
    assert_eq!(second.bus_address(), bus);
    watch.wait_for("firewalld signals: on again", Duration::from_secs(8));
    drop(watch);
    drop(second);
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
}
