//! The journal never follows a symlink planted in its state directory:
//! the real binary, ADD and DEL in namespaces the tests create, with
//! symlinks where a container's directory, an entry, a receipt and the
//! temp files of the very process that runs (its pid is known: a shell
//! plants them for `$$`, then execs the plugin) would go. Nothing outside
//! the state directory is written, renamed or removed; what cannot be
//! done fails cleanly, with the firewall as it was.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{config, ours, tcp_8080, Rig};
use portmap::journal::TEMP_TRIES;
use portmap_conformance::cni::{run_with_input, state_dir, Call, Outcome};
use portmap_conformance::toolpath::Tools;
use portmap_conformance::topology::Container;
use rstest::rstest;
use serde_json::{json, Value};

/// Every name under `dir`, whether it is a symlink, and what files hold.
fn snapshot(dir: &Path) -> Vec<(String, bool, Vec<u8>)> {
    let mut all: Vec<(String, bool, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| {
            let link = e.file_type().is_ok_and(|t| t.is_symlink());
            let text = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), link, text)
        })
        .collect();
    all.sort();
    all
}

/// The journal directory of the rig's host namespace, as the plugin
/// names it (`netns-<dev>-<ino>` of the namespace).
fn netns_dir(rig: &Rig) -> PathBuf {
    let meta = std::fs::metadata(rig.topo.host.path()).expect("netns");
    state_dir(rig.tools.path()).join(format!("netns-{}-{}", meta.dev(), meta.ino()))
}

/// Runs the plugin for `call` from a shell that first plants, in `dir`, a
/// symlink into `victim` under the first `taken` temp names of each of
/// `names` for its own pid, which `exec` hands to the plugin.
fn planted(
    rig: &Rig,
    call: &Call<'_>,
    dir: &Path,
    victim: &Path,
    names: &[&str],
    taken: u32,
) -> Outcome {
    let ln = which::which("ln").expect("ln");
    let script = format!(
        "for name in {names}; do n=0; while [ $n -lt {taken} ]; do \
         {ln} -s \"$2/made-$n\" \"$1/.$name.$$.$n.tmp\" || exit 99; n=$((n+1)); done; done; \
         shift 2; exec \"$@\"",
        names = names.join(" "),
        ln = ln.display(),
    );
    let mut cmd = rig.topo.host.command("/bin/sh");
    call.apply_env(&mut cmd);
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(dir)
        .arg(victim)
        .arg(ours());
    let out = run_with_input(cmd, call.config.to_string().as_bytes()).expect("run");
    assert_ne!(out.exit, Some(99), "planting failed: {}", out.summary());
    out
}

/// A clean CNI error: exit 1, the error JSON on stdout, no panic.
fn clean_error(out: &Outcome) -> String {
    assert_eq!(out.exit, Some(1), "{}", out.summary());
    assert!(out.error_code().is_some(), "{}", out.summary());
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out.error_msg()
}

fn add(rig: &Rig, id: &str, c: &Container, cfg: &Value) -> Outcome {
    rig.call(&ours(), "ADD", id, Some(c), cfg)
}

