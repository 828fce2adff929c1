//! The distribution matrix: our binaries inside containers of minimal
//! Debian images built locally by `scripts/build-test-images.sh`, one
//! without nftables, one without iptables, one with both. In each, auto
//! selection must pick the backend that distribution can use, and the
//! whole conformance catalogue must pass on it.
//!
//! Needs a Docker engine (`scripts/docker-engine.sh start`) and the images;
//! `scripts/test.sh` provides both. With `CI` set, their absence fails.

mod support;

use std::path::{Path, PathBuf};

use portmap_conformance::scenarios::catalogue;
use rstest::rstest;
use serde_json::Value;
use support::distro::{self, image_available, run_catalogue, sh, BIN_DIR};
use testcontainers::{Container, GenericImage};

/// The binaries built alongside this test (`cargo test` at the workspace
/// root builds every member's binaries into one directory).
fn binaries() -> PathBuf {
    let harness = Path::new(env!("CARGO_BIN_EXE_portmap-conformance"));
    let dir = harness.parent().expect("target dir").to_path_buf();
    assert!(
        dir.join("portmap").exists(),
        "{} has no portmap binary: run `cargo build -p portmap` or the workspace's `cargo test`",
        dir.display()
    );
    dir
}

/// The static (musl) binaries `scripts/release.sh` builds, for images whose
/// glibc is older than the build host's; a failure under CI when missing.
fn static_binaries() -> Option<PathBuf> {
    let target = binaries()
        .parent()
        .expect("target dir")
        .join("x86_64-unknown-linux-musl/release");
    if target.join("portmap").exists() && target.join("portmap-conformance").exists() {
        return Some(target);
    }
    let msg = format!(
        "no static binaries in {}: run scripts/release.sh (or cargo build --release \
         --target x86_64-unknown-linux-musl -p portmap -p portmap-conformance)",
        target.display()
    );
    support::unavailable(&msg);
    None
}

/// The image with the binaries in `bins` mounted read-only and a writable
/// /proc/sys/net.
fn start(image: &str, bins: &Path) -> Container<GenericImage> {
    let container = distro::start(image, &[(bins, BIN_DIR)]);
    let (code, out) = sh(&container, distro::WRITABLE_NET);
    assert_eq!(code, 0, "making /proc/sys/net writable in {image}: {out}");
    container
}

fn auto_selection(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("auto-selection: "))
        .and_then(|rest| rest.split_whitespace().next())
}

#[rstest]
#[case::without_nftables("portmap-test/iptables-legacy", "iptables-legacy", &["auto", "iptables-legacy"])]
#[case::nftables_only("portmap-test/nftables", "nftables", &["auto", "nftables"])]
#[case::both("portmap-test/both", "nftables", &["auto", "nftables", "iptables-nft", "iptables-legacy"])]
fn auto_picks_the_usable_backend_and_the_catalogue_passes(
    #[case] image: &str,
    #[case] expected: &str,
    #[case] backends: &[&str],
) {
    if !image_available(image) {
        return;
    }
    let container = start(image, &binaries());

    let (code, status) = sh(&container, &format!("{BIN_DIR}/portmap status"));
    assert_eq!(code, 0, "portmap status failed in {image}:\n{status}");
    let picked = auto_selection(&status);
    assert_eq!(
        picked,
        Some(expected),
        "in {image} auto-selection picked {picked:?}, expected {expected}; portmap status said:\n{status}"
    );

    let axes: String = backends.iter().map(|b| format!(" --backend {b}")).collect();
    let run = run_catalogue(
        &container,
        image,
        &format!("--plugin {BIN_DIR}/portmap --setup veth{axes}"),
    );
    run.assert_passed(&format!("conformance in {image}"));
    let scenarios = catalogue().len();
    for backend in backends {
        let ran = run.on(backend);
        assert_eq!(
            ran, scenarios,
            "{image}: {ran} of {scenarios} scenarios reported on {backend}:\n{}",
            run.text
        );
    }
}

/// Debian 11 as installed (nft 0.9.8, iptables 1.8.7, glibc 2.31, CNI
/// plugins 0.9.0): the static binaries through the whole catalogue on
/// every backend and auto (not nftables-maps: the opt-in maps layout is
/// not yet tried on nft 0.9.8), both setups, with Debian 11's own portmap as
/// the reference. The run negotiates CNI 0.4.0 (what 0.9.0 speaks); ours
/// has no failure; the reference's results are reported.
#[test]
fn debian11_runs_the_static_binaries_through_the_catalogue() {
    let image = "portmap-test/debian11";
    if !image_available(image) {
        return;
    }
    let Some(bins) = static_binaries() else {
        return;
    };
    let container = start(image, &bins);
    let (code, status) = sh(&container, &format!("{BIN_DIR}/portmap status"));
    assert_eq!(code, 0, "portmap status failed in {image}:\n{status}");
    assert_eq!(
        auto_selection(&status),
        Some("nftables"),
        "nft 0.9.8 takes our JSON: {status}"
    );
    let run = run_catalogue(
        &container,
        image,
        &format!(
            "--plugin {BIN_DIR}/portmap --reference /usr/lib/cni/portmap --setup veth --setup chain \
             --backend nftables --backend iptables-nft --backend iptables-legacy --backend auto"
        ),
    );
    let (code, report, cells) = (run.code, &run.text, &run.cells);
    let ours: Vec<&Value> = cells.iter().filter(|c| c["binary"] == "ours").collect();
    let failed: Vec<String> = ours
        .iter()
        .filter(|c| c["result"] == "fail")
        .map(|c| {
            format!(
                "{} on {} ({}): {}",
                c["scenario"], c["backend"], c["setup"], c["reason"]
            )
        })
        .collect();
    assert!(
        code == 0 && failed.is_empty(),
        "ours in {image} (exit {code}) failed:\n{}\n\n{report}",
        failed.join("\n")
    );
    let expected = catalogue().len() * 4 * 2;
    assert_eq!(ours.len(), expected, "cells of ours in {image}:\n{report}");
    assert!(
        cells.iter().all(|c| c["cniVersion"] == "0.4.0"),
        "negotiated with CNI 0.9.0's plugins:\n{report}"
    );
    let reference = cells.iter().filter(|c| c["binary"] == "reference").count();
    assert_eq!(
        reference, expected,
        "the reference ran beside ours:\n{report}"
    );
    eprintln!("{image}: {}", run.closing());
}
