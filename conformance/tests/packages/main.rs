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
#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use support::unavailable;

const VERSION: &str = env!("CARGO_PKG_VERSION");

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
