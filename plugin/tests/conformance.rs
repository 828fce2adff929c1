//! The conformance catalogue over our binary: one test per scenario ×
//! backend cell, failing with the scenario's reason and the ruleset.

use std::path::{Path, PathBuf};

use portmap_conformance::chain;
use portmap_conformance::cni::negotiate;
use portmap_conformance::netns::prerequisites;
use portmap_conformance::report::Verdict;
use portmap_conformance::run::{run_cell, CellSpec};
use portmap_conformance::scenarios::{catalogue, Axis};
use portmap_conformance::topology::Setup;
use rstest::rstest;

const UPSTREAM: &str = "/usr/lib/cni/portmap";
const SCENARIOS: [&str; 37] = [
    "tcp",
    "udp",
    "sctp",
    "ipv6",
    "dual-stack",
    "localhost",
    "hairpin",
    "many-mappings",
    "host-ip-v4",
    "host-ip-v6",
    "snat-false",
    "masq-all",
    "mark-masq-bit",
    "conditions",
    "re-add",
    "reused-ip-overlap",
    "reused-ip-disjoint",
    "del-idempotent",
    "check-detects-damage",
    "stale-udp-conntrack",
    "fib-guard",
    "gc",
    "parallel-add",
    "interop-ours-then-reference",
    "interop-reference-then-ours",
    "port-range",
    "interop-port-range",
    "localnet-guard",
    "two-networks",
    "gc-other-network",
    "lost-journal",
    "unreadable-nat",
    "client-containerd",
    "client-cri-o",
    "client-podman",
    "client-cnitool",
    "client-multus",
];

#[test]
fn the_matrix_covers_the_whole_catalogue() {
    let names: Vec<&str> = catalogue().iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        SCENARIOS.to_vec(),
        "update SCENARIOS and the #[values] below"
    );
}

#[rstest]
fn cell(
    #[values(
        "tcp",
        "udp",
        "sctp",
        "ipv6",
        "dual-stack",
        "localhost",
        "hairpin",
        "many-mappings",
        "host-ip-v4",
        "host-ip-v6",
        "snat-false",
        "masq-all",
        "mark-masq-bit",
        "conditions",
        "re-add",
        "reused-ip-overlap",
        "reused-ip-disjoint",
        "del-idempotent",
        "check-detects-damage",
        "stale-udp-conntrack",
        "fib-guard",
        "gc",
        "parallel-add",
        "interop-ours-then-reference",
        "interop-reference-then-ours",
        "port-range",
        "interop-port-range",
        "localnet-guard",
        "two-networks",
        "gc-other-network",
        "lost-journal",
        "unreadable-nat",
        "client-containerd",
        "client-cri-o",
        "client-podman",
        "client-cnitool",
        "client-multus"
    )]
    scenario: &str,
    #[values(
        "nftables",
        "nftables-maps",
        "iptables-nft",
        "iptables-nft-tree",
        "iptables-legacy",
        "auto"
    )]
    backend: &str,
    #[values(Setup::Veth, Setup::Chain)] setup: Setup,
) {
    if !prerequisites(&[
        "nft",
        "iptables-nft-save",
        "iptables-legacy-save",
        "conntrack",
    ]) {
        return;
    }
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_portmap"));
    let reference = Path::new(UPSTREAM).exists().then_some(Path::new(UPSTREAM));
    if reference.is_none() && std::env::var_os("CI").is_some() && scenario.starts_with("interop") {
        panic!("{UPSTREAM} missing (CI is set): scripts/install-deps.sh installs containernetworking-plugins");
    }
    let all = catalogue();
    let s = all
        .iter()
        .find(|s| s.name == scenario)
        .expect("scenario in catalogue");
    let axis = Axis::parse(backend).expect("backend");
    let mut speakers = vec![plugin.as_path()];
    speakers.extend(reference);
    if setup == Setup::Chain {
        speakers.extend([
            Path::new(chain::BRIDGE_PLUGIN),
            Path::new(chain::HOST_LOCAL_PLUGIN),
        ]);
    }
    let cni_version = negotiate(&speakers).expect("a CNI version every binary speaks");
    let spec = CellSpec {
        plugin: &plugin,
        reference,
        binary: portmap_conformance::report::OURS,
        setup,
        cni_version: &cni_version,
    };
    let cell = run_cell(&spec, axis, s);
    match cell.verdict {
        Verdict::Pass => {}
        Verdict::NotApplicable(why) => eprintln!("not applicable: {why}"),
        Verdict::Fail(why) => panic!(
            "{scenario} on {backend} ({} setup) failed:\n{why}",
            setup.name()
        ),
    }
}
