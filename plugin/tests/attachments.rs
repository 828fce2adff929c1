//! An attachment (container ID, network, interface) is the unit, with the
//! real binary: two networks of one container live apart on every
//! backend, and a receipt never narrows what DEL removes (a lost journal,
//! another writer's rules of the same container).

mod common;

use common::{config, ours, tcp_8080, Rig};
use portmap_conformance::cni::{invoke, state_dir, Call};
use portmap_conformance::toolpath::{IptablesVariant, Tools};
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use serde_json::{json, Value};

fn tools_for(backend: &str) -> Tools {
    match backend {
        "iptables-legacy" => Tools {
            iptables: Some(IptablesVariant::Legacy),
            both_variants: false,
            ..Tools::default()
        },
        _ => Tools::default(),
    }
}

fn key_of(backend: &str) -> &'static str {
    if backend == "nftables" {
        "nftables"
    } else {
        "iptables"
    }
}

/// One container, two networks (eth0 on e2e, net1 on e2e-b with its own
/// address): ADD both, CHECK both, both answer; DEL of one keeps the other
/// answering and passing CHECK; DEL of the other leaves nothing.
#[rstest]
fn two_networks_of_one_container_live_apart(
    #[values("nftables", "iptables-nft", "iptables-legacy")] backend: &str,
) {
    let Some(rig) = Rig::new(tools_for(backend)) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    a.ns.exec("ip", &["addr", "add", "10.88.0.55/24", "dev", "eth0"])
        .expect("second address");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let eth0 = config(&a, Some(key_of(backend)), tcp_8080());
    let mut net1 = config(
        &a,
        Some(key_of(backend)),
        json!([{"hostPort": 9090, "containerPort": 80}]),
    );
    net1["name"] = json!("e2e-b");
    net1["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "sandbox": a.ns.path().display().to_string()}],
        "ips": [{"address": "10.88.0.55/24", "interface": 0}]
    });
    let call = |cmd: &str, ifname: &str, cfg: &Value| {
        let mut c = Call::new(cmd, "ctr", Some(&a), rig.tools.path(), cfg);
        c.ifname = ifname;
        let out = invoke(&ours(), &rig.topo.host, &c).expect("run");
        assert!(
            out.ok(),
            "{backend}: {cmd} {ifname}: {}\n{}",
            out.summary(),
            rig.ruleset()
        );
    };
    call("ADD", "eth0", &eth0);
    call("ADD", "net1", &net1);
    call("CHECK", "eth0", &eth0);
    call("CHECK", "net1", &net1);
    assert_eq!(
        rig.answers(8080).as_deref(),
        Some("a"),
        "{backend}: eth0's port"
    );
    assert_eq!(
        rig.answers(9090).as_deref(),
        Some("a"),
        "{backend}: net1's port"
    );
    // `list` names each mapping's network (nftables: from the journal).
    let listed: Vec<Value> =
        serde_json::from_str(&rig.cli(&["list", "--json"]).stdout).expect("list JSON");
    let networks: Vec<(u64, String)> = listed
        .iter()
        .filter(|m| m["family"] == "ipv4")
        .map(|m| {
            let port = m["hostPort"].as_u64().unwrap_or_default();
            (port, m["network"].as_str().unwrap_or("?").to_string())
        })
        .collect();
    for (port, network) in [(8080, "e2e"), (9090, "e2e-b")] {
        assert!(
            networks.contains(&(port, network.to_string())),
            "{backend}: list: {networks:?}"
        );
    }
    call("DEL", "net1", &net1);
    assert_eq!(rig.answers(9090), None, "{backend}: net1's DEL");
    assert_eq!(
        rig.answers(8080).as_deref(),
        Some("a"),
        "{backend}: after net1's DEL, eth0's 8080 no longer answers:\n{}",
        rig.ruleset()
    );
    call("CHECK", "eth0", &eth0);
    call("DEL", "eth0", &eth0);
    assert_eq!(rig.answers(8080), None);
    let left = rig.mappings();
    assert!(
        !left.contains("\"ctr\"") && !left.contains("CNI-DN-"),
        "{backend}: {left}"
    );
}

/// ADD ctr-a with 8080, the state directory wiped (a lost journal), ADD
/// again with 9090 as a runtime may after /run was lost: DEL then removes
/// both, not only what the second ADD's receipt names.
#[rstest]
fn a_lost_journal_leaves_no_rule_behind(#[values("nftables", "iptables-nft")] backend: &str) {
    let Some(rig) = Rig::new(tools_for(backend)) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let first = config(&a, Some(key_of(backend)), tcp_8080());
    let second = config(
        &a,
        Some(key_of(backend)),
        json!([{"hostPort": 9090, "containerPort": 80}]),
    );
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &first);
    std::fs::remove_dir_all(state_dir(rig.tools.path())).expect("wipe the journal");
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &second);
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &second);
    assert_eq!(rig.answers(8080), None, "{backend}: 8080 still answers");
    assert_eq!(rig.answers(9090), None, "{backend}: 9090 still answers");
    let left = rig.mappings();
    assert!(!left.contains("ctr-a"), "{backend}: {left}");
}

/// A rule of ctr-a that another binary added after our ADD (upstream's
/// nftables backend comments rules with the container ID, as here): our
/// receipt does not name it, and DEL removes it all the same.
#[test]
fn another_writers_rule_of_the_container_goes_with_del() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, Some("nftables"), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    assert!(rig.receipt_path("ctr-a").is_some(), "ADD kept a receipt");
    rig.topo
        .host
        .exec(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "cni_hostport",
                "hostports",
                "tcp",
                "dport",
                "7070",
                "dnat",
                "to",
                "10.88.0.5:80",
                "comment",
                "\"ctr-a\"",
            ],
        )
        .expect("another writer's rule");
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    let left = rig.mappings();
    assert!(!left.contains("ctr-a") && !left.contains("7070"), "{left}");
}
