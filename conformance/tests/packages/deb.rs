//! The .deb in the distro images (Debian 11 and trixie, Debian's
//! containernetworking-plugins installed, its .deb kept for an offline
//! reinstall): it diverts Debian's portmap, the catalogue passes with the
//! packaged binary at /usr/lib/cni/portmap, reinstalling
//! containernetworking-plugins or ours keeps ours there, removal gives
//! Debian's back.

use std::path::{Path, PathBuf};

use portmap_conformance::scenarios::catalogue;
use rstest::rstest;
use testcontainers::{Container, GenericImage};

use crate::support::distro::{self, image_available, run_catalogue, sh, BIN_DIR};
use crate::{dist_file, unavailable, VERSION};

const DIST_DIR: &str = "/opt/portmap-dist";
const PORTMAP: &str = "/usr/lib/cni/portmap";
const DISTRIB: &str = "/usr/lib/cni/portmap.distrib";

/// The static (musl) binaries, for portmap-conformance inside the images.
fn static_binaries() -> Option<PathBuf> {
    let harness = Path::new(env!("CARGO_BIN_EXE_portmap-conformance"));
    let target = harness
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("x86_64-unknown-linux-musl/release");
    if target.join("portmap-conformance").exists() {
        return Some(target);
    }
    unavailable(&format!(
        "no static portmap-conformance in {}: run scripts/release.sh",
        target.display()
    ));
    None
}

/// `script` must exit 0; its output.
fn ok(container: &Container<GenericImage>, what: &str, script: &str) -> String {
    let (code, out) = sh(container, script);
    assert_eq!(code, 0, "{what}: `{script}` exited {code}:\n{out}");
    out
}

/// The SHA-256 of `path` in the container, or "absent".
fn digest(container: &Container<GenericImage>, path: &str) -> String {
    let (_, out) = sh(
        container,
        &format!("if [ -e {path} ]; then sha256sum {path} | cut -d' ' -f1; else echo absent; fi"),
    );
    out.trim().to_string()
}

fn diversions(container: &Container<GenericImage>) -> String {
    ok(
        container,
        "dpkg-divert --list",
        "dpkg-divert --list '/usr/lib/cni/*'",
    )
    .trim()
    .to_string()
}

/// The image with the test's capabilities, the static binaries and dist/
/// mounted read-only, and a writable /proc/sys/net (as distros.rs does).
fn start(image: &str, bins: &Path, dist: &Path) -> Container<GenericImage> {
    let container = distro::start(image, &[(bins, BIN_DIR), (dist, DIST_DIR)]);
    ok(
        &container,
        "making /proc/sys/net writable",
        distro::WRITABLE_NET,
    );
    container
}

/// The catalogue against the packaged binary at /usr/lib/cni/portmap:
/// every cell passes (or does not apply) on each of `backends`.
fn catalogue_passes(container: &Container<GenericImage>, image: &str, backends: &[&str]) {
    let axes: String = backends.iter().map(|b| format!(" --backend {b}")).collect();
    let run = run_catalogue(
        container,
        image,
        &format!("--plugin {PORTMAP} --setup veth{axes}"),
    );
    run.assert_passed(&format!("conformance of the packaged portmap in {image}"));
    for backend in backends {
        assert_eq!(
            run.on(backend),
            catalogue().len(),
            "{image}: scenarios on {backend}:\n{}",
            run.text
        );
    }
    eprintln!("{image}: {}", run.closing());
}

