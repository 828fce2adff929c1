//! The Kubernetes install (contrib/kubernetes): the manifests pass
//! kubernetes-validate's bundled schemas offline (a broken copy does not);
//! the image (portmap-rs/portmap, scripts/build-test-images.sh) run under
//! the local Docker engine as the DaemonSet runs it: its install container
//! puts an executable portmap into a temporary "node" bin directory and a
//! second run replaces it by rename (a reader never sees a partial file, a
//! running old binary does not stop it); its watch container, in a network
//! namespace of the test's instead of the host's, restores a mapping after
//! the test deletes our table there. Needs root, a Docker engine and the
//! image; under CI their absence is a failure.

#[path = "kubernetes/manifest.rs"]
mod manifest;
mod support;
#[path = "kubernetes/watch.rs"]
mod watch;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use portmap_conformance::netns::prerequisites;

use manifest::{container, daemonset, docker, docker_args, image, Named, Scratch};

/// The portmap binary built beside this test (`cargo build -p portmap`, or
/// the workspace's `cargo test`): the runtime's plugin runs on the node.
fn ours() -> PathBuf {
    let harness = Path::new(env!("CARGO_BIN_EXE_portmap-conformance"));
    let ours = harness.with_file_name("portmap");
    assert!(
        ours.exists(),
        "{} missing: run `cargo build -p portmap` or the workspace's `cargo test`",
        ours.display()
    );
    ours
}

#[test]
fn manifests_validate_offline_and_say_what_the_issue_asks() {
    let validate = manifest::venv_tool("kubernetes-validate");
    if !manifest::have(
        &validate,
        "scripts/install-deps.sh installs it into the tools venv",
    ) {
        return;
    }
    let files = manifest::manifests();
    assert!(!files.is_empty(), "no manifest in contrib/kubernetes");
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches(" passed ").count(), files.len(), "{said}");

    // A misspelt field (ignored by a lenient apply) and a wrong type fail.
    let scratch = Scratch::new("validate");
    let text = std::fs::read_to_string(&files[0]).expect("manifest");
    for (name, broken) in [
        ("typo", text.replace("hostNetwork:", "hostNetwrok:")),
        (
            "type",
            text.replace("mountPropagation: HostToContainer", "mountPropagation: 7"),
        ),
    ] {
        assert_ne!(broken, text, "{name}: nothing replaced");
        let copy = scratch.0.join(format!("{name}.yaml"));
        std::fs::write(&copy, broken).expect("copy");
        let out = Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(&copy)
            .output()
            .expect("kubernetes-validate");
        assert!(!out.status.success(), "{name} passed");
    }

    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["hostNetwork"], true);
    assert!(
        spec["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint: {}",
        spec["tolerations"]
    );
    let install = container(&ds, "install");
    let watch = container(&ds, "watch");
    for c in [&install, &watch] {
        assert_eq!(
            c["image"],
            image().as_str(),
            "the tag the build script makes"
        );
    }
    assert!(spec["initContainers"][0]["name"] == "install");
    assert_eq!(install["args"][0], "install");
    assert_eq!(watch["args"][0], "watch");
    let adds = &watch["securityContext"]["capabilities"]["add"];
    assert!(
        adds.as_array()
            .into_iter()
            .flatten()
            .any(|c| c == "NET_ADMIN"),
        "{adds}"
    );
    let netns = watch["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/run/netns")
        .expect("/run/netns mounted");
    assert_eq!(netns["readOnly"], true);
    assert_eq!(netns["mountPropagation"], "HostToContainer");
}

/// Reads `path` whole; `None` while it is missing.
fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn image_installs_atomically_into_the_node_bin_directory() {
    if !prerequisites(&["docker", "/bin/busybox"]) || !manifest::image_available() {
        return;
    }
    let ds = daemonset();
    let node_bin = Scratch::new("bin");
    let bin = node_bin.0.clone();
    let run = |label: &str| {
        let name = format!("pmk8s-install-{label}-{}", std::process::id());
        let _named = Named(name.clone());
        let mut args = vec!["run".to_string(), "--rm".into(), "--name".into(), name];
        args.extend(docker_args(&ds, "install", &|_| bin.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)
    };
    let target = bin.join("portmap");

    let first = run("first");
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{first:?}");
    assert!(
        said.starts_with("portmap install: /host/opt/cni/bin/portmap ("),
        "{said}"
    );
    let meta = std::fs::metadata(&target).expect("installed");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    let version = Command::new(&target)
        .arg("--version")
        .output()
        .expect("run it");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("portmap {}", env!("CARGO_PKG_VERSION"))
    );
    let new = read(&target).expect("new");

    // An older "portmap" (busybox), running: cp onto it would fail with
    // ETXTBSY or rewrite it in place.
    let old_path = bin.join(".old");
    std::fs::copy("/bin/busybox", &old_path).expect("busybox");
    std::fs::rename(&old_path, &target).expect("old in place");
    let old = read(&target).expect("old");
    assert_ne!(old, new);
    let old_ino = std::fs::metadata(&target).expect("old").ino();
    let mut running = Command::new(&target)
        .arg0("sleep")
        .arg("30")
        .spawn()
        .expect("the old binary runs");

    // Reader: every read sees one complete file, old or new.
    let done = AtomicBool::new(false);
    let (olds, news, torn, second) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut olds, mut news, mut torn) = (0u32, 0u32, Vec::new());
            for _ in 0..200_000 {
                let finished = done.load(Ordering::Acquire);
                match read(&target) {
                    Some(b) if b == old => olds += 1,
                    Some(b) if b == new => news += 1,
                    Some(b) => torn.push(b.len()),
                    None => torn.push(0),
                }
                if finished {
                    break;
                }
            }
            (olds, news, torn)
        });
        let second = run("second");
        done.store(true, Ordering::Release);
        let (olds, news, torn) = reader.join().expect("reader");
        (olds, news, torn, second)
    });
    assert!(second.status.success(), "{second:?}");
    eprintln!(
        "reads during the second install: {olds} old, {news} new, {} torn",
        torn.len()
    );
    assert!(
        torn.is_empty(),
        "partial or missing file seen (sizes {torn:?})"
    );
    assert!(
        olds > 0 && news > 0,
        "the reader overlapped the swap: {olds} old, {news} new"
    );
    assert_eq!(read(&target).as_ref(), Some(&new));
    assert_ne!(
        std::fs::metadata(&target).expect("new").ino(),
        old_ino,
        "a new inode"
    );
    assert!(
        running.try_wait().expect("wait").is_none(),
        "the old binary still runs"
    );
    let _ = running.kill();
    let _ = running.wait();
    let left: Vec<String> = std::fs::read_dir(&bin)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["portmap"], "no temp file left");
}
