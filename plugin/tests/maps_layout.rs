//! `"nftablesLayout": "maps"` through the binary: ADD/CHECK/DEL with
//! traffic, `status`'s warning, `restore` putting a deleted element back,
//! `migrate --layout` both ways, and DEL whatever layout its config says.

mod common;

use common::{config, delete_map_element, ours, Rig};
use portmap_conformance::toolpath::Tools;
use portmap_conformance::traffic::EchoServer;
use serde_json::{json, Value};

const WARNING: &str = "warning: 1 container(s) have mappings as elements of nftables map \
    hostports_map (nftablesLayout \"maps\"), which upstream's portmap cannot delete";

fn maps_config(c: &portmap_conformance::topology::Container, port: u16, layout: &str) -> Value {
    let mut cfg = config(
        c,
        Some("nftables"),
        json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]),
    );
    cfg["nftablesLayout"] = json!(layout);
    cfg
}

#[test]
fn maps_layout_end_to_end() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let c = rig.topo.container("c0", 5).expect("container");
    let _srv = EchoServer::start(&c.ns, "c0", 80).expect("echo");
    let cfg = maps_config(&c, 8080, "maps");
    rig.must(&ours(), "ADD", "ctr-a", Some(&c), &cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    let ruleset = rig.mappings();
    for ip in [c.addr(false).to_string(), c.addr(true).to_string()] {
        let element = format!("tcp . 8080 comment \"ctr-a\" : {ip} . 80");
        assert!(ruleset.contains(&element), "{element}:\n{ruleset}");
    }
    assert!(!ruleset.contains("tcp dport 8080"), "no rule: {ruleset}");
    rig.must(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);
    assert_eq!(
        rig.listed(),
        vec![("nftables".into(), "ctr-a".into(), 8080)]
    );
    let status = rig.cli(&["status"]);
    assert!(status.stdout.contains(WARNING), "{}", status.stdout);

    // An element deleted behind our back: CHECK fails, restore repairs.
    delete_map_element(&rig, "tcp . 8080");
    let check = rig.call(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);
    assert!(!check.ok(), "CHECK passed without the element");
    assert!(
        check.stdout.contains("is missing the element tcp . 8080"),
        "{}",
        check.summary()
    );
    let restored = rig.cli(&["restore"]);
    assert_eq!(restored.exit, Some(0), "{}", restored.summary());
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&c), &cfg);

    // Back to rules: dry run changes nothing, the move keeps traffic.
    let before = rig.ruleset();
    let dry = rig.cli(&[
        "migrate",
        "--to",
        "nftables",
        "--layout",
        "rules",
        "--dry-run",
    ]);
    assert_eq!(dry.exit, Some(0), "{}", dry.summary());
    assert!(
        dry.stdout
            .contains("would move ctr-a: nftables layout -> rules (2 mappings)"),
        "{}",
        dry.stdout
    );
    assert_eq!(rig.ruleset(), before);
    let moved = rig.cli(&["migrate", "--to", "nftables", "--layout", "rules"]);
    assert_eq!(moved.exit, Some(0), "{}", moved.summary());
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    let ruleset = rig.mappings();
    assert!(!ruleset.contains("hostports_map"), "{ruleset}");
    assert!(ruleset.contains("tcp dport 8080"), "{ruleset}");
    let status = rig.cli(&["status"]);
    assert!(
        !status.stdout.contains("hostports_map"),
        "{}",
        status.stdout
    );
    rig.must(
        &ours(),
        "CHECK",
        "ctr-a",
        Some(&c),
        &maps_config(&c, 8080, "rules"),
    );
    // The journal followed: a restore keeps the rules layout.
    let again = rig.cli(&["restore"]);
    assert_eq!(again.exit, Some(0), "{}", again.summary());
    assert!(!rig.mappings().contains("hostports_map"));

    // And to maps again; then a DEL whose config says rules removes it.
    let moved = rig.cli(&["migrate", "--to", "nftables", "--layout", "maps"]);
    assert_eq!(moved.exit, Some(0), "{}", moved.summary());
    assert!(
        rig.mappings().contains("comment \"ctr-a\" :"),
        "{}",
        rig.mappings()
    );
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    rig.must(
        &ours(),
        "DEL",
        "ctr-a",
        Some(&c),
        &maps_config(&c, 8080, "rules"),
    );
    assert_eq!(rig.answers(8080), None);
    assert!(
        !rig.mappings().contains("cni_hostport {"),
        "{}",
        rig.mappings()
    );
}

