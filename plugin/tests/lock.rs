//! The harness isolates the plugin lock and state: every cell runs our
//! binary with its own `PORTMAP_LOCK` and `PORTMAP_STATE_DIR`, and every
//! plugin with a /run of the cell's (a private mount namespace), so a
//! portmap elsewhere on the host (another run, the host's runtime) holding
//! /run/portmap.lock cannot stall it, even one that ignores the variables,
//! and nothing of a cell lands in the host's /run/cni/portmap.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use portmap_conformance::cni::negotiate;
use portmap_conformance::netns::prerequisites;
use portmap_conformance::report::Verdict;
use portmap_conformance::run::{run_cell, CellSpec};
use portmap_conformance::scenarios::{catalogue, Axis};
use portmap_conformance::topology::Setup;

const HOST_LOCK: &str = "/run/portmap.lock";
const HOST_STATE: &str = "/run/cni/portmap";

/// Holds the host's /run/portmap.lock while it lives, and keeps these
/// tests from overlapping: one dropping its hold would free the other's.
/// A file the host had is kept (the host's own portmap shares it); one
/// the test made is removed, still held, so the host is left as found.
struct HostLock {
    _file: File,
    made: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for HostLock {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_file(HOST_LOCK);
        }
    }
}

fn hold_host_lock() -> HostLock {
    static SERIAL: Mutex<()> = Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let made = !Path::new(HOST_LOCK).exists();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .expect("open /run/portmap.lock");
    // Blocking: a portmap elsewhere holds it for a moment at most.
    file.lock().expect("lock /run/portmap.lock");
    HostLock {
        _file: file,
        made,
        _serial: serial,
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host's state directory as a sorted listing (absent: empty).
fn host_state() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(HOST_STATE)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The catalogue's tcp cell (nftables, veth) of `plugin`, the host's lock
/// held only for it (a few seconds, the CNI version negotiated inside):
/// its verdict and how long it took.
fn tcp_cell_with_host_lock(plugin: &Path) -> (Verdict, Duration) {
    let host = hold_host_lock();
    let cni_version = negotiate(&[plugin]).expect("a CNI version");
    let spec = CellSpec {
        plugin,
        reference: None,
        binary: portmap_conformance::report::OURS,
        setup: Setup::Veth,
        cni_version: &cni_version,
    };
    let all = catalogue();
    let tcp = all.iter().find(|s| s.name == "tcp").expect("tcp scenario");
    let start = Instant::now();
    let cell = run_cell(&spec, Axis::parse("nftables").expect("axis"), tcp);
    let took = start.elapsed();
    drop(host);
    (cell.verdict, took)
}

/// The plugin waits up to 60 s for a held lock: a cell that waited on
/// the host's lock would take that long.
fn assert_no_wait(took: Duration) {
    assert!(
        took < Duration::from_secs(30),
        "the cell took {took:?}: did it wait on {HOST_LOCK}?"
    );
}

#[test]
fn a_cell_passes_while_the_host_lock_is_held() {
    if !prerequisites(&["nft", "conntrack"]) {
        return;
    }
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_portmap"));
    let (verdict, took) = tcp_cell_with_host_lock(&plugin);
    match verdict {
        Verdict::Pass => {}
        other => panic!("the tcp cell with {HOST_LOCK} held: {other:?}"),
    }
    assert_no_wait(took);
}

/// A portmap that ignores `PORTMAP_LOCK` and `PORTMAP_STATE_DIR` (ours,
/// with both unset by a wrapper) locks /run/portmap.lock and journals in
/// /run/cni/portmap: the harness's private /run makes both the cell's. The
/// wrapper logs, after each call, its mount namespace and how many journal
/// directories the plugin's /run/cni/portmap holds.
#[test]
fn a_plugin_ignoring_portmap_lock_gets_the_cells_lock_and_state() {
    if !prerequisites(&["nft", "conntrack"]) {
        return;
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("portmap-lock-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let log = dir.0.join("calls.log");
    let wrapper = dir.0.join("portmap-without-env");
    // PATH is the cell's tool directory: the wrapper names its tools.
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nunset PORTMAP_LOCK PORTMAP_STATE_DIR\n{plugin}\nrc=$?\n\
             echo \"$CNI_COMMAND $(/usr/bin/readlink /proc/self/ns/mnt) \
             $(/bin/ls {HOST_STATE} 2>/dev/null | /usr/bin/wc -l)\" >> {log}\nexit $rc\n",
            plugin = env!("CARGO_BIN_EXE_portmap"),
            log = log.display(),
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod wrapper");

    let state_before = host_state();
    let (verdict, took) = tcp_cell_with_host_lock(&wrapper);
    match verdict {
        Verdict::Pass => {}
        other => {
            panic!("the tcp cell of a plugin ignoring PORTMAP_LOCK, {HOST_LOCK} held: {other:?}")
        }
    }
    assert_no_wait(took);

    let ours = std::fs::read_link("/proc/self/ns/mnt").expect("own mount namespace");
    let calls = std::fs::read_to_string(&log).expect("the wrapper's log");
    let calls: Vec<Vec<&str>> = calls.lines().map(|l| l.split(' ').collect()).collect();
    assert!(calls.iter().any(|c| c[0] == "ADD"), "{calls:?}");
    // VERSION is negotiated before any cell (this test's and the
    // harness's own probe) and touches neither lock nor state.
    let cell_calls: Vec<_> = calls.iter().filter(|c| c[0] != "VERSION").collect();
    assert!(cell_calls.len() >= 3, "ADD, CHECK, DEL at least: {calls:?}");
    for c in cell_calls {
        assert_eq!(c.len(), 3, "{calls:?}");
        assert_ne!(
            Path::new(c[1]),
            ours,
            "a call in the host's mount namespace: {calls:?}"
        );
    }
    // ADD journaled in the /run/cni/portmap the plugin saw...
    let add = calls.iter().find(|c| c[0] == "ADD").expect("an ADD");
    assert_ne!(
        add[2], "0",
        "ADD left no journal in its /run/cni/portmap: {calls:?}"
    );
    // ...shared by the cell's later calls (CHECK found it)...
    let check = calls.iter().find(|c| c[0] == "CHECK").expect("a CHECK");
    assert_eq!(
        check[2], add[2],
        "CHECK saw another /run/cni/portmap: {calls:?}"
    );
    // ...and not the host's.
    assert_eq!(host_state(), state_before, "{HOST_STATE} changed");
}
