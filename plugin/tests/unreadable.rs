//! A nat table the plugin's tools cannot read (a rule made with nft that
//! iptables-nft-save cannot translate, save tools that fail, iptables-nft
//! tools missing while the kernel holds our chains), with the real binary:
//! DEL fails naming what it could not read and keeps the journal entry
//! (retired) until a DEL after the fix succeeds with nothing left; ADD
//! fails with no family changed; CHECK fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{config, ours, tcp_8080, Rig};
use portmap_conformance::cni::{invoke, state_dir, Call, Outcome};
use portmap_conformance::firewall::without_counters;
use portmap_conformance::toolpath::{IptablesVariant, Nft, ToolDir, Tools};
use portmap_conformance::topology::Container;
use serde_json::Value;

/// What the plugin is run with: a tool PATH and the rig's journal, so a
/// DEL with other tools still finds the ADD's entry.
fn call(rig: &Rig, command: &str, c: &Container, path: &Path, cfg: &Value) -> Outcome {
    call_id(rig, command, "ctr-a", c, path, cfg)
}

fn call_id(rig: &Rig, command: &str, id: &str, c: &Container, path: &Path, cfg: &Value) -> Outcome {
    let mut call = Call::new(command, id, Some(c), path, cfg);
    call.env.push((
        "PORTMAP_STATE_DIR",
        state_dir(rig.tools.path()).display().to_string(),
    ));
    invoke(&ours(), &rig.topo.host, &call).expect("run plugin")
}

