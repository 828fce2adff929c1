//! The .deb and .rpm that `scripts/package.sh` writes to dist/: the .deb
//! installed over Debian's containernetworking-plugins in the distro images
//! (deb.rs), the .rpm's file list and scriptlets read back and its
//! scriptlets run under `rpm --root` against a stand-in
//! containernetworking-plugins (rpm.rs).
//!
//! Needs the packages (scripts/release.sh, then scripts/package.sh), the
//! static binaries, a Docker engine and the images (scripts/test.sh
//! provides them), rpm and rpmbuild; with `CI` set their absence fails.

mod deb;
mod rpm;

use std::path::{Path, PathBuf};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A missing prerequisite: a failure under CI, a skip with the reason
/// printed otherwise.
fn unavailable(msg: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: a missing prerequisite is a failure)");
    }
    eprintln!("SKIPPED: {msg}");
}

/// `file` in dist/ at the workspace root, if package.sh wrote it.
fn dist_file(file: &str) -> Option<PathBuf> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist");
    let path = dist.join(file);
    if path.exists() {
        return Some(dist.canonicalize().expect("dist dir").join(file));
    }
    unavailable(&format!(
        "{} missing: run scripts/release.sh and then scripts/package.sh",
        path.display()
    ));
    None
}
