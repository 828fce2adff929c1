//! Real container runtimes drive our portmap binary: podman 4 with its CNI
//! backend, and containerd's CRI plugin driven over its socket by a Rust
//! CRI client. Each runs inside a network namespace of the test's own
//! (entered with setns, like `nsenter --net`), with its state under a
//! scratch directory, an image imported from a local busybox-static root
//! filesystem (no registry), and runc. Scenarios: the published TCP and
//! UDP ports answer from a client namespace, TCP from 127.0.0.1 and by
//! hairpin; stop and remove leave no rule; ten create/remove rounds on
//! the same host port. Under CI a missing runtime is a failure.

mod common;
#[path = "runtimes/containerd.rs"]
mod containerd;
#[path = "runtimes/podman.rs"]
mod podman;
#[path = "runtimes/world.rs"]
mod world;

use portmap_conformance::netns::prerequisites;
use rstest::rstest;

use containerd::Containerd;
use podman::Podman;
use world::{serve, World};

/// A limit of this process from /proc/self/limits (soft value).
fn own_limit(name: &str) -> String {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| {
            l[name.len()..]
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1024".into())
}

fn podman_prerequisites() -> bool {
    prerequisites(&[
        "podman",
        "runc",
        "conmon",
        "nft",
        "iptables-nft-save",
        "tar",
        "/bin/busybox",
    ])
}

#[rstest]
fn podman_publishes_through_our_portmap(
    #[values(None, Some("nftables"), Some("iptables"))] backend: Option<&str>,
) {
    if !podman_prerequisites() {
        return;
    }
    let world = World::new("podman");
    let podman = Podman::new(&world, backend);
    let (id, pod) = podman.start("web");
    let _servers = serve(&pod, "web");
    world
        .expect_published(&pod, "web")
        .unwrap_or_else(|e| panic!("{e}\n{}", world.ruleset()));
    assert!(
        world.ruleset().contains(&id[..12]) || world.ruleset().contains("CNI-DN-"),
        "{}",
        world.ruleset()
    );
    drop(_servers);
    podman.stop_and_remove("web");
    world.expect_unpublished().expect("port closed");
    world.expect_no_rules("after podman stop + rm");
}

#[test]
fn podman_ten_rounds_on_the_same_host_port() {
    if !podman_prerequisites() {
        return;
    }
    let world = World::new("podman-rounds");
    let podman = Podman::new(&world, None);
    for round in 0..10 {
        let name = format!("round{round}");
        let (_, pod) = podman.start(&name);
        let servers = serve(&pod, &name);
        world
            .expect_published(&pod, &name)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", world.ruleset()));
        drop(servers);
        podman.stop_and_remove(&name);
        world
            .expect_unpublished()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    world.expect_no_rules("after ten rounds");
}

fn containerd_prerequisites() -> bool {
    prerequisites(&[
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "nft",
        "iptables-nft-save",
        "tar",
        "/bin/busybox",
    ])
}

/// The kubelet's path: a pod sandbox with TCP and UDP hostPorts over CRI.
/// containerd sends capitalised mapping keys (go-cni) and two DELs (at
/// stop with the namespace, at remove without).
#[rstest]
fn containerd_cri_pod_publishes_through_our_portmap(
    #[values(None, Some("nftables"), Some("iptables"))] backend: Option<&str>,
) {
    if !containerd_prerequisites() {
        return;
    }
    let world = World::new("containerd");
    let mut containerd = Containerd::start(&world, backend);
    let (id, pod) = containerd.run_pod("web");
    let servers = serve(&pod, "web");
    world
        .expect_published(&pod, "web")
        .unwrap_or_else(|e| panic!("{e}\n{}", world.ruleset()));
    let rules = world.ruleset();
    assert!(rules.contains(&id) || rules.contains("CNI-DN-"), "{rules}");
    drop(servers);
    containerd.stop_and_remove(&id);
    world.expect_unpublished().expect("port closed");
    world.expect_no_rules("after StopPodSandbox + RemovePodSandbox");
}

#[test]
fn containerd_ten_rounds_on_the_same_host_port() {
    if !containerd_prerequisites() {
        return;
    }
    let world = World::new("containerd-rounds");
    let mut containerd = Containerd::start(&world, None);
    for round in 0..10 {
        let name = format!("round{round}");
        let (id, pod) = containerd.run_pod(&name);
        let servers = serve(&pod, &name);
        world
            .expect_published(&pod, &name)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", world.ruleset()));
        drop(servers);
        containerd.stop_and_remove(&id);
        world
            .expect_unpublished()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    world.expect_no_rules("after ten rounds");
}
