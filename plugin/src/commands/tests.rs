use portmap_backends::ContainerKey;
use serde_json::{json, Value};
use std::path::PathBuf;

use super::run;
use super::testing::FakeHost;
use crate::cni::{CniError, Code, Command, Env};
use crate::journal::Journal;

fn env() -> Env {
    Env {
        container_id: "c1".into(),
        netns: String::new(),
        ifname: "eth0".into(),
        path: "/opt/cni/bin".into(),
        args: String::new(),
    }
}

fn config(mappings: Value, version: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": version, "name": "net", "type": "portmap",
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                       "ips": [{"address": "10.0.0.2/24", "interface": 0}]}
    }))
    .expect("json")
}

fn one_mapping() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
}

#[test]
fn add_without_mappings_touches_no_firewall() {
    let host = FakeHost::new(vec![("fake", true)]);
    let out = run(Command::Add, &env(), &config(json!([]), "1.0.0"), &host)
        .expect("ok")
        .expect("json");
    assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

#[test]
fn add_installs_then_applies_host_side_effects() {
    let host = FakeHost::new(vec![("fake", true)]);
    host.ours_was_the_last_write();
    let out = run(Command::Add, &env(), &config(one_mapping(), "0.4.0"), &host)
        .expect("ok")
        .expect("json");
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(out["ips"][0]["version"], "4");
    assert_eq!(host.calls(), vec!["fake add c1 (new)", "after_add c1"]);
}

/// DEL as runtimes send it: network `net`, no mappings.
fn del_net(host: &FakeHost) -> Result<Option<Value>, CniError> {
    run(
        Command::Del,
        &env(),
        br#"{"cniVersion":"1.0.0","name":"net"}"#,
        host,
    )
}

fn journaled(host: &FakeHost) -> Vec<(String, String)> {
    Journal::at(host.journal.clone())
        .entries()
        .into_iter()
        .map(|e| {
            let (_, e) = e.expect("readable");
            (e.request.key.container_id, e.backend.name().to_string())
        })
        .collect()
}

#[test]
fn add_journals_the_container_and_del_and_gc_remove_it() {
    let host = FakeHost::new(vec![("fake", true)]);
    run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("ok");
    assert_eq!(
        journaled(&host),
        vec![("c1".to_string(), "nftables".to_string())]
    );
    let entry = &Journal::at(host.journal.clone()).entries()[0];
    let request = &entry.as_ref().expect("entry").1.request;
    assert_eq!(request.mappings[0].host_port, 8080);
    assert_eq!(
        request.v4.map(|a| a.addr.to_string()),
        Some("10.0.0.2".into())
    );
    del_net(&host).expect("ok");
    assert_eq!(journaled(&host), vec![]);

    run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("ok");
    let keep_c1 = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
    run(Command::Gc, &env(), keep_c1, &host).expect("ok");
    assert_eq!(journaled(&host).len(), 1, "a valid attachment stays");
    let other_network = br#"{"cniVersion":"1.1.0","name":"other","cni.dev/valid-attachments":[]}"#;
    run(Command::Gc, &env(), other_network, &host).expect("ok");
    assert_eq!(journaled(&host).len(), 1, "another network's GC leaves it");
    let keep_none = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[]}"#;
    run(Command::Gc, &env(), keep_none, &host).expect("ok");
    assert_eq!(journaled(&host), vec![]);
}

