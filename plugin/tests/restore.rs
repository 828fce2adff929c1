//! `portmap restore` after the firewall was reloaded behind the plugin's
//! back, per backend, with real traffic: the journal written at ADD brings
//! every container back, a second restore writes nothing, containers
//! deleted since are not brought back, and a corrupt journal entry is
//! reported and skipped.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{config, flush_behind_the_back, ours, rig_for, tcp_8080, Rig};
use portmap_conformance::cni::{lock_path, state_dir};
use portmap_conformance::firewall::without_guard;
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use serde_json::json;

/// Replaces the tools that write the firewall with wrappers that log each
/// call to `writes.log` before running the real one.
fn log_writes(rig: &Rig) -> PathBuf {
    let dir = rig.tools.path();
    let log = dir.join("writes.log");
    for tool in [
        "nft",
        "iptables-restore",
        "ip6tables-restore",
        "iptables-nft-restore",
        "ip6tables-nft-restore",
        "iptables-legacy-restore",
        "ip6tables-legacy-restore",
    ] {
        let link = dir.join(tool);
        let Ok(real) = std::fs::read_link(&link) else {
            continue;
        };
        std::fs::remove_file(&link).expect("unlink");
        // `nft` reads (list) are not writes; `-f` is.
        let script = format!(
            "#!/bin/sh\ncase \"$*\" in *-f*|*restore*) echo \"{tool} $*\" >> {log};; esac\n\
             [ \"{tool}\" = nft ] || echo \"{tool} $*\" >> {log}\nexec {real} \"$@\"\n",
            log = log.display(),
            real = real.display()
        );
        std::fs::write(&link, script).expect("wrapper");
        std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    log
}

/// `Backend::name` of a test case's backend.
fn backend_name(backend: &str) -> String {
    match backend {
        "nftables" => "nftables".to_string(),
        variant => format!("iptables-{variant}"),
    }
}

fn journal_dir(rig: &Rig) -> PathBuf {
    let root = state_dir(rig.tools.path());
    std::fs::read_dir(&root)
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("netns-"))
        })
        .expect("the namespace's journal")
}

#[rstest]
fn restore_brings_back_what_a_reload_removed(#[values("nftables", "nft", "legacy")] backend: &str) {
    let Some((rig, key)) = rig_for(backend) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let b = rig.topo.container("b", 6).expect("container b");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let _sb = EchoServer::start(&b.ns, "b", 80).expect("echo b");
    let cfg_a = config(&a, Some(key), tcp_8080());
    let cfg_b = config(
        &b,
        Some(key),
        json!([{"hostPort": 8081, "containerPort": 80}]),
    );
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg_a);
    rig.must(&ours(), "ADD", "ctr-b", Some(&b), &cfg_b);
    let before = rig.ruleset();
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));

    flush_behind_the_back(&rig, backend);
    assert_eq!(rig.answers(8080), None, "the reload took the mapping");
    assert!(!rig.call(&ours(), "CHECK", "ctr-a", Some(&a), &cfg_a).ok());
    let list = rig.cli(&["list"]);
    assert!(
        list.stdout
            .contains("journaled, but their rules are missing")
            && list.stdout.contains("ctr-a (network e2e")
            && list.stdout.contains("ctr-b (network e2e"),
        "{}",
        list.stdout
    );
    let dry = rig.cli(&["restore", "--dry-run"]);
    assert!(
        dry.stdout.contains("would reinstall 2 container(s)"),
        "{}",
        dry.summary()
    );
    assert_eq!(rig.answers(8080), None, "a dry run changes nothing");

    let restored = rig.cli(&["restore"]);
    assert_eq!(restored.exit, Some(0), "{}", restored.summary());
    assert!(
        restored
            .stdout
            .contains("reinstalled 2 container(s), 0 in place, 0 gone, 0 could not be restored"),
        "{}",
        restored.stdout
    );
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg_a);
    rig.must(&ours(), "CHECK", "ctr-b", Some(&b), &cfg_b);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    assert_eq!(rig.answers(8081).as_deref(), Some("b"));
    assert_eq!(rig.ruleset(), before, "the ruleset is as it was");

    // Everything in place: a second restore writes nothing at all.
    let writes = log_writes(&rig);
    let again = rig.cli(&["restore"]);
    assert!(
        again
            .stdout
            .contains("reinstalled 0 container(s), 2 in place"),
        "{}",
        again.summary()
    );
    assert!(
        !writes.exists(),
        "no firewall write: {:?}",
        std::fs::read_to_string(&writes)
    );

    // A container deleted since is not brought back; a corrupt entry is
    // reported and the others still restored.
    rig.must(&ours(), "DEL", "ctr-b", Some(&b), &cfg_b);
    std::fs::create_dir_all(journal_dir(&rig).join("broken")).expect("dir");
    std::fs::write(
        journal_dir(&rig).join("broken/e2e:eth0.json"),
        b"{\"format\": 1,",
    )
    .expect("corrupt");
    flush_behind_the_back(&rig, backend);
    let partial = rig.cli(&["restore"]);
    assert_eq!(partial.exit, Some(1), "{}", partial.summary());
    assert!(
        partial.stderr.contains("broken/e2e:eth0.json"),
        "{}",
        partial.stderr
    );
    assert!(
        partial
            .stdout
            .contains("reinstalled 1 container(s), 0 in place, 0 gone, 1 could not be restored"),
        "{}",
        partial.stdout
    );
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    assert_eq!(rig.answers(8081), None, "ctr-b was deleted: not restored");
    assert!(writes.exists(), "the wrappers do see a restore that writes");

    std::fs::remove_dir_all(journal_dir(&rig).join("broken")).expect("rm");
    // An entry naming a backend this release does not know is named as
    // unreadable, not fatal.
    let entry = journal_dir(&rig).join("ctr-a/e2e:eth0.json");
    let text = std::fs::read_to_string(&entry).expect("entry of ctr-a");
    std::fs::create_dir_all(journal_dir(&rig).join("ctr-gone")).expect("dir");
    let gone = journal_dir(&rig).join("ctr-gone/e2e:eth0.json");
    std::fs::write(
        &gone,
        text.replace("\"ctr-a\"", "\"ctr-gone\"").replace(
            &format!("\"backend\": \"{}\"", backend_name(backend)),
            "\"backend\": \"pf\"",
        ),
    )
    .expect("entry");
    let named = rig.cli(&["restore"]);
    assert_eq!(named.exit, Some(1), "{}", named.summary());
    assert!(
        named
            .stderr
            .contains("ctr-gone/e2e:eth0.json: unknown variant `pf`"),
        "{}",
        named.stderr
    );
    std::fs::remove_dir_all(journal_dir(&rig).join("ctr-gone")).expect("rm");
    // Restored rules have new handles: DEL goes by the receipt the
    // restore wrote (nftables), and leaves nothing.
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg_a);
    assert_eq!(rig.answers(8080), None);
    assert!(!rig.ruleset().contains("ctr-a"), "{}", rig.ruleset());
    assert!(!Path::new(&state_dir(rig.tools.path())).join("x").exists());
    assert!(
        std::fs::read_dir(state_dir(rig.tools.path()))
            .expect("state")
            .next()
            .is_none(),
        "the last DEL leaves no journal behind"
    );
    let nothing = rig.cli(&["restore"]);
    assert!(
        nothing
            .stdout
            .contains("reinstalled 0 container(s), 0 in place"),
        "{}",
        nothing.summary()
    );
}

