//! `portmap restore` after a flush of ~100 containers, per backend: all
//! come back (in chunks: one transaction each on nftables, one batch per
//! family each on iptables), a DEL sent while the restore runs is
//! honoured (its container stays gone), and the newer of two containers
//! publishing one port still wins after.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{config, flush_behind_the_back, ours, rig_for};
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use serde_json::{json, Value};

const BULK: usize = 100;

/// Bulk container `i`'s config: its own address (10.88.0.100 + i) in the
/// shared sandbox, host port 9000 + i.
fn bulk_config(template: &Value, i: usize) -> Value {
    let mut cfg = template.clone();
    let mut ip = cfg["prevResult"]["ips"][0].clone();
    let addr = ip["address"].as_str().expect("address").to_string();
    let (v4, prefix) = addr.split_once('/').expect("prefix");
    let base = v4.rsplit_once('.').expect("dotted").0;
    ip["address"] = json!(format!("{base}.{}/{prefix}", 100 + i));
    cfg["prevResult"]["ips"] = json!([ip]);
    cfg["runtimeConfig"]["portMappings"] =
        json!([{"hostPort": 9000 + i, "containerPort": 80, "protocol": "tcp"}]);
    cfg
}

/// `reinstalled K container(s), ...` → K.
fn reinstalled(stdout: &str) -> Option<usize> {
    let (_, rest) = stdout.rsplit_once("reinstalled ")?;
    rest.split(' ').next()?.parse().ok()
}

#[rstest]
fn restore_after_a_flush_of_many_honours_a_concurrent_del(
    #[values("nftables", "nft", "legacy")] backend: &str,
) {
    let Some((rig, key)) = rig_for(backend) else {
        return;
    };
    let bulk = rig.topo.container("bulk", 7).expect("bulk sandbox");
    let template = config(&bulk, Some(key), json!([]));
    let cfgs: Vec<Value> = (0..BULK).map(|i| bulk_config(&template, i)).collect();
    for (i, cfg) in cfgs.iter().enumerate() {
        rig.must(&ours(), "ADD", &format!("bulk-{i}"), Some(&bulk), cfg);
    }
    // Port 8080 twice: "old-z" first, "new-a" (newer, first by name) after.
    let old = rig.topo.container("old", 5).expect("container old");
    let new = rig.topo.container("new", 6).expect("container new");
    let _so = EchoServer::start(&old.ns, "old", 80).expect("echo old");
    let _sn = EchoServer::start(&new.ns, "new", 80).expect("echo new");
    let port = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let cfg_old = config(&old, Some(key), port.clone());
    let cfg_new = config(&new, Some(key), port);
    rig.must(&ours(), "ADD", "old-z", Some(&old), &cfg_old);
    // The journal orders by entry time: keep the two apart.
    std::thread::sleep(Duration::from_millis(20));
    rig.must(&ours(), "ADD", "new-a", Some(&new), &cfg_new);
    assert_eq!(rig.answers(8080).as_deref(), Some("new"), "newest wins");
    let before: BTreeSet<_> = rig.listed().into_iter().collect();
    assert_eq!(before.len(), BULK + 2, "{before:?}");

    flush_behind_the_back(&rig, backend);
    assert_eq!(rig.answers(8080), None, "the flush took the mappings");
    let doomed = "bulk-42";
    let (restored, del) = std::thread::scope(|s| {
        let restore = s.spawn(|| rig.cli(&["restore"]));
        // Sent while the restore reads or writes: it waits for one chunk.
        let del = rig.call(&ours(), "DEL", doomed, Some(&bulk), &cfgs[42]);
        (restore.join().expect("restore thread"), del)
    });
    assert!(del.ok(), "DEL during the restore: {}", del.summary());
    assert!(
        del.elapsed < Duration::from_secs(20),
        "DEL waited {:?} for the restore",
        del.elapsed
    );
    assert_eq!(restored.exit, Some(0), "{}", restored.summary());
    // The DEL came before its reinstall (skipped) or after (removed it).
    let count = reinstalled(&restored.stdout);
    assert!(
        count == Some(BULK + 1) || count == Some(BULK + 2),
        "{}",
        restored.stdout
    );
    assert!(
        restored
            .stdout
            .contains("0 in place, 0 gone, 0 could not be restored"),
        "{}",
        restored.stdout
    );
    let after: BTreeSet<_> = rig.listed().into_iter().collect();
    let wanted: BTreeSet<_> = before.into_iter().filter(|r| r.1 != doomed).collect();
    assert_eq!(after, wanted, "every container but the deleted one is back");
    assert!(!rig.ruleset().contains(doomed), "{}", rig.ruleset());
    assert_eq!(
        rig.answers(8080).as_deref(),
        Some("new"),
        "the newer container still wins after the reinstall"
    );
    // Nothing missing now: a second pass finds every container in place.
    let again = rig.cli(&["restore"]);
    assert!(
        again.stdout.contains(&format!(
            "reinstalled 0 container(s), {} in place",
            BULK + 1
        )),
        "{}",
        again.summary()
    );
    for (i, cfg) in cfgs.iter().enumerate().filter(|(i, _)| *i != 42) {
        rig.must(&ours(), "DEL", &format!("bulk-{i}"), Some(&bulk), cfg);
    }
    rig.must(&ours(), "DEL", "new-a", Some(&new), &cfg_new);
    rig.must(&ours(), "DEL", "old-z", Some(&old), &cfg_old);
    assert!(rig.listed().is_empty(), "{:?}", rig.listed());
}