/// ADD looks for earlier rules to replace only where the journal says
/// there may be some: a re-ADD, or a DEL that could not finish.
#[test]
fn only_a_container_the_journal_knows_is_searched_for_rules_to_replace() {
    let mut host = FakeHost::new(vec![("fake", true)]);
    let add = |host: &FakeHost| {
        run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), host).expect("add")
    };
    host.ours_was_the_last_write();
    add(&host);
    add(&host);
    del_net(&host).expect("del");
    // The last DEL took the ledger with the journal's last file (the
    // next ADD would read everything: see the end of this test).
    host.ours_was_the_last_write();
    add(&host);
    host.unreadable = vec!["legacy nat tables, no iptables-legacy".into()];
    del_net(&host).expect_err("rules may remain");
    assert_eq!(
        journaled(&host),
        vec![],
        "retired: out of a restore's sight"
    );
    host.unreadable = vec![];
    add(&host);
    let keep_none = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[]}"#;
    run(Command::Gc, &env(), keep_none, &host).expect("gc");
    host.ours_was_the_last_write();
    add(&host);
    // GC also clears what a failed DEL retired.
    host.unreadable = vec!["legacy nat tables, no iptables-legacy".into()];
    del_net(&host).expect_err("rules may remain");
    host.unreadable = vec![];
    run(Command::Gc, &env(), keep_none, &host).expect("gc");
    host.ours_was_the_last_write();
    add(&host);
    // Without a ledger that holds (lost with the journal, or another
    // writer since our last write), an unknown ID is searched too.
    del_net(&host).expect("del");
    add(&host);
    del_net(&host).expect("del");
    host.ours_was_the_last_write();
    let journal = Journal::at(host.journal.clone());
    journal.write_ledger(Some(6));
    add(&host);
    let adds: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("fake add"))
        .collect();
    assert_eq!(
        adds,
        [
            "fake add c1 (new)",
            "fake add c1",
            "fake add c1 (new)",
            "fake add c1",
            "fake add c1 (new)",
            "fake add c1 (new)",
            "fake add c1",
            "fake add c1"
        ]
    );
}

/// Every backend's DEL runs, and every failure reaches the runtime.
#[test]
fn del_reports_every_backends_error() {
    let mut host = FakeHost::new(vec![("a", true), ("b", true), ("c", true)]);
    host.failing_dels = vec!["a", "c"];
    let e = del_net(&host).expect_err("two failed");
    assert_eq!(e.msg, "a (nft) rejected the batch (and 1 more failure(s))");
    assert!(
        e.details
            .contains("a (nft) rejected the batch: delete refused")
            && e.details
                .contains("c (nft) rejected the batch: delete refused"),
        "{}",
        e.details
    );
    let dels: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.contains(" del "))
        .collect();
    assert_eq!(dels, ["a del c1", "b del c1", "c del c1"]);
}

/// A failure after the rules went in (route_localnet) takes the
/// attachment back out: its rules and its journal entry.
#[test]
fn a_failing_host_side_rolls_the_add_back() {
    let mut host = FakeHost::new(vec![("fake", true)]);
    host.failing_after_add = true;
    let err =
        run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host).expect_err("ADD fails");
    assert!(err.msg.contains("route_localnet"), "{}", err.msg);
    assert_eq!(
        err.details, "the attachment's rules were removed again",
        "{err:?}"
    );
    let calls = host.calls();
    assert_eq!(calls[..2], ["fake add c1", "after_add c1"], "{calls:?}");
    assert!(calls[2..].contains(&"fake del c1".to_string()), "{calls:?}");
    assert_eq!(journaled(&host), vec![], "no entry left to restore");
}

/// The receipt an ADD returns is kept beside the entry and handed back
/// to that backend's DEL (another backend deletes as always); DEL
/// removes it with the entry.
#[test]
fn del_hands_the_add_receipt_to_the_backend_that_made_it() {
    let mut host = FakeHost::new(vec![("receipting", true), ("other", true)]);
    host.receipting = vec!["receipting"];
    run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("add");
    let receipts = Journal::at(host.journal.clone()).receipts(&ContainerKey {
        network: "net".into(),
        container_id: "c1".into(),
    });
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].backend.name(),
        "nftables",
        "the receipting fake is the first: nftables"
    );
    del_net(&host).expect("del");
    let dels: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.contains(" del "))
        .collect();
    assert_eq!(dels, ["receipting del c1 by [42]", "other del c1"]);
    assert!(!host.journal.exists(), "entry and receipt gone");
}