#[rstest]
fn symlinks_planted_in_the_state_directory_are_never_followed(
    #[values("nftables", "iptables")] backend: &str,
) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let b = rig.topo.container("b", 6).expect("container b");
    let cfg_a = config(&a, Some(backend), tcp_8080());
    let cfg_b = config(
        &b,
        Some(backend),
        json!([{"hostPort": 8081, "containerPort": 80}]),
    );
    // Outside the state directory (a sibling of it), removed with the rig.
    let victim = rig.tools.path().join("victim");
    std::fs::create_dir_all(&victim).expect("victim");
    std::fs::write(victim.join("keep"), "not the journal's").expect("keep");
    std::fs::write(victim.join("e2e:eth0.json"), "{\"format\": 1}").expect("bait");
    std::fs::write(victim.join("e2e:eth0.receipt"), "{}").expect("bait");
    let before = snapshot(&victim);
    let journal = netns_dir(&rig);
    std::fs::create_dir_all(&journal).expect("journal");
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    symlink(&victim, journal.join("ctr-evil")).expect("link");
    let ctr_a = journal.join("ctr-a");
    std::fs::create_dir(&ctr_a).expect("ctr-a");
    symlink(victim.join("e2e:eth0.json"), ctr_a.join("e2e:eth0.json")).expect("link");
    symlink(
        victim.join("e2e:eth0.receipt"),
        ctr_a.join("e2e:eth0.receipt"),
    )
    .expect("link");
    let names = ["e2e:eth0.json", "e2e:eth0.receipt"];

    // All but the last temp name taken: the write takes the last.
    let call = Call::new("ADD", "ctr-a", Some(&a), rig.tools.path(), &cfg_a);
    let out = planted(&rig, &call, &ctr_a, &victim, &names, TEMP_TRIES - 1);
    assert!(out.ok(), "{}\n{}", out.summary(), rig.ruleset());
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg_a);
    let entry = std::fs::symlink_metadata(ctr_a.join("e2e:eth0.json")).expect("entry");
    assert!(entry.is_file(), "the symlink was replaced, not followed");

    // Every temp name taken, or a symlinked container directory: ADD
    // fails cleanly and makes no rule.
    let ruleset = rig.ruleset();
    let ctr_b = journal.join("ctr-b");
    std::fs::create_dir(&ctr_b).expect("ctr-b");
    let call = Call::new("ADD", "ctr-b", Some(&b), rig.tools.path(), &cfg_b);
    let out = planted(&rig, &call, &ctr_b, &victim, &names, TEMP_TRIES);
    let msg = clean_error(&out);
    assert!(msg.contains("temp names for e2e:eth0.json"), "{msg}");
    let evil = add(&rig, "ctr-evil", &b, &cfg_b);
    let msg = clean_error(&evil);
    assert_eq!(
        msg,
        format!(
            "refusing journal directory {}: it is a symlink (not followed)",
            journal.join("ctr-evil").display()
        )
    );
    assert_eq!(rig.ruleset(), ruleset, "failed ADDs changed the firewall");
    let restore = rig.cli(&["restore", "--dry-run"]);
    assert!(
        restore.stderr.contains("ctr-evil: it is a symlink"),
        "{}",
        restore.summary()
    );

    for (id, c, cfg, dir) in [
        ("ctr-evil", &b, &cfg_b, None),
        ("ctr-b", &b, &cfg_b, Some(&ctr_b)),
        ("ctr-a", &a, &cfg_a, Some(&ctr_a)),
    ] {
        let call = Call::new("DEL", id, Some(c), rig.tools.path(), cfg);
        let out = match dir {
            Some(dir) => planted(&rig, &call, dir, &victim, &names, TEMP_TRIES),
            None => rig.call(&ours(), "DEL", id, Some(c), cfg),
        };
        assert!(out.ok(), "DEL {id}: {}", out.summary());
        assert_eq!(out.stdout.trim(), "", "DEL {id}");
    }
    let left = rig.ruleset();
    assert!(
        !left.contains("ctr-a") && !left.contains("CNI-DN-"),
        "{left}"
    );
    assert!(!ctr_a.exists() && !ctr_b.exists(), "DEL removed its files");
    assert!(journal.join("ctr-evil").is_symlink(), "left alone");
    assert_eq!(snapshot(&victim), before, "something outside was touched");
}

#[rstest]
#[case::symlink("a symlink", "it is a symlink (not followed)")]
#[case::mode_0777("open to all", "mode 0777 lets group or others write to it")]
fn an_unsafe_state_directory_is_refused(#[case] how: &str, #[case] why: &str) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, Some("nftables"), tcp_8080());
    let real = rig.tools.path().join("real-state");
    std::fs::create_dir(&real).expect("real");
    let state = if how == "a symlink" {
        let link = rig.tools.path().join("linked-state");
        symlink(&real, &link).expect("link");
        link
    } else {
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        real.clone()
    };
    let ruleset = rig.ruleset();
    for command in ["ADD", "DEL"] {
        let call = Call::new(command, "ctr-a", Some(&a), rig.tools.path(), &cfg);
        let mut cmd = rig.topo.host.command(ours());
        call.apply_env(&mut cmd);
        cmd.env("PORTMAP_STATE_DIR", &state);
        let out = run_with_input(cmd, cfg.to_string().as_bytes()).expect("run");
        let msg = clean_error(&out);
        assert_eq!(
            msg,
            format!("refusing journal directory {}: {why}", state.display()),
            "{command}"
        );
        assert_eq!(rig.ruleset(), ruleset, "{command} changed the firewall");
    }
    assert!(snapshot(&real).is_empty(), "nothing written through it");
}
