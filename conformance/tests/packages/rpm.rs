//! The .rpm: `rpm -qlp` lists RHEL's layout (/usr/libexec/cni/portmap as a
//! %ghost, ours at /opt/cni/bin/portmap, the units), `rpm -qp --scripts`
//! and `--triggers` show the take-over; then the scriptlets run for real
//! under `rpm --root` in a scratch root (busybox as its /bin/sh) beside a
//! stand-in containernetworking-plugins owning /usr/libexec/cni/portmap:
//! install side by side, an upgrade of theirs, erase of ours and theirs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{dist_file, unavailable, VERSION};

const LIBEXEC: &str = "usr/libexec/cni/portmap";
const DISTRIB: &str = "usr/libexec/cni/portmap.distrib";
const OURS: &str = "/opt/cni/bin/portmap";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn rpm_tools() -> bool {
    let found = ["rpm", "rpmbuild"].iter().all(|t| which::which(t).is_ok());
    if !found {
        unavailable("rpm/rpmbuild not found (apt-get install rpm; scripts/install-deps.sh does)");
    }
    found
}

/// SHA-256 of portmap in dist/'s release tarball for `arch`.
fn release_digest(arch: &str) -> String {
    let name = format!("portmap-{VERSION}-{arch}-linux");
    let tarball = dist_file(&format!("{name}.tar.gz")).expect("release tarball in dist/");
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "tar -xzOf '{}' '{name}/portmap' | sha256sum",
        tarball.display()
    )));
    let digest = out.split_whitespace().next().unwrap_or_default();
    assert_eq!(digest.len(), 64, "sha256sum of {name}/portmap: {out}");
    digest.to_string()
}

#[test]
fn rpm_lists_rhels_layout_and_its_scriptlets() {
    if !rpm_tools() {
        return;
    }
    for arch in ["x86_64", "aarch64"] {
        let Some(rpm) = dist_file(&format!("portmap-rs-{VERSION}-1.{arch}.rpm")) else {
            return;
        };
        let files = run(Command::new("rpm").arg("-qlp").arg(&rpm));
        assert_eq!(
            files.lines().collect::<Vec<_>>(),
            [
                "/opt/cni",
                "/opt/cni/bin",
                "/opt/cni/bin/portmap",
                "/usr/lib/systemd/system/portmap-restore.service",
                "/usr/lib/systemd/system/portmap-watch.service",
                "/usr/libexec/cni",
                "/usr/libexec/cni/portmap",
                "/usr/share/doc/portmap-rs/README.md",
            ],
            "rpm -qlp {}",
            rpm.display()
        );
        // %ghost (flag g): it never conflicts with RHEL's file there.
        let flags = run(Command::new("rpm").arg("-qp").arg(&rpm).args([
            "--qf",
            "%{ARCH}\n[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILELINKTOS}\n]",
        ]));
        assert!(flags.starts_with(&format!("{arch}\n")), "{flags}");
        assert!(
            flags.contains("/usr/libexec/cni/portmap g lrwxrwxrwx /opt/cni/bin/portmap\n"),
            "{flags}"
        );
        assert!(
            flags.contains("/opt/cni/bin/portmap  -rwxr-xr-x \n"),
            "{flags}"
        );
        // /opt/cni/bin/portmap is the release binary of that architecture.
        let digests = run(Command::new("rpm")
            .arg("-qp")
            .arg(&rpm)
            .args(["--qf", "[%{FILENAMES} %{FILEDIGESTS}\n]"]));
        let release = release_digest(arch);
        assert!(
            digests.contains(&format!("{OURS} {release}\n")),
            "{OURS} in {} is not the {arch} release binary ({release}):\n{digests}",
            rpm.display()
        );

        let scripts = run(Command::new("rpm").arg("-qp").arg("--scripts").arg(&rpm));
        let take_over = "mv -f /usr/libexec/cni/portmap /usr/libexec/cni/portmap.distrib";
        let give_back = "mv -f /usr/libexec/cni/portmap.distrib /usr/libexec/cni/portmap";
        for section in [
            "postinstall scriptlet",
            "preuninstall scriptlet",
            "postuninstall scriptlet",
        ] {
            assert!(scripts.contains(section), "no {section}:\n{scripts}");
        }
        assert!(scripts.contains(take_over), "{scripts}");
        assert!(scripts.contains(give_back), "{scripts}");
        assert!(
            scripts.contains("ln -sfn /opt/cni/bin/portmap /usr/libexec/cni/portmap"),
            "{scripts}"
        );
        let triggers = run(Command::new("rpm").arg("-qp").arg("--triggers").arg(&rpm));
        assert!(
            triggers.contains("triggerin scriptlet (using /bin/sh) -- containernetworking-plugins"),
            "{triggers}"
        );
        assert!(triggers.contains(take_over), "{triggers}");
        assert!(
            triggers
                .contains("triggerpostun scriptlet (using /bin/sh) -- containernetworking-plugins"),
            "{triggers}"
        );
    }
}

/// A scratch root for `rpm --root`: busybox as /bin/sh and the tools the
/// scriptlets call, an empty rpm database. Removed on drop.
struct Root {
    dir: PathBuf,
    /// Debian's rpm installs and erases only with --force-debian.
    force_debian: bool,
}