/// The names of ctr-a's journal files (entry or retired entry; iptables
/// writes no receipt).
fn journal(rig: &Rig) -> Vec<String> {
    let Ok(namespaces) = std::fs::read_dir(state_dir(rig.tools.path())) else {
        return vec![];
    };
    let mut names: Vec<String> = namespaces
        .flatten()
        .flat_map(|ns| {
            std::fs::read_dir(ns.path().join("ctr-a"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn details(out: &Outcome) -> String {
    out.json()
        .and_then(|j| j["details"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A PATH where every iptables tool exists but fails; nft and conntrack
/// are the real ones.
fn failing_iptables(rig: &Rig) -> PathBuf {
    let dir = rig.tools.path().join("failing");
    std::fs::create_dir_all(&dir).expect("dir");
    for base in ["iptables", "ip6tables"] {
        for variant in ["", "-legacy", "-nft"] {
            for suffix in ["", "-save", "-restore"] {
                script(
                    &dir,
                    &format!("{base}{variant}{suffix}"),
                    "echo \"$0: cannot initialize the table: broken for the test\" >&2\nexit 1\n",
                );
            }
        }
    }
    for tool in ["nft", "conntrack"] {
        std::os::unix::fs::symlink(rig.tools.path().join(tool), dir.join(tool)).expect("link");
    }
    dir
}

/// A chain in `family`'s `nat` with a rule iptables-nft-save cannot
/// translate: it exits non-zero.
fn add_foreign(rig: &Rig, family: &str) {
    let h = &rig.topo.host;
    h.exec("nft", &["add", "table", family, "nat"])
        .expect("table");
    h.exec("nft", &["add", "chain", family, "nat", "foreign"])
        .expect("chain");
    h.exec(
        "nft",
        &[
            "add", "rule", family, "nat", "foreign", "meta", "mark", "set", "1",
        ],
    )
    .expect("rule");
    let save = format!("{family}tables-nft-save");
    assert!(
        h.exec(&save, &["-t", "nat"]).is_err(),
        "{save} still reads it"
    );
}

fn remove_foreign(rig: &Rig, family: &str) {
    let h = &rig.topo.host;
    h.exec("nft", &["flush", "chain", family, "nat", "foreign"])
        .expect("flush");
    h.exec("nft", &["delete", "chain", family, "nat", "foreign"])
        .expect("delete");
}

/// Each way of making the nat table unreadable: the words DEL's error
/// must have (family, tool, its stderr), and how to undo it.
#[rstest::rstest]
#[case::foreign_rule_in_ip_nat("foreign-ip")]
#[case::foreign_rule_in_ip6_nat("foreign-ip6")]
#[case::failing_legacy_tools("failing-legacy")]
#[case::iptables_nft_tools_missing("nft-tools-missing")]
fn del_fails_while_a_nat_table_is_unreadable_and_keeps_the_journal_entry(#[case] how: &str) {
    let variant = match how {
        "failing-legacy" => IptablesVariant::Legacy,
        _ => IptablesVariant::Nft,
    };
    let Some(rig) = Rig::new(Tools {
        iptables: Some(variant),
        ..Tools::default()
    }) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, Some("iptables"), tcp_8080());
    let working = rig.tools.path().to_path_buf();
    let add = call(&rig, "ADD", &a, &working, &cfg);
    assert!(add.ok(), "{}", add.summary());
    assert!(rig.mappings().contains("CNI-DN-"), "{}", rig.ruleset());
    assert_eq!(journal(&rig), ["e2e:eth0.json"]);

    // The missing-tools case's PATH: nft and legacy tools only.
    let legacy_only = ToolDir::new(Tools {
        nft: Nft::Present,
        iptables: Some(IptablesVariant::Legacy),
        both_variants: false,
        conntrack: true,
    })
    .expect("tools");
    let (broken, msg, words): (PathBuf, &str, Vec<&str>) = match how {
        "foreign-ip" => {
            add_foreign(&rig, "ip");
            (
                working.clone(),
                "ipv4",
                vec!["iptables-nft-save", "Parsing nftables rule failed"],
            )
        }
        "foreign-ip6" => {
            add_foreign(&rig, "ip6");
            (
                working.clone(),
                "ipv6",
                vec!["ip6tables-nft-save", "Parsing nftables rule failed"],
            )
        }
        "failing-legacy" => (
            failing_iptables(&rig),
            "ipv4",
            vec!["iptables-legacy-save", "broken for the test"],
        ),
        _ => (
            legacy_only.path().to_path_buf(),
            "could not read every firewall",
            vec!["nf_tables ipv4 nat table", "of ours", "iptables-nft-save"],
        ),
    };
    let unchanged = rig.mappings();
    let del = call(&rig, "DEL", &a, &broken, &cfg);
    assert_eq!(del.exit, Some(1), "DEL must not succeed: {}", del.summary());
    assert_eq!(del.error_code(), Some(999), "{}", del.summary());
    let text = format!("{} {}", del.error_msg(), details(&del));
    assert!(del.error_msg().contains(msg), "{}", del.summary());
    for w in words {
        assert!(text.contains(w), "{w:?} missing: {}", del.summary());
    }
    assert_eq!(
        journal(&rig),
        ["e2e:eth0.json.retired"],
        "kept for a retry, out of a restore's sight"
    );
    let left = rig.mappings();
    assert!(
        left.contains("CNI-DN-"),
        "the rules are still there: {left}"
    );
    if !how.starts_with("foreign") {
        // Neither family could be read: nothing was written.
        assert_eq!(left, unchanged);
    } else {
        let check = call(&rig, "CHECK", &a, &broken, &cfg);
        assert_eq!(check.exit, Some(1), "{}", check.summary());
        assert!(check.error_msg().contains(msg), "{}", check.summary());
        remove_foreign(&rig, if how == "foreign-ip" { "ip" } else { "ip6" });
    }

    let del = call(&rig, "DEL", &a, &working, &cfg);
    assert!(del.ok(), "{}", del.summary());
    let left = rig.mappings();
    assert!(!left.contains("CNI-"), "{left}");
    assert!(!left.contains("10.88.0.5"), "{left}");
    assert_eq!(journal(&rig), Vec::<String>::new());
}

/// A dual-stack ADD whose IPv6 family cannot be read (a foreign rule in
/// `ip6 nat`), written (ip6tables-restore fails) or has no tool fails, and
/// leaves IPv4 as it was: another container's rules and the guard.
#[rstest::rstest]
#[case::ipv6_unreadable("unreadable")]
#[case::ipv6_unwritable("unwritable")]
#[case::no_ip6tables("no-ip6tables")]
fn dual_stack_add_fails_without_ipv6_and_leaves_ipv4_as_it_was(#[case] how: &str) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let path = rig.tools.path().to_path_buf();
    let b = rig.topo.container("b", 6).expect("container");
    let b_cfg = config(
        &b,
        Some("iptables"),
        serde_json::json!([{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}]),
    );
    let b_add = call_id(&rig, "ADD", "ctr-b", &b, &path, &b_cfg);
    assert!(b_add.ok(), "{}", b_add.summary());
    let h = &rig.topo.host;
    let v4 = || {
        without_counters(
            &(h.exec("iptables-nft-save", &["-t", "nat"])
                .expect("save nat")
                + &h.exec("iptables-nft-save", &["-t", "mangle"])
                    .expect("save mangle")),
        )
    };
    let before = v4();
    let (msg, words): (&str, Vec<&str>) = match how {
        "unreadable" => {
            add_foreign(&rig, "ip6");
            (
                "ipv6",
                vec!["ip6tables-save", "Parsing nftables rule failed"],
            )
        }
        "unwritable" => {
            script(
                &path,
                "ip6tables-restore",
                "echo 'ip6tables-restore: broken for the test' >&2\nexit 1\n",
            );
            ("ip6tables-restore", vec!["broken for the test"])
        }
        _ => {
            for tool in ["ip6tables", "ip6tables-save", "ip6tables-restore"] {
                std::fs::remove_file(path.join(tool)).expect("unlink");
            }
            (
                "ipv6",
                vec!["ip6tables-save and ip6tables-restore not in PATH"],
            )
        }
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, Some("iptables"), tcp_8080());
    let add = call(&rig, "ADD", &a, &path, &cfg);
    assert_eq!(add.exit, Some(1), "ADD must fail: {}", add.summary());
    assert!(add.error_msg().contains(msg), "{}", add.summary());
    let text = format!("{} {}", add.error_msg(), details(&add));
    for w in words {
        assert!(text.contains(w), "{w:?} missing: {}", add.summary());
    }
    assert_eq!(v4(), before, "IPv4 as it was");
    assert_eq!(
        journal(&rig),
        Vec::<String>::new(),
        "a failed ADD leaves no entry"
    );
    let check = call(&rig, "CHECK", &a, &path, &cfg);
    assert_eq!(check.exit, Some(1), "{}", check.summary());
    if how == "unreadable" {
        assert!(check.error_msg().contains("ipv6"), "{}", check.summary());
        remove_foreign(&rig, "ip6");
    }

    let full = ToolDir::new(Tools::default()).expect("tools");
    for (id, c, cfg) in [("ctr-a", &a, &cfg), ("ctr-b", &b, &b_cfg)] {
        let del = call_id(&rig, "DEL", id, c, full.path(), cfg);
        assert!(del.ok(), "{}", del.summary());
    }
    assert!(!rig.mappings().contains("CNI-"), "{}", rig.ruleset());
}
