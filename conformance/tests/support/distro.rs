//! The distro images of scripts/build-test-images.sh under testcontainers:
//! started with the suite's capabilities and read-only mounts, a shell in
//! them, the catalogue run inside and its JSON report read back.

use std::path::Path;

use serde_json::Value;
use testcontainers::core::{AccessMode, CmdWaitFor, ExecCommand, Mount};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use super::{image_missing, unavailable};

/// Where the binaries are mounted in the container.
pub const BIN_DIR: &str = "/opt/portmap";

/// Docker mounts /proc/sys read-only; only its per-namespace `net` part is
/// made writable, so nothing outside the container's namespaces can change.
pub const WRITABLE_NET: &str =
    "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net";

/// Whether the engine answers and has the distro image; a failure under CI.
pub fn image_available(image: &str) -> bool {
    let Some(why) = image_missing(image) else {
        return true;
    };
    unavailable(&format!(
        "distro image {image} unavailable ({why}); start an engine with \
         `eval \"$(scripts/docker-engine.sh start)\"` and run scripts/build-test-images.sh"
    ));
    false
}

/// Runs `script` with sh inside the container; returns exit code and the
/// merged output.
pub fn sh(container: &Container<GenericImage>, script: &str) -> (i64, String) {
    let cmd = ExecCommand::new(["sh", "-c", &format!("{{ {script} ; }} 2>&1")])
        .with_cmd_ready_condition(CmdWaitFor::exit());
    let mut exec = container.exec(cmd).expect("exec in container");
    let out = exec.stdout_to_vec().expect("exec output");
    let code = exec.exit_code().expect("exit code").unwrap_or(-1);
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Starts the image with the capabilities the suite needs (not
/// `--privileged`) and each (host directory, container path) of `mounts`
/// bound read-only. The caller then runs [`WRITABLE_NET`] in it.
pub fn start(image: &str, mounts: &[(&Path, &str)]) -> Container<GenericImage> {
    let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
    let mut request = GenericImage::new(name, tag)
        .with_cmd(["sleep", "infinity"])
        .with_cap_add("NET_ADMIN")
        .with_cap_add("SYS_ADMIN");
    for (host, at) in mounts {
        request = request.with_mount(
            Mount::bind_mount(host.to_string_lossy(), *at).with_access_mode(AccessMode::ReadOnly),
        );
    }
    request
        .start()
        .unwrap_or_else(|e| panic!("starting {image}: {e}"))
}

/// A run of the catalogue inside a container.
pub struct Report {
    /// portmap-conformance's exit code.
    pub code: i64,
    /// Its text report (stdout and stderr).
    pub text: String,
    /// The cells of its JSON report.
    pub cells: Vec<Value>,
}

impl Report {
    /// Cells that neither passed nor do not apply, as
    /// "scenario on backend: reason".
    fn failed(&self) -> Vec<String> {
        self.cells
            .iter()
            .filter(|c| c["result"] != "pass" && c["result"] != "not-applicable")
            .map(|c| format!("{} on {}: {}", c["scenario"], c["backend"], c["reason"]))
            .collect()
    }

    /// Every cell passed or does not apply, and the run exited 0; else a
    /// failure "WHAT (exit CODE) failed:" with the cells and the report.
    pub fn assert_passed(&self, what: &str) {
        let failed = self.failed();
        assert!(
            self.code == 0 && failed.is_empty(),
            "{what} (exit {}) failed:\n{}\n\n{}",
            self.code,
            failed.join("\n"),
            self.text
        );
    }

    /// How many cells ran on `backend`.
    pub fn on(&self, backend: &str) -> usize {
        self.cells
            .iter()
            .filter(|c| c["backend"] == backend)
            .count()
    }

    /// The report's closing line about ours ("ours: ..."), or "".
    pub fn closing(&self) -> &str {
        let closing = self.text.lines().find(|l| l.starts_with("ours: "));
        closing.unwrap_or_default()
    }
}

/// `portmap-conformance run ARGS` from [`BIN_DIR`] in the container, its
/// JSON report read back (not JSON: a failure naming `image`).
pub fn run_catalogue(container: &Container<GenericImage>, image: &str, args: &str) -> Report {
    let (code, text) = sh(
        container,
        &format!("{BIN_DIR}/portmap-conformance run {args} --json /tmp/report.json"),
    );
    let (_, json) = sh(container, "cat /tmp/report.json");
    let cells: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("report of {image} is not JSON ({e}):\n{json}\n{text}"));
    let cells = cells.as_array().cloned().unwrap_or_default();
    Report { code, text, cells }
}
