//! Hosts with old userlands, simulated by a PATH of wrapper scripts over
//! the real legacy tables (real pre-1.8 iptables builds are not installable
//! here): iptables 1.6.1 as on Ubuntu 18.04 (no `-legacy`/`-nft` names,
//! `--version` without a variant, an `iptables-restore` that has no `-w`
//! and takes no lock) and nft 0.8 without JSON. Also: DEL must not report
//! success while a firewall that may hold the container's rules cannot be
//! read.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{cli_with, config, ours, tcp_8080, Rig};
use portmap_conformance::cni::{invoke, Call};
use portmap_conformance::toolpath::{Nft, Tools};
use portmap_conformance::traffic::EchoServer;
use serde_json::Value;

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn real(tool: &str) -> String {
    which::which(tool)
        .unwrap_or_else(|_| panic!("{tool} not found"))
        .display()
        .to_string()
}

/// iptables 1.6.1's interface in `dir`. Each restore logs whether someone
/// (we) held /run/xtables.lock while it ran, and refuses `-w` as 1.6.1 does.
/// The real restore underneath gets a private lock file: 1.6.1's takes none.
fn iptables_1_6_1(dir: &Path, log: &Path) {
    for (base, legacy) in [
        ("iptables", "iptables-legacy"),
        ("ip6tables", "ip6tables-legacy"),
    ] {
        script(
            dir,
            base,
            &format!(
                "case \"$1\" in --version|-V) echo \"{base} v1.6.1\"; exit 0;; esac\nexec {} \"$@\"\n",
                real(legacy)
            ),
        );
        script(
            dir,
            &format!("{base}-save"),
            &format!("exec {} \"$@\"\n", real(&format!("{legacy}-save"))),
        );
        script(
            dir,
            &format!("{base}-restore"),
            &format!(
                "for a in \"$@\"; do case \"$a\" in -w|--wait|-W|--wait-interval) \
                 echo \"{base}-restore: invalid option -- 'w'\" >&2; exit 2;; esac; done\n\
                 if {flock} -n /run/xtables.lock true; then echo unlocked >> {log}; else echo locked >> {log}; fi\n\
                 XTABLES_LOCKFILE={log}.inner exec {restore} \"$@\"\n",
                flock = real("flock"),
                log = log.display(),
                restore = real(&format!("{legacy}-restore")),
            ),
        );
    }
}

/// nft 0.8 (Ubuntu 18.04): runs, but has no JSON.
fn nft_0_8(dir: &Path) {
    script(
        dir,
        "nft",
        "case \"$1\" in --version|-v) echo 'nftables v0.8.2 (Joe Btfsplk)'; exit 0;; esac\n\
         echo \"nft: invalid option -- 'j'\" >&2; exit 1\n",
    );
}

fn old_host() -> Option<(Rig, std::path::PathBuf)> {
    let rig = Rig::new(Tools {
        nft: Nft::Missing,
        iptables: None,
        both_variants: false,
        conntrack: true,
    })?;
    let log = rig.tools.path().join("restore.log");
    iptables_1_6_1(rig.tools.path(), &log);
    nft_0_8(rig.tools.path());
    Some((rig, log))
}

fn listed_backends(rig: &Rig) -> Vec<(String, String, u64)> {
    rig.listed()
}