#[test]
fn an_unknown_layout_is_refused() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let c = rig.topo.container("c0", 5).expect("container");
    let out = rig.call(
        &ours(),
        "ADD",
        "ctr-x",
        Some(&c),
        &maps_config(&c, 8080, "sets"),
    );
    assert!(!out.ok());
    assert!(
        out.stdout
            .contains("unrecognized nftablesLayout \\\"sets\\\""),
        "{}",
        out.summary()
    );
}

/// Upstream's iptables-only binary beside a maps container: both answer,
/// either DEL leaves the other's mapping working, and upstream ignores
/// the key (its next ADD with the same config works).
#[test]
fn upstream_beside_a_maps_container() {
    if !common::upstream_available() {
        return;
    }
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let upstream = std::path::PathBuf::from(common::UPSTREAM);
    let ours_c = rig.topo.container("c0", 5).expect("container");
    let theirs = rig.topo.container("c1", 6).expect("container");
    let _s0 = EchoServer::start(&ours_c.ns, "c0", 80).expect("echo");
    let _s1 = EchoServer::start(&theirs.ns, "c1", 80).expect("echo");
    let mut up_cfg = maps_config(&theirs, 8081, "maps");
    up_cfg.as_object_mut().map(|o| o.remove("backend"));
    let ours_cfg = maps_config(&ours_c, 8080, "maps");
    common::ours_beside_upstream(&rig, (&ours_c, &ours_cfg), (&theirs, &up_cfg));
    rig.must(&upstream, "DEL", "ctr-up", Some(&theirs), &up_cfg);
}

/// Two live containers on one hostPort (maps): the newer one's element
/// wins and restore leaves it alone (the older one's key is shadowed, as a
/// rule would be: no flapping between them on each pass); once the newer
/// one is deleted, the older one's key is missing and restore gives it back.
#[test]
fn restore_leaves_a_newer_containers_key_alone() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let older = rig.topo.container("c0", 5).expect("container");
    let newer = rig.topo.container("c1", 6).expect("container");
    let _s0 = EchoServer::start(&older.ns, "c0", 80).expect("echo");
    let _s1 = EchoServer::start(&newer.ns, "c1", 80).expect("echo");
    let (cfg_old, cfg_new) = (
        maps_config(&older, 8080, "maps"),
        maps_config(&newer, 8080, "maps"),
    );
    rig.must(&ours(), "ADD", "ctr-old", Some(&older), &cfg_old);
    rig.must(&ours(), "ADD", "ctr-new", Some(&newer), &cfg_new);
    assert_eq!(rig.answers(8080).as_deref(), Some("c1"));
    rig.must(&ours(), "CHECK", "ctr-old", Some(&older), &cfg_old);
    for pass in 0..2 {
        let restored = rig.cli(&["restore"]);
        assert_eq!(restored.exit, Some(0), "{}", restored.summary());
        assert!(
            restored
                .stdout
                .contains("reinstalled 0 container(s), 2 in place"),
            "pass {pass}: {}",
            restored.stdout
        );
        assert_eq!(rig.answers(8080).as_deref(), Some("c1"), "pass {pass}");
    }
    rig.must(&ours(), "DEL", "ctr-new", Some(&newer), &cfg_new);
    let restored = rig.cli(&["restore"]);
    assert!(
        restored.stdout.contains("reinstalled ctr-old"),
        "{}",
        restored.summary()
    );
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    rig.must(&ours(), "DEL", "ctr-old", Some(&older), &cfg_old);
}
