//! Real container runtimes drive our portmap binary: podman 4 with its CNI
//! backend, and containerd's CRI plugin driven over its socket by a Rust
//! CRI client. Each runs inside a network namespace of the test's own
//! (entered with setns, like `nsenter --net`), with its state under a
//! scratch directory, an image imported from a local busybox-static root
//! filesystem (no registry), and runc. Scenarios: the published TCP and
//! UDP ports answer from a client namespace, TCP from 127.0.0.1 and by
//! hairpin; stop and remove leave no rule; ten create/remove rounds on
//! the same host port; a podman container on two CNI networks (the port
//! published on each, one network disconnected, then removed). Under CI
//! a missing runtime is a failure.

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
use world::{publish_then_remove, ten_rounds, World, PMTEST, PMTEST_B};

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
    publish_then_remove(&world, &mut Podman::new(&world, backend));
}

#[test]
fn podman_ten_rounds_on_the_same_host_port() {
    if !podman_prerequisites() {
        return;
    }
    let world = World::new("podman-rounds");
    ten_rounds(&world, &mut Podman::new(&world, None));
}

/// `podman run --network pmtest,pmtest-b -p 18080:80`: a container with
/// two CNI networks (bridge + host-local + portmap each, two subnets), one
/// published port. See `podman::two_networks` for what podman sends.
#[rstest]
fn podman_two_networks_publish_and_remove(
    #[values(None, Some("nftables"), Some("iptables"))] backend: Option<&str>,
) {
    if !podman_prerequisites() {
        return;
    }
    let world = World::new("podman-two");
    let podman = Podman::with_networks(&world, backend, &[PMTEST, PMTEST_B]);
    podman::two_networks(&world, &podman);
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
    publish_then_remove(&world, &mut Containerd::start(&world, backend));
}

#[test]
fn containerd_ten_rounds_on_the_same_host_port() {
    if !containerd_prerequisites() {
        return;
    }
    let world = World::new("containerd-rounds");
    ten_rounds(&world, &mut Containerd::start(&world, None));
}