#[test]
fn auto_falls_back_to_iptables_when_the_nftables_transaction_fails() {
    let mut host = FakeHost::new(vec![("nftables", true), ("iptables-nft", true)]);
    host.recording_network = vec!["iptables-nft"];
    host.failing_adds = vec!["nftables"];
    host.ours_was_the_last_write();
    run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host).expect("fell back");
    assert_eq!(
        host.calls(),
        vec![
            "nftables add c1 (new)",
            "iptables-nft add c1 (new)",
            "after_add c1"
        ]
    );
    assert_eq!(
        journaled(&host),
        vec![("c1".to_string(), "iptables-nft".to_string())]
    );

    // An explicit nftables fails with nft's error, and journals nothing.
    let mut host = FakeHost::new(vec![("nftables", true), ("iptables-nft", true)]);
    host.failing_adds = vec!["nftables"];
    host.ours_was_the_last_write();
    let mut cfg: Value = serde_json::from_slice(&config(one_mapping(), "1.0.0")).expect("json");
    cfg["backend"] = json!("nftables");
    let stdin = serde_json::to_vec(&cfg).expect("json");
    let e = run(Command::Add, &env(), &stdin, &host).expect_err("no fallback");
    assert_eq!(e.msg, "nftables (nft) rejected the batch");
    assert_eq!(host.calls(), vec!["nftables add c1 (new)"]);
    assert_eq!(journaled(&host), vec![]);
}

#[test]
fn a_failed_add_leaves_no_entry_and_an_unwritable_journal_no_rules() {
    let mut host = FakeHost::new(vec![("failing", true)]);
    host.failing_adds = vec!["failing"];
    run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host).expect_err("refused");
    assert_eq!(journaled(&host), vec![]);

    let mut host = FakeHost::new(vec![("nftables", true), ("iptables-nft", true)]);
    host.journal = PathBuf::from("/proc/portmap-state-cannot-exist/netns-1-2");
    let e = run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host)
        .expect_err("no journal, no ADD");
    assert!(
        e.msg
            .starts_with("cannot create journal directory /proc/portmap-state-cannot-exist"),
        "{}",
        e.msg
    );
    assert!(
        !e.details.contains("nftables before it"),
        "a journal failure is no reason to try iptables: {}",
        e.details
    );
    assert!(
        host.calls().is_empty(),
        "no rules were made: {:?}",
        host.calls()
    );
}

#[test]
fn add_without_prev_result_is_an_error() {
    let host = FakeHost::new(vec![("fake", true)]);
    let stdin = br#"{"cniVersion":"1.0.0","name":"net","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1}]}}"#;
    let e = run(Command::Add, &env(), stdin, &host).expect_err("error");
    assert_eq!(e.msg, "must be called as chained plugin");
    let e = run(Command::Check, &env(), stdin, &host).expect_err("error");
    assert_eq!(e.msg, "Required prevResult missing");
}

#[test]
fn del_of_an_id_too_long_for_the_journal_sweeps_and_succeeds() {
    let mut host = FakeHost::new(vec![("a", true)]);
    // A journal that could not even be opened: not looked at.
    host.journal = PathBuf::from("/proc/portmap-state-cannot-exist/netns-1-2");
    let long = Env {
        container_id: "c".repeat(300),
        ..env()
    };
    let add = run(Command::Add, &long, &config(one_mapping(), "1.0.0"), &host);
    assert!(add
        .expect_err("refused")
        .msg
        .contains("too long for the journal"));
    assert!(host.calls().is_empty(), "no rule: {:?}", host.calls());
    let del = br#"{"cniVersion":"1.0.0","name":"net"}"#;
    run(Command::Del, &long, del, &host).expect("DEL succeeds");
    assert_eq!(
        host.calls(),
        vec![format!("a del {}", long.container_id), "after_del".into()]
    );
}

#[test]
fn del_sweeps_every_backend_even_without_mappings() {
    let host = FakeHost::new(vec![("a", true), ("b", true)]);
    del_net(&host).expect("ok");
    assert_eq!(host.calls(), vec!["a del c1", "b del c1", "after_del"]);
}

#[test]
fn del_fails_while_a_place_that_may_hold_rules_is_unreadable() {
    let mut host = FakeHost::new(vec![("a", true)]);
    host.unreadable = vec!["nftables table exists but nft is missing".into()];
    let e = run(
        Command::Del,
        &env(),
        br#"{"cniVersion":"1.0.0","name":"net"}"#,
        &host,
    )
    .expect_err("not a success the runtime would never retry");
    assert_eq!(
        e.msg,
        "could not read every firewall that may hold the container's rules"
    );
    assert_eq!(e.details, "nftables table exists but nft is missing");
    assert_eq!(
        host.calls(),
        vec!["a del c1", "after_del"],
        "what it can read is cleaned"
    );
}

