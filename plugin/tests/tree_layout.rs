//! `"iptablesLayout": "tree"` through the binary, on both iptables
//! variants: ADD/CHECK/DEL with traffic, `status`'s warning, `restore`
//! putting a deleted path rule back, `migrate --layout` both ways, the
//! reused-IP A/B case, and upstream's binary beside a tree container.

mod common;

use common::{config, ours, rig_for, Rig};
use portmap_conformance::topology::Container;
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use serde_json::{json, Value};

/// 8080 = 0x1F90: its leaf, and the level above it holding its path rule.
const LEAF_8080: &str = "CNI-HOSTPORT-TCP-1F9";
const PATH_8080: [&str; 7] = [
    "CNI-HOSTPORT-TCP-1F",
    "-p",
    "tcp",
    "-m",
    "tcp",
    "--dport",
    "8080:8095",
];

fn tree_config(c: &Container, ports: &[u16], layout: &str) -> Value {
    let mappings: Vec<Value> = ports
        .iter()
        .map(|p| json!({"hostPort": p, "containerPort": 80, "protocol": "tcp"}))
        .collect();
    let mut cfg = config(c, Some("iptables"), Value::Array(mappings));
    cfg["iptablesLayout"] = json!(layout);
    cfg
}

fn kind(variant: &str) -> String {
    format!("iptables-{variant}")
}

/// The IPv4 nat table as the variant's save prints it, without comment
/// lines and counters (legacy's count the test's own packets).
fn nat(rig: &Rig, variant: &str) -> String {
    let saved = rig
        .topo
        .host
        .exec(&format!("iptables-{variant}-save"), &["-t", "nat"])
        .expect("save");
    saved
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cli_ok(rig: &Rig, args: &[&str]) -> String {
    let out = rig.cli(args);
    assert_eq!(out.exit, Some(0), "{args:?}: {}", out.summary());
    out.stdout
}

#[rstest]
#[case::nft("nft")]
#[case::legacy("legacy")]
fn tree_layout_end_to_end(#[case] variant: &str) {
    let Some((rig, _)) = rig_for(variant) else {
        return;
    };
    let c = rig.topo.container("c0", 5).expect("container");
    let _srv = EchoServer::start(&c.ns, "c0", 80).expect("echo");
    let cfg = tree_config(&c, &[8080, 20000], "tree");
    rig.must(&ours(), "ADD", "ctr-a", Some(&c), &cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    assert_eq!(rig.answers(20000).as_deref(), Some("c0"));
    let table = nat(&rig, variant);
    assert!(
        table.contains(&format!(
            "-A {LEAF_8080} -p tcp -m tcp --dport 8080 -m comment"
        )),
        "{table}"
    );
    assert!(table.contains("-A CNI-HOSTPORT-TCP-4E2 -p tcp -m tcp --dport 20000 "));
    assert!(
        !table
            .lines()
            .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT") && l.contains("multiport")),
        "no entry rule: {table}"
    );
    rig.must(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);
    let k = kind(variant);
    assert_eq!(
        rig.listed(),
        vec![
            (k.clone(), "ctr-a".into(), 8080),
            (k.clone(), "ctr-a".into(), 20000)
        ]
    );
    let status = cli_ok(&rig, &["status"]);
    assert!(
        status
            .contains("warning: 1 container(s) have mappings as leaves of the iptables port tree")
            && status.contains(&format!("portmap migrate --to {k} --layout rules")),
        "{status}"
    );

    // A path rule deleted behind our back: CHECK fails, restore repairs.
    let mut args = vec!["-t", "nat", "-D"];
    args.extend(PATH_8080);
    args.extend(["-j", LEAF_8080]);
    rig.topo
        .host
        .exec(&format!("iptables-{variant}"), &args)
        .expect("delete a path rule");
    assert_ne!(rig.answers(8080).as_deref(), Some("c0"));
    let check = rig.call(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);
    assert!(!check.ok(), "CHECK passed without the path rule");
    assert!(check.stdout.contains("is missing"), "{}", check.summary());
    cli_ok(&rig, &["restore"]);
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);

    // Back to rules: a dry run changes nothing, the move keeps traffic.
    let before = nat(&rig, variant);
    let dry = cli_ok(
        &rig,
        &["migrate", "--to", &k, "--layout", "rules", "--dry-run"],
    );
    assert!(
        dry.contains(&format!(
            "would move ctr-a: {k} layout -> rules (4 mappings)"
        )),
        "{dry}"
    );
    assert_eq!(nat(&rig, variant), before);
    cli_ok(&rig, &["migrate", "--to", &k, "--layout", "rules"]);
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    assert_eq!(rig.answers(20000).as_deref(), Some("c0"));
    let table = nat(&rig, variant);
    assert!(
        !table.contains("CNI-HOSTPORT-TCP"),
        "the tree went: {table}"
    );
    assert!(table.contains("--dports 8080,20000 -j CNI-DN-"), "{table}");
    assert!(!cli_ok(&rig, &["status"]).contains("port tree"));
    let rules_cfg = tree_config(&c, &[8080, 20000], "rules");
    rig.must(&ours(), "CHECK", "ctr-a", Some(&c), &rules_cfg);
    // The journal followed: a restore keeps the rules layout.
    cli_ok(&rig, &["restore"]);
    assert!(!nat(&rig, variant).contains("CNI-HOSTPORT-TCP"));

    // And to the tree again; then a DEL whose config says rules removes it.
    let moved = cli_ok(&rig, &["migrate", "--to", &k, "--layout", "tree"]);
    assert!(
        moved.contains(&format!("moved ctr-a: {k} layout -> tree")),
        "{moved}"
    );
    assert!(nat(&rig, variant).contains(LEAF_8080));
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);
    rig.must(&ours(), "DEL", "ctr-a", Some(&c), &rules_cfg);
    assert_eq!(rig.answers(8080), None);
    let left = nat(&rig, variant);
    assert!(
        !left.contains("CNI-"),
        "the last DEL takes every chain: {left}"
    );
}

