//! contrib/systemd/portmap-restore.service against a real firewalld, at
//! the moments systemd acts on: a start job of firewalld (Type=dbus) is
//! done when its bus name appears, and `systemctl reload firewalld`
//! (ExecReload=kill -HUP) returns once the signal is sent. Right then the
//! unit's own command lines run, as systemd would run them (a `-` prefix
//! ignores failure). No watch runs: the restore must follow firewalld's
//! flush, or the port is dead at the first probe. firewalld on iptables,
//! ours on iptables-nft (the flush takes it).

use super::*;

/// The unit's command lines for `keys` (`ExecStartPre` ...), in file order:
/// (failure ignored, argv).
fn commands(unit: &str, keys: &[&str]) -> Vec<(bool, Vec<String>)> {
    unit.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| keys.contains(k))
        .map(|(_, v)| {
            let (ignore, v) = match v.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, v),
            };
            (ignore, v.split_whitespace().map(str::to_string).collect())
        })
        .collect()
}

/// Runs the lines: the plugin's in the rig's host namespace with its
/// journal, the others where firewalld is (its mount namespace and bus).
/// Returns what they printed.
fn run_unit(rig: &Rig, fw: &Daemon, unit: &str, keys: &[&str]) -> String {
    let mut said = String::new();
    for (ignore, argv) in commands(unit, keys) {
        let mut cmd = if argv[0] == "/opt/cni/bin/portmap" {
            ours_command(rig)
        } else {
            fw.enter(&argv[0])
        };
        let out = cmd.args(&argv[1..]).output().expect("unit command");
        let text = format!(
            "{argv:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(ignore || out.status.success(), "{text}");
        said += &text;
    }
    said
}

#[test]
fn restore_unit_runs_after_firewalld_s_flush() {
    let Some(_turn) = firewalld_turn(&[]) else {
        return;
    };
    let unit_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/portmap-restore.service");
    let unit = std::fs::read_to_string(unit_path).expect("unit");
    let (state_before, _) = host_state();
    let tools = Tools {
        iptables: Some(IptablesVariant::Nft),
        ..Tools::default()
    };
    let Some(rig) = Rig::new(tools) else {
        return;
    };
    let remote = rig.topo.remote().expect("remote namespace");
    let a = rig.topo.container("a", 5).expect("container a");
    let _server = EchoServer::start(&a.ns, "a", 80).expect("echo server");
    let cfg = config(&a, Some("iptables"), tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let mut fw = Daemon::new(&rig.topo.host, "iptables", false);
    let dir = fw.dir().to_path_buf();
    let start = ["ExecStartPre", "ExecStart"];
    let check = |fw: &Daemon, what: &str, said: &str| {
        // firewalld's flush is over: whatever the unit did came before or after it.
        fw.wait_running();
        assert!(
            answers(&rig, &remote),
            "{what}: the unit restored before firewalld's flush:\n{said}\nruleset:\n{}",
            rig.ruleset()
        );
        rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    };

    fw.spawn_firewalld();
    check(&fw, "start", &run_unit(&rig, &fw, &unit, &start));
    fw.sighup();
    check(
        &fw,
        "systemctl reload",
        &run_unit(&rig, &fw, &unit, &["ExecReload"]),
    );
    fw.stop_firewalld();
    fw.spawn_firewalld();
    check(
        &fw,
        "systemctl restart",
        &run_unit(&rig, &fw, &unit, &start),
    );

    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    drop(fw);
    drop((_server, a, remote, rig));
    assert_left_nothing(&state_before, &dir);
}