#[test]
fn check_falls_back_to_the_backend_holding_the_rules() {
    let host = FakeHost::new(vec![
        ("selected", false),
        ("selected", false),
        ("other", true),
    ]);
    run(
        Command::Check,
        &env(),
        &config(one_mapping(), "1.0.0"),
        &host,
    )
    .expect("ok");
    assert_eq!(host.calls(), vec!["selected check c1", "other check c1"]);
    let host = FakeHost::new(vec![("only", false)]);
    let e = run(
        Command::Check,
        &env(),
        &config(one_mapping(), "1.0.0"),
        &host,
    )
    .expect_err("fails");
    assert_eq!(e.msg, "only: rule missing");
}

#[test]
fn check_needs_0_4_0_and_status_gc_need_1_1_0() {
    let host = FakeHost::new(vec![("fake", true)]);
    let e = run(
        Command::Check,
        &env(),
        &config(one_mapping(), "0.3.1"),
        &host,
    )
    .expect_err("old");
    assert_eq!(
        (e.code, e.msg.as_str()),
        (
            Code::IncompatibleVersion,
            "config version does not allow CHECK"
        )
    );
    let e = run(Command::Status, &env(), &config(json!([]), "1.0.0"), &host).expect_err("old");
    assert_eq!(e.msg, "config version does not allow STATUS");
    run(Command::Status, &env(), &config(json!([]), "1.1.0"), &host).expect("ok");
}

#[test]
fn gc_passes_network_and_valid_attachments() {
    let host = FakeHost::new(vec![("a", true)]);
    let stdin = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}"#;
    run(Command::Gc, &env(), stdin, &host).expect("ok");
    assert_eq!(host.calls(), vec![r#"a gc net keep {"keep"}"#]);
}

/// Either spec key, or both (their union), is the list every backend
/// keeps; neither key asks no backend to collect anything.
#[rstest::rstest]
#[case::valid_attachments(
    r#""cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]"#,
    Some(r#"{"keep"}"#)
)]
#[case::spec_text_attachments(
    r#""cni.dev/attachments":[{"containerID":"keep","ifname":"eth0"}]"#,
    Some(r#"{"keep"}"#)
)]
#[case::both_keys_union(r#""cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]"#, Some(r#"{"a", "b"}"#))]
#[case::neither_key(r#""other":1"#, None)]
fn gc_keeps_what_either_key_lists(#[case] keys: &str, #[case] keep: Option<&str>) {
    let host = FakeHost::new(vec![("a", true), ("b", true)]);
    let stdin = format!(r#"{{"cniVersion":"1.1.0","name":"net",{keys}}}"#);
    let out = run(Command::Gc, &env(), stdin.as_bytes(), &host).expect("ok");
    assert_eq!(out, None, "GC success prints nothing");
    let want: Vec<String> = keep
        .map(|k| vec![format!("a gc net keep {k}"), format!("b gc net keep {k}")])
        .unwrap_or_default();
    assert_eq!(host.calls(), want);
}

/// Without either key the journal keeps its entries too: a later
/// `portmap restore` must still bring the containers back.
#[test]
fn gc_without_attachments_leaves_the_journal() {
    let host = FakeHost::new(vec![("fake", true)]);
    run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("add");
    let no_key = br#"{"cniVersion":"1.1.0","name":"net"}"#;
    run(Command::Gc, &env(), no_key, &host).expect("gc");
    assert_eq!(
        journaled(&host),
        vec![("c1".to_string(), "nftables".to_string())]
    );
    let spec_key = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/attachments":[]}"#;
    run(Command::Gc, &env(), spec_key, &host).expect("gc");
    assert_eq!(journaled(&host), vec![], "an empty list collects it");
}

#[test]
fn gc_without_attachments_still_needs_1_1_0() {
    let host = FakeHost::new(vec![("fake", true)]);
    let e = run(
        Command::Gc,
        &env(),
        br#"{"cniVersion":"1.0.0","name":"net"}"#,
        &host,
    )
    .expect_err("old");
    assert_eq!(e.msg, "config version does not allow GC");
}