#[test]
fn iptables_1_6_1_add_check_list_migrate_del() {
    let Some((rig, log)) = old_host() else { return };
    let status = rig.cli(&["status"]);
    assert_eq!(status.exit, Some(0), "{}", status.summary());
    assert!(
        status.stdout.contains("auto-selection: iptables-legacy ("),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("nftables: not usable: nft binary")
            && status
                .stdout
                .contains("fails to run or to parse JSON: nft: invalid option -- 'j'"),
        "{}",
        status.stdout
    );

    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = config(&a, None, tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    assert_eq!(
        listed_backends(&rig),
        vec![("iptables-legacy".to_string(), "ctr-a".to_string(), 8080)]
    );
    let restores = std::fs::read_to_string(&log).expect("restore log");
    assert!(
        !restores.is_empty() && restores.lines().all(|l| l == "locked"),
        "every restore ran while we held /run/xtables.lock: {restores:?}"
    );

    // Migrate to nftables (a PATH with a working nft beside the old
    // iptables) and back to the 1.6.1 iptables.
    let with_nft = rig.tools.path().join("with-nft");
    std::fs::create_dir_all(&with_nft).expect("dir");
    iptables_1_6_1(&with_nft, &log);
    std::os::unix::fs::symlink(real("nft"), with_nft.join("nft")).expect("nft link");
    let cli = |path: &Path, args: &[&str]| cli_with(&rig.topo.host, path, args);
    let to_nft = cli(&with_nft, &["migrate", "--to", "nftables"]);
    assert_eq!(to_nft.exit, Some(0), "{}", to_nft.summary());
    let listed = cli(&with_nft, &["list", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&listed.stdout).expect("list JSON");
    assert!(rows.iter().all(|r| r["backend"] == "nftables"), "{rows:?}");
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    let back = cli(
        &with_nft,
        &["migrate", "--to", "iptables", "--network", "e2e"],
    );
    assert_eq!(back.exit, Some(0), "{}", back.summary());
    assert_eq!(
        listed_backends(&rig),
        vec![("iptables-legacy".to_string(), "ctr-a".to_string(), 8080)]
    );
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);

    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080), None);
    assert_eq!(listed_backends(&rig), vec![]);
    assert!(!rig.mappings().contains("CNI-"), "{}", rig.ruleset());
}

/// Rules made with working tools; the tools break; DEL must fail with a
/// note saying what could not be read (the runtime retries), and leave the
/// rules; tools fixed, DEL succeeds and nothing is left.
#[rstest::rstest]
#[case::iptables_legacy_detection_broken("iptables")]
#[case::nft_gone("nft")]
fn del_fails_while_rules_may_remain_unread(#[case] broken: &str) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let (backend, tools) = match broken {
        "nft" => (Some("nftables"), rig.tools.path().to_path_buf()),
        _ => {
            let dir = rig.tools.path().join("old");
            std::fs::create_dir_all(&dir).expect("dir");
            iptables_1_6_1(&dir, &dir.join("restore.log"));
            (Some("iptables"), dir)
        }
    };
    let cfg = config(&a, backend, tcp_8080());
    let call = |command: &str, path: &Path| {
        let c = Call::new(command, "ctr-a", Some(&a), path, &cfg);
        invoke(&ours(), &rig.topo.host, &c).expect("run")
    };
    let add = call("ADD", &tools);
    assert!(add.ok(), "{}", add.summary());
    let before = rig.ruleset();
    assert!(before.contains("10.88.0.5:80"), "{before}");

    // Break it: an `iptables` that fails everything (so its variant cannot
    // be told), or no nft at all.
    let broken_dir = rig.tools.path().join("broken");
    std::fs::create_dir_all(&broken_dir).expect("dir");
    if broken == "iptables" {
        for tool in ["iptables", "ip6tables"] {
            script(
                &broken_dir,
                tool,
                "echo 'iptables: cannot load libxtables' >&2\nexit 1\n",
            );
        }
        for tool in [
            "iptables-save",
            "iptables-restore",
            "ip6tables-save",
            "ip6tables-restore",
        ] {
            std::os::unix::fs::symlink(tools.join(tool), broken_dir.join(tool)).expect("link");
        }
    }
    let del = call("DEL", &broken_dir);
    assert_eq!(del.exit, Some(1), "DEL must not succeed: {}", del.summary());
    assert_eq!(
        del.error_msg(),
        "could not read every firewall that may hold the container's rules"
    );
    let note = del
        .json()
        .and_then(|j| j["details"].as_str().map(str::to_string))
        .unwrap_or_default();
    let expected = if broken == "nft" {
        "cni_hostport"
    } else {
        "legacy iptables nat tables"
    };
    assert!(note.contains(expected), "{note}");
    assert_eq!(rig.ruleset(), before, "the rules are still there");

    let del = call("DEL", &tools);
    assert!(del.ok(), "{}", del.summary());
    let left = rig.ruleset();
    assert!(
        !left.contains("10.88.0.5:80") && !left.contains("CNI-DN-"),
        "{left}"
    );
}
