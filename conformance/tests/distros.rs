//! The distribution matrix: our binaries inside containers of minimal
//! Debian images built locally by `scripts/build-test-images.sh`, one
//! without nftables, one without iptables, one with both. In each, auto
//! selection must pick the backend that distribution can use, and the
//! whole conformance catalogue must pass on it.
//!
//! Needs a Docker engine (`scripts/docker-engine.sh start`) and the images;
//! `scripts/test.sh` provides both. With `CI` set, their absence fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use portmap_conformance::scenarios::catalogue;
use rstest::rstest;
use serde_json::Value;
use testcontainers::core::{AccessMode, CmdWaitFor, ExecCommand, Mount};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

const BIN_DIR: &str = "/opt/portmap";

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

/// Whether the engine answers and has the image; a failure under CI.
fn image_available(image: &str) -> bool {
    let missing = match Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
    {
        Err(e) => Some(format!("cannot run the docker client: {e}")),
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    };
    let Some(why) = missing else { return true };
    let msg = format!(
        "distro image {image} unavailable ({why}); start an engine with \
         `eval \"$(scripts/docker-engine.sh start)\"` and run scripts/build-test-images.sh"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: a missing prerequisite is a failure)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Runs `script` with sh inside the container; returns exit code and the
/// merged output.
fn sh(container: &Container<GenericImage>, script: &str) -> (i64, String) {
    let cmd = ExecCommand::new(["sh", "-c", &format!("{{ {script} ; }} 2>&1")])
        .with_cmd_ready_condition(CmdWaitFor::exit());
    let mut exec = container.exec(cmd).expect("exec in container");
    let out = exec.stdout_to_vec().expect("exec output");
    let code = exec.exit_code().expect("exit code").unwrap_or(-1);
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Starts the image with the capabilities the suite needs (not
/// `--privileged`) and our binaries mounted read-only. Docker mounts
/// /proc/sys read-only; only its per-namespace `net` part is made
/// writable, so nothing outside the container's namespaces can change.
fn start(image: &str) -> Container<GenericImage> {
    let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
    let container = GenericImage::new(name, tag)
        .with_cmd(["sleep", "infinity"])
        .with_cap_add("NET_ADMIN")
        .with_cap_add("SYS_ADMIN")
        .with_mount(
            Mount::bind_mount(binaries().to_string_lossy(), BIN_DIR)
                .with_access_mode(AccessMode::ReadOnly),
        )
        .start()
        .unwrap_or_else(|e| panic!("starting {image}: {e}"));
    let (code, out) = sh(
        &container,
        "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net",
    );
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
    let container = start(image);

    let (code, status) = sh(&container, &format!("{BIN_DIR}/portmap status"));
    assert_eq!(code, 0, "portmap status failed in {image}:\n{status}");
    let picked = auto_selection(&status);
    assert_eq!(
        picked,
        Some(expected),
        "in {image} auto-selection picked {picked:?}, expected {expected}; portmap status said:\n{status}"
    );

    let axes: String = backends.iter().map(|b| format!(" --backend {b}")).collect();
    let (code, report) = sh(
        &container,
        &format!(
            "{BIN_DIR}/portmap-conformance run --plugin {BIN_DIR}/portmap --setup veth{axes} \
             --json /tmp/report.json"
        ),
    );
    let (_, json) = sh(&container, "cat /tmp/report.json");
    let cells: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("report of {image} is not JSON ({e}):\n{json}\n{report}"));
    let cells = cells.as_array().cloned().unwrap_or_default();
    let failed: Vec<String> = cells
        .iter()
        .filter(|c| c["result"] != "pass" && c["result"] != "not-applicable")
        .map(|c| format!("{} on {}: {}", c["scenario"], c["backend"], c["reason"]))
        .collect();
    assert!(
        code == 0 && failed.is_empty(),
        "conformance in {image} (exit {code}) failed:\n{}\n\n{report}",
        failed.join("\n")
    );
    let scenarios = catalogue().len();
    for backend in backends {
        let ran = cells.iter().filter(|c| c["backend"] == *backend).count();
        assert_eq!(
            ran, scenarios,
            "{image}: {ran} of {scenarios} scenarios reported on {backend}:\n{report}"
        );
    }
}