impl Root {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("portmap-rpm-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).expect("scratch root");
        fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
        for tool in ["sh", "mv", "ln", "rm", "mkdir", "readlink", "[", "test"] {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool)).expect("symlink");
        }
        let force_debian = run(Command::new("rpm").arg("--help")).contains("--force-debian");
        let root = Root { dir, force_debian };
        run(root.rpm().arg("--initdb"));
        root
    }

    fn rpm(&self) -> Command {
        let mut cmd = Command::new("rpm");
        cmd.arg("--root")
            .arg(&self.dir)
            .args(["--dbpath", "/var/lib/rpm"]);
        cmd
    }

    /// `rpm OP PACKAGE` in the root (-i, -U, -e); --nodeps: no package
    /// there provides /bin/sh, which scriptlets require.
    fn tx(&self, op: &str, package: impl AsRef<std::ffi::OsStr>) -> String {
        let mut cmd = self.rpm();
        cmd.arg("--nodeps");
        if self.force_debian {
            cmd.arg("--force-debian");
        }
        run(cmd.arg(op).arg(package))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// What is at `rel`: "-> target", the file's text, or "absent".
    fn at(&self, rel: &str) -> String {
        let path = self.path(rel);
        if let Ok(target) = fs::read_link(&path) {
            return format!("-> {}", target.display());
        }
        fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned())
            .unwrap_or_else(|_| "absent".into())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A stand-in for RHEL's containernetworking-plugins VERSION: owns
/// /usr/libexec/cni/{portmap,bridge}, scripts that name their version.
fn stand_in(work: &Path, version: &str) -> PathBuf {
    let spec = work.join("cnp.spec");
    fs::write(
        &spec,
        "Name: containernetworking-plugins\nVersion: %{version}\nRelease: 1\n\
         Summary: stand-in\nLicense: Apache-2.0\nBuildArch: noarch\n\
         %description\nstand-in for the test\n\
         %install\nmkdir -p %{buildroot}/usr/libexec/cni\n\
         for p in portmap bridge; do printf '#!/bin/sh\\necho upstream %s %{version}\\n' $p \
         >%{buildroot}/usr/libexec/cni/$p; chmod 0755 %{buildroot}/usr/libexec/cni/$p; done\n\
         %files\n%dir /usr/libexec/cni\n/usr/libexec/cni/portmap\n/usr/libexec/cni/bridge\n",
    )
    .expect("write spec");
    run(Command::new("rpmbuild")
        .args(["-bb", "--quiet"])
        .arg("--define")
        .arg(format!("_topdir {}", work.join("build").display()))
        .arg("--define")
        .arg(format!("version {version}"))
        .arg(&spec));
    work.join(format!(
        "build/RPMS/noarch/containernetworking-plugins-{version}-1.noarch.rpm"
    ))
}

#[test]
fn rpm_scriptlets_take_over_usr_libexec_cni_portmap_and_give_it_back() {
    if !rpm_tools() {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() || !Path::new("/bin/busybox").exists() {
        unavailable(
            "needs root (rpm --root runs scriptlets in a chroot) and /bin/busybox (busybox-static)",
        );
        return;
    }
    let Some(ours) = dist_file(&format!("portmap-rs-{VERSION}-1.x86_64.rpm")) else {
        return;
    };
    let root = Root::new();
    let work = root.path("work");
    fs::create_dir_all(&work).expect("work dir");
    let old = stand_in(&work, "1.4.0");
    let new = stand_in(&work, "1.5.0");
    let link = format!("-> {OURS}");

    root.tx("-i", &old);
    assert_eq!(root.at(LIBEXEC), "#!/bin/sh\necho upstream portmap 1.4.0\n");
    let out = root.tx("-i", &ours);
    assert_eq!(
        root.at(LIBEXEC),
        link,
        "ours installed beside theirs:\n{out}"
    );
    assert_eq!(root.at(DISTRIB), "#!/bin/sh\necho upstream portmap 1.4.0\n");
    let ours_bin = fs::read(root.path("opt/cni/bin/portmap")).expect("our binary");
    assert!(ours_bin.starts_with(b"\x7fELF"), "not a binary at {OURS}");
    let unit = fs::read_to_string(root.path("usr/lib/systemd/system/portmap-watch.service"))
        .expect("unit");
    assert!(
        unit.contains("\nExecStart=/opt/cni/bin/portmap watch --interval 5\n"),
        "{unit}"
    );

    // Their upgrade writes their portmap; our trigger takes the path again.
    let out = root.tx("-U", &new);
    assert_eq!(root.at(LIBEXEC), link, "after their upgrade:\n{out}");
    assert_eq!(root.at(DISTRIB), "#!/bin/sh\necho upstream portmap 1.5.0\n");
    assert_eq!(
        root.at("usr/libexec/cni/bridge"),
        "#!/bin/sh\necho upstream bridge 1.5.0\n"
    );

    // Erasing ours gives theirs back.
    let out = root.tx("-e", "portmap-rs");
    assert_eq!(
        root.at(LIBEXEC),
        "#!/bin/sh\necho upstream portmap 1.5.0\n",
        "{out}"
    );
    assert_eq!(root.at(DISTRIB), "absent");
    assert_eq!(root.at(OURS.trim_start_matches('/')), "absent");

    // Ours again, then theirs erased: ours stays, their kept copy goes.
    root.tx("-i", &ours);
    let out = root.tx("-e", "containernetworking-plugins");
    assert_eq!(root.at(LIBEXEC), link, "after erasing theirs:\n{out}");
    assert_eq!(root.at(DISTRIB), "absent");
    let out = root.tx("-e", "portmap-rs");
    assert_eq!(root.at(LIBEXEC), "absent", "{out}");
    let left = run(root.rpm().arg("-qa"));
    assert_eq!(left.trim(), "", "packages left in the scratch database");
}
