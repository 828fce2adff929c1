//! The harness isolates the plugin lock: every cell runs our binary with
//! its own `PORTMAP_LOCK`, so a portmap elsewhere on the host (another
//! run, the host's runtime) holding /run/portmap.lock cannot stall it.

use std::fs::{OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portmap_conformance::cni::negotiate;
use portmap_conformance::netns::prerequisites;
use portmap_conformance::report::Verdict;
use portmap_conformance::run::{run_cell, CellSpec};
use portmap_conformance::scenarios::{catalogue, Axis};
use portmap_conformance::topology::Setup;

const HOST_LOCK: &str = "/run/portmap.lock";

#[test]
fn a_cell_passes_while_the_host_lock_is_held() {
    if !prerequisites(&["nft", "conntrack"]) {
        return;
    }
    // Held only for the one cell (a few seconds), never removed: the
    // host's own portmap shares this file.
    let host = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .expect("open /run/portmap.lock");
    match host.try_lock() {
        // Someone else's portmap holds it: as good for this test.
        Ok(()) | Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => panic!("cannot lock {HOST_LOCK}: {e}"),
    }
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_portmap"));
    let cni_version = negotiate(&[Path::new(&plugin)]).expect("a CNI version");
    let spec = CellSpec {
        plugin: &plugin,
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
    match cell.verdict {
        Verdict::Pass => {}
        other => panic!("the tcp cell with {HOST_LOCK} held: {other:?}"),
    }
    // The plugin waits up to 60 s for a held lock: a cell that waited on
    // the host's lock would take that long.
    assert!(
        took < Duration::from_secs(30),
        "the cell took {took:?}: did it wait on {HOST_LOCK}?"
    );
}