#[rstest]
#[case::debian11("portmap-test/debian11", &["auto", "iptables-legacy"])]
#[case::trixie("portmap-test/both", &["auto", "iptables-nft"])]
fn deb_diverts_debians_portmap_and_gives_it_back(#[case] image: &str, #[case] backends: &[&str]) {
    let deb_name = format!("portmap-rs_{VERSION}-1_amd64.deb");
    let (Some(deb), Some(bins)) = (dist_file(&deb_name), static_binaries()) else {
        return;
    };
    if !image_available(image) {
        return;
    }
    let dist = deb.parent().expect("dist dir");
    let c = start(image, &bins, dist);
    let deb = format!("{DIST_DIR}/{deb_name}");
    let cnp_deb = ok(
        &c,
        "the kept .deb",
        "ls /var/cache/portmap-test/containernetworking-plugins_*.deb",
    );
    let cnp_deb = cnp_deb.trim();
    let status = ok(
        &c,
        "containernetworking-plugins installed",
        "dpkg-query -W -f='${Status} ${Version}' containernetworking-plugins",
    );
    assert!(
        status.starts_with("install ok installed"),
        "{image}: {status}"
    );
    let upstream = digest(&c, PORTMAP);
    let ours = ok(
        &c,
        "our binary in the .deb",
        &format!("dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/lib/cni/portmap | sha256sum | cut -d' ' -f1"),
    );
    let ours = ours.trim();
    let name = format!("portmap-{VERSION}-x86_64-linux");
    let release = ok(
        &c,
        "the release binary",
        &format!("tar -xzOf {DIST_DIR}/{name}.tar.gz {name}/portmap | sha256sum | cut -d' ' -f1"),
    );
    assert_eq!(
        ours,
        release.trim(),
        "the .deb's portmap is not the release binary"
    );
    assert_ne!(upstream, ours, "{image}: Debian's portmap is already ours?");
    let diverted = format!("diversion of {PORTMAP} to {DISTRIB} by portmap-rs");

    // Install over containernetworking-plugins.
    let out = ok(&c, "installing ours", &format!("dpkg -i {deb}"));
    assert_eq!(diversions(&c), diverted, "{image}:\n{out}");
    assert_eq!(digest(&c, PORTMAP), ours, "{image}: {PORTMAP} is not ours");
    assert_eq!(
        digest(&c, DISTRIB),
        upstream,
        "{image}: Debian's is not kept"
    );
    let status = ok(&c, "portmap status", &format!("{PORTMAP} status"));
    assert!(status.contains("auto-selection: "), "{image}: {status}");
    let exec = ok(
        &c,
        "the units",
        "grep -h '^ExecStart=' /usr/lib/systemd/system/portmap-restore.service /usr/lib/systemd/system/portmap-watch.service",
    );
    assert_eq!(
        exec.trim(),
        format!("ExecStart={PORTMAP} restore\nExecStart={PORTMAP} watch --interval 5"),
        "{image}"
    );

    catalogue_passes(&c, image, backends);

    // Debian's package reinstalled (what an upgrade of it does): dpkg
    // honours the diversion, its portmap lands at .distrib.
    let out = ok(
        &c,
        "reinstalling containernetworking-plugins",
        &format!("DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall {cnp_deb}"),
    );
    assert!(
        out.contains("Unpacking containernetworking-plugins"),
        "{image}: no reinstall:\n{out}"
    );
    assert_eq!(
        digest(&c, PORTMAP),
        ours,
        "{image}: the reinstall put Debian's back:\n{out}"
    );
    assert_eq!(digest(&c, DISTRIB), upstream, "{image}");

    // Ours again (an upgrade of ours): the diversion survives it.
    let out = ok(&c, "reinstalling ours", &format!("dpkg -i {deb}"));
    assert_eq!(
        diversions(&c),
        diverted,
        "{image}: after our upgrade:\n{out}"
    );
    assert_eq!(digest(&c, PORTMAP), ours, "{image}");

    // Removal gives Debian's back; purge after it changes nothing.
    let out = ok(&c, "removing ours", "dpkg -r portmap-rs");
    assert_eq!(diversions(&c), "", "{image}: diversion left:\n{out}");
    assert_eq!(
        digest(&c, PORTMAP),
        upstream,
        "{image}: Debian's not restored:\n{out}"
    );
    assert_eq!(digest(&c, DISTRIB), "absent", "{image}");
    assert_eq!(
        digest(&c, "/usr/lib/systemd/system/portmap-watch.service"),
        "absent",
        "{image}: unit left"
    );
    ok(&c, "purging ours", "dpkg --purge portmap-rs");
    assert_eq!(digest(&c, PORTMAP), upstream, "{image}: after purge");

    // The other order: ours first, Debian's package installed after it.
    ok(
        &c,
        "purging Debian's",
        "dpkg --purge containernetworking-plugins",
    );
    assert_eq!(digest(&c, PORTMAP), "absent", "{image}");
    ok(&c, "installing ours alone", &format!("dpkg -i {deb}"));
    let out = ok(
        &c,
        "installing Debian's after ours",
        &format!("DEBIAN_FRONTEND=noninteractive apt-get install -y {cnp_deb}"),
    );
    assert_eq!(
        digest(&c, PORTMAP),
        ours,
        "{image}: Debian's took the path:\n{out}"
    );
    assert_eq!(digest(&c, DISTRIB), upstream, "{image}");
    ok(&c, "purging ours", "dpkg --purge portmap-rs");
    assert_eq!(
        digest(&c, PORTMAP),
        upstream,
        "{image}: Debian's not restored"
    );
    assert_eq!(diversions(&c), "", "{image}");
}
