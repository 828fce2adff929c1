//! Helpers shared by the conformance crate's Docker-backed test files
//! (distros.rs, packages/, kubernetes.rs): prerequisites, and the distro
//! images run with testcontainers (distro.rs).
#![allow(dead_code)] // each test file uses its own subset

pub mod distro;

use std::process::Command;

/// A missing prerequisite: a failure under CI, a skip with the reason
/// printed otherwise.
pub fn unavailable(msg: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: a missing prerequisite is a failure)");
    }
    eprintln!("SKIPPED: {msg}");
}

/// Why the Docker engine cannot give `image` (no client, no engine, no
/// such image); `None` when it has it.
pub fn image_missing(image: &str) -> Option<String> {
    match Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
    {
        Err(e) => Some(format!("cannot run the docker client: {e}")),
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}