/// A gets IP X and hostPort P and dies without a DEL; B gets X and P too:
/// B's leaf rule goes above A's, and A's late DEL leaves B answering.
#[rstest]
#[case::nft("nft")]
#[case::legacy("legacy")]
fn tree_reused_ip_newest_add_wins_and_a_late_del_keeps_it(#[case] variant: &str) {
    let Some((rig, _)) = rig_for(variant) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let cfg_a = tree_config(&a, &[8080], "tree");
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg_a);
    drop(a);
    let b = rig.topo.container("b", 5).expect("container b");
    let _srv = EchoServer::start(&b.ns, "b", 80).expect("echo");
    let cfg_b = tree_config(&b, &[8080, 8082], "tree");
    rig.must(&ours(), "ADD", "ctr-b", Some(&b), &cfg_b);
    assert_eq!(rig.answers(8080).as_deref(), Some("b"));
    rig.must(&ours(), "DEL", "ctr-a", None, &cfg_a);
    for port in [8080, 8082] {
        assert_eq!(rig.answers(port).as_deref(), Some("b"), "port {port}");
    }
    rig.must(&ours(), "CHECK", "ctr-b", Some(&b), &cfg_b);
    let table = nat(&rig, variant);
    assert!(!table.contains("ctr-a"), "A survived: {table}");
    rig.must(&ours(), "DEL", "ctr-b", Some(&b), &cfg_b);
    assert!(!nat(&rig, variant).contains("CNI-"));
}

/// Upstream's binary beside a tree container: both answer, either DEL
/// leaves the other's mapping working; after `migrate --layout rules`
/// upstream's DEL removes our container (switching binaries back).
#[rstest]
#[case::nft("nft")]
#[case::legacy("legacy")]
fn upstream_beside_a_tree_container(#[case] variant: &str) {
    if !common::upstream_available() {
        return;
    }
    let Some((rig, _)) = rig_for(variant) else {
        return;
    };
    let upstream = std::path::PathBuf::from(common::UPSTREAM);
    let ours_c = rig.topo.container("c0", 5).expect("container");
    let theirs = rig.topo.container("c1", 6).expect("container");
    let _s0 = EchoServer::start(&ours_c.ns, "c0", 80).expect("echo");
    let _s1 = EchoServer::start(&theirs.ns, "c1", 80).expect("echo");
    let ours_cfg = tree_config(&ours_c, &[8080], "tree");
    let mut up_cfg = tree_config(&theirs, &[8081], "tree");
    up_cfg.as_object_mut().map(|o| o.remove("backend"));
    common::ours_beside_upstream(&rig, (&ours_c, &ours_cfg), (&theirs, &up_cfg));

    // Switching back to upstream's binary: migrate first, then its DEL.
    rig.must(&ours(), "ADD", "ctr-ours", Some(&ours_c), &ours_cfg);
    cli_ok(
        &rig,
        &["migrate", "--to", &kind(variant), "--layout", "rules"],
    );
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    rig.must(&upstream, "DEL", "ctr-ours", Some(&ours_c), &ours_cfg);
    assert_eq!(rig.answers(8080), None);
    assert_eq!(rig.answers(8081).as_deref(), Some("c1"));
    rig.must(&upstream, "DEL", "ctr-up", Some(&theirs), &up_cfg);
    let left = nat(&rig, variant);
    assert!(!left.contains("CNI-DN-"), "{left}");
}

/// A tree container with conditions cannot be read back into a request:
/// `migrate --layout rules` fails and says why, rather than skipping it
/// (upstream's DEL would then fail on it for ever).
#[test]
fn migrating_a_tree_container_with_conditions_fails_aloud() {
    let Some((rig, _)) = rig_for("legacy") else {
        return;
    };
    let c = rig.topo.container("c0", 5).expect("container");
    let mut cfg = tree_config(&c, &[8080], "tree");
    cfg["conditionsV4"] = json!(["-s", "10.88.0.0/16"]);
    rig.must(&ours(), "ADD", "ctr-a", Some(&c), &cfg);
    let before = nat(&rig, "legacy");
    assert!(before.contains(LEAF_8080), "{before}");
    let out = rig.cli(&["migrate", "--to", "iptables-legacy", "--layout", "rules"]);
    assert_eq!(out.exit, Some(1), "{}", out.summary());
    assert!(out.stderr.contains("match conditions"), "{}", out.summary());
    assert_eq!(nat(&rig, "legacy"), before);
    rig.must(&ours(), "DEL", "ctr-a", Some(&c), &cfg);
    assert!(!nat(&rig, "legacy").contains("CNI-"));
}