/// The localnet guard: `portmap status` and `list` report it, a firewall
/// change that took only the guard is repaired by `portmap restore`, and
/// the last DEL leaves it (route_localnet stays on).
#[rstest]
fn status_list_and_restore_know_the_localnet_guard(
    #[values("nftables", "nft", "legacy")] backend: &str,
) {
    let Some((rig, key)) = rig_for(backend) else {
        return;
    };
    let name = backend_name(backend);
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg = config(&a, Some(key), tcp_8080());
    let installed = format!("localnet guard: installed ({name})");
    let status = rig.cli(&["status"]);
    assert!(
        status.stdout.contains("localnet guard: not needed"),
        "{}",
        status.summary()
    );
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let before = rig.ruleset();
    for cmd in ["status", "list"] {
        let out = rig.cli(&[cmd]);
        assert!(out.stdout.contains(&installed), "{cmd}: {}", out.summary());
    }

    let host = &rig.topo.host;
    match backend {
        "nftables" => host.exec("nft", &["delete", "table", "ip", "cni_hostport_guard"]),
        variant => host.exec(
            &format!("iptables-{variant}"),
            &["-t", "mangle", "-F", "CNI-HOSTPORT-GUARD"],
        ),
    }
    .expect("remove the guard");
    let status = rig.cli(&["status"]);
    assert!(
        status.stdout.contains("warning: route_localnet is on (")
            && status.stdout.contains("no localnet guard is installed"),
        "{}",
        status.summary()
    );
    // The container's own rules are whole: CHECK passes, and restore sees
    // the guard's loss on its own.
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    let restored = rig.cli(&["restore"]);
    assert_eq!(restored.exit, Some(0), "{}", restored.summary());
    assert!(
        restored.stdout.contains(&format!(
            "reinstalled ctr-a in {name} (the localnet guard is missing)"
        )),
        "{}",
        restored.summary()
    );
    // The same guard (a re-made nftables table is listed last).
    let guard_rules = |dump: &str| -> Vec<String> {
        dump.lines()
            .filter(|l| l.contains("localnet guard"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(guard_rules(&rig.ruleset()), guard_rules(&before));
    assert_eq!(rig.mappings(), without_guard(&before));
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));

    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    let status = rig.cli(&["status"]);
    assert!(
        status.stdout.contains(&installed),
        "the last DEL keeps the guard: {}",
        status.summary()
    );
}

/// Only a namespace that is not found is gone: an entry whose namespace
/// cannot be checked (here ENOTDIR, which root gets too) is kept, not
/// reinstalled, and restore says why; a namespace not found is forgotten.
#[test]
fn restore_keeps_an_entry_whose_namespace_it_cannot_check() {
    let Some((rig, key)) = rig_for("nftables") else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let entry = journal_dir(&rig).join("ctr-a/e2e:eth0.json");
    let set_netns = |netns: &str| {
        let text = std::fs::read(&entry).expect("entry");
        let mut doc: serde_json::Value = serde_json::from_slice(&text).expect("json");
        doc["netns"] = json!(netns);
        std::fs::write(&entry, doc.to_string()).expect("write entry");
    };
    set_netns("/etc/passwd/x");
    flush_behind_the_back(&rig, "nftables");
    let kept = rig.cli(&["restore"]);
    assert_eq!(kept.exit, Some(1), "{}", kept.summary());
    assert!(
        kept.stderr.contains(&format!(
            "{} (ctr-a in nftables): skipped, entry kept: cannot tell whether its network \
             namespace /etc/passwd/x still exists: Not a directory",
            entry.display()
        )),
        "{}",
        kept.stderr
    );
    assert!(
        kept.stdout
            .contains("reinstalled 0 container(s), 0 in place, 0 gone, 1 could not be restored"),
        "{}",
        kept.stdout
    );
    assert!(entry.exists(), "the entry stays");
    assert_eq!(rig.answers(8080), None, "not reinstalled either");

    set_netns("/run/netns/portmap-no-such-ns");
    let forgot = rig.cli(&["restore"]);
    assert_eq!(forgot.exit, Some(0), "{}", forgot.summary());
    assert!(
        forgot.stdout.contains("forgot ctr-a"),
        "{}",
        forgot.summary()
    );
    assert!(!entry.exists(), "a namespace not found is gone");
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
}

/// `portmap watch` brings rules back by itself: within 2 s of a flush on
/// nftables and iptables-nft (nf_tables notifications), within its
/// interval on iptables-legacy (no notifications); stops on SIGTERM.
#[rstest]
fn watch_restores_by_itself(#[values("nftables", "nft", "legacy")] backend: &str) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let Some((rig, key)) = rig_for(backend) else {
        return;
    };
    // nf_tables notifications (iptables-nft's rules are nf_tables too);
    // legacy only has the 1 s interval.
    let within_secs = if backend == "legacy" { 1 + 2 } else { 2 };
    let a = rig.topo.container("a", 5).expect("container a");
    let _sa = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let cfg = config(&a, Some(key), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);

    let log = rig.tools.path().join("watch.log");
    let mut watch = rig
        .topo
        .host
        .command(ours())
        .env_clear()
        .env("PATH", rig.tools.path())
        .env("PORTMAP_STATE_DIR", state_dir(rig.tools.path()))
        .env("PORTMAP_LOCK", lock_path(rig.tools.path()))
        .args(["watch", "--interval", "1"])
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start portmap watch");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("portmap watch:")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "watch did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    flush_behind_the_back(&rig, backend);
    let flushed = Instant::now();
    let mut back = None;
    while flushed.elapsed() < Duration::from_secs(within_secs + 3) {
        if rig.answers(8080).as_deref() == Some("a") {
            back = Some(flushed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = back.unwrap_or_else(|| {
        panic!(
            "not restored; watch said:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    eprintln!("{backend}: restored {back:?} after the flush");
    assert!(
        back <= Duration::from_secs(within_secs),
        "restored after {back:?}, wanted {within_secs} s"
    );
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);

    common::stop_watch(&mut watch);
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("reinstalled ctr-a in"), "{said}");
    assert!(
        said.trim_end().ends_with("portmap watch: stopped"),
        "{said}"
    );
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
}

/// The shipped systemd units pass `systemd-analyze verify` (with ExecStart
/// pointed at the binary built here); a broken copy does not.
#[test]
fn systemd_units_verify() {
    use portmap_conformance::netns::prerequisites;
    if !prerequisites(&["systemd-analyze"]) {
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let dir = std::env::temp_dir().join(format!("portmap-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let verify = |names: &[PathBuf]| {
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .args(names)
            .output()
            .expect("systemd-analyze")
    };
    let mut copies = Vec::new();
    for name in ["portmap-restore.service", "portmap-watch.service"] {
        let text = std::fs::read_to_string(units.join(name)).expect("unit");
        assert!(text.contains("ExecStart=/opt/cni/bin/portmap "), "{name}");
        let copy = dir.join(name);
        let here = ours().display().to_string();
        std::fs::write(&copy, text.replace("/opt/cni/bin/portmap", &here)).expect("copy");
        copies.push(copy);
    }
    // Not even a warning for ours; a unit systemd would ignore a line of,
    // or refuse, is caught.
    let out = verify(&copies);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let text = std::fs::read_to_string(&copies[0]).expect("copy");
    for (name, broken) in [
        ("bad-type", text.replace("Type=oneshot", "Type=sometimes")),
        (
            "relative",
            text.replace(&ours().display().to_string(), "portmap"),
        ),
    ] {
        let path = dir.join(format!("portmap-{name}.service"));
        std::fs::write(&path, broken).expect("broken");
        let out = verify(std::slice::from_ref(&path));
        assert!(
            !out.status.success() || !out.stderr.is_empty(),
            "{name} passed verify"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
