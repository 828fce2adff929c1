//! Run-time backend selection, cross-backend state and `portmap migrate`,
//! with the real binary in namespaces and real traffic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use portmap_conformance::cni::{invoke, Call};
use portmap_conformance::toolpath::{IptablesVariant, Nft, ToolDir, Tools};
use portmap_conformance::topology::Container;
use portmap_conformance::traffic::EchoServer;
use rstest::rstest;
use serde_json::{json, Value};

mod common;
use common::{config, ours, tcp_8080, upstream_available, Rig, UPSTREAM};

fn row(backend: &str, id: &str, port: u64) -> (String, String, u64) {
    (backend.to_string(), id.to_string(), port)
}

fn port(p: u16) -> Value {
    json!([{"hostPort": p, "containerPort": 80, "protocol": "tcp"}])
}

/// A host without nftables (nft missing, or failing as on a kernel
/// without nf_tables) falls back to the iptables variant it has; every
/// pick runs a full ADD/CHECK/DEL with traffic.
#[rstest]
fn auto_selection_matrix(
    #[values(Nft::Present, Nft::Missing, Nft::KernelRefuses, Nft::Unrunnable)] nft: Nft,
    #[values(IptablesVariant::Legacy, IptablesVariant::Nft)] variant: IptablesVariant,
) {
    let Some(rig) = Rig::new(Tools {
        nft,
        iptables: Some(variant),
        both_variants: false,
        conntrack: true,
    }) else {
        return;
    };
    let expected = match nft {
        Nft::Present => "nftables".to_string(),
        _ => format!("iptables-{}", variant.as_str()),
    };
    let status = rig.cli(&["status"]);
    assert_eq!(status.exit, Some(0), "{}", status.summary());
    assert!(
        status
            .stdout
            .contains(&format!("auto-selection: {expected} (")),
        "{}",
        status.stdout
    );
    if nft != Nft::Present {
        assert!(
            status.stdout.contains("falling back to iptables"),
            "the reason is shown: {}",
            status.stdout
        );
    }
    // The diagnosis names the part that failed, and the versions found.
    let diagnosis = match nft {
        Nft::Present => "nftables: usable (",
        Nft::Missing => "nftables: not usable: nft binary not found in PATH",
        Nft::KernelRefuses => "nftables: not usable: kernel refused an nf_tables transaction: Error: Could not process rule",
        Nft::Unrunnable => "nftables: not usable: nft binary",
    };
    assert!(status.stdout.contains(diagnosis), "{}", status.stdout);
    if nft == Nft::Unrunnable {
        assert!(
            status.stdout.contains(
                "fails to run or to parse JSON: nft: error while loading shared libraries"
            ),
            "{}",
            status.stdout
        );
    }
    if nft == Nft::Present {
        assert!(
            status.stdout.contains(", nftables v"),
            "nft version: {}",
            status.stdout
        );
    }
    let iptables_line = format!("iptables-{}: tools found (iptables v", variant.as_str());
    assert!(status.stdout.contains(&iptables_line), "{}", status.stdout);

    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = config(&a, None, tcp_8080());
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.listed(), vec![row(&expected, "ctr-a", 8080)]);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080), None);
    assert_nothing_left(&rig);
    // Ours alone made these rules: the shared chains go with the last one.
    assert!(!rig.mappings().contains("CNI-"), "{}", rig.ruleset());
}

/// No listed mapping and no trace of our chains or tables.
fn assert_nothing_left(rig: &Rig) {
    assert_eq!(rig.listed(), vec![]);
    let left = rig.mappings();
    assert!(
        !left.contains("CNI-DN-") && !left.contains("cni_hostport") && !left.contains("ctr-"),
        "{left}"
    );
}

/// An explicit backend that cannot work is an error naming why, and
/// nothing is written anywhere.
#[rstest]
#[case::nft_missing(
    Nft::Missing,
    Some(IptablesVariant::Nft),
    "nftables",
    "nft binary not found in PATH"
)]
#[case::nft_broken(
    Nft::KernelRefuses,
    Some(IptablesVariant::Nft),
    "nftables",
    "Could not process rule: Operation not supported"
)]
#[case::no_iptables(Nft::Present, None, "iptables", "iptables")]
fn unusable_explicit_backend_is_a_clear_error(
    #[case] nft: Nft,
    #[case] iptables: Option<IptablesVariant>,
    #[case] backend: &str,
    #[case] why: &str,
) {
    let Some(rig) = Rig::new(Tools {
        nft,
        iptables,
        both_variants: false,
        conntrack: true,
    }) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let before = rig.ruleset();
    let out = rig.call(
        &ours(),
        "ADD",
        "ctr-a",
        Some(&a),
        &config(&a, Some(backend), tcp_8080()),
    );
    assert_eq!(out.exit, Some(1), "{}", out.summary());
    let err = out.json().expect("error JSON");
    let text = format!("{} {}", err["msg"], err["details"]);
    assert!(text.contains(why), "error must say {why:?}: {err}");
    assert_eq!(rig.ruleset(), before);
}

/// `n` containers `c0`.. with addresses ending in 5, 6, ...
fn containers(rig: &Rig, n: u8) -> Vec<Container> {
    (0..n)
        .map(|i| {
            rig.topo
                .container(&format!("c{i}"), 5 + i)
                .expect("container")
        })
        .collect()
}

/// ADD through the CNI call with a given tool PATH.
fn add_with(
    rig: &Rig,
    plugin: &std::path::Path,
    tools: &ToolDir,
    id: &str,
    c: &Container,
    cfg: &Value,
) {
    let call = Call::new("ADD", id, Some(c), tools.path(), cfg);
    let out = invoke(plugin, &rig.topo.host, &call).expect("run");
    assert!(out.ok(), "ADD {id}: {}", out.summary());
}

fn legacy_tools() -> ToolDir {
    ToolDir::new(Tools {
        iptables: Some(IptablesVariant::Legacy),
        both_variants: false,
        ..Tools::default()
    })
    .expect("tools")
}

/// Polls host ports from another thread while `during` runs; returns
/// (answered, failed) counts of rounds begun before `during` returned.
fn poll_while(rig: &Rig, ports: &[u16], during: impl FnOnce()) -> (usize, usize) {
    let stop = AtomicBool::new(false);
    let (ok, bad) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            // Bounded: at most 2000 rounds even if `during` hangs.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for p in ports {
                    match rig.answers(*p) {
                        Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                        None => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        during();
        stop.store(true, Ordering::Relaxed);
    });
    (ok.into_inner(), bad.into_inner())
}

/// A host mid-migration: one container by upstream's binary on
/// iptables-nft, one by ours on iptables-legacy, one by ours on nftables.
/// `list` shows all three; migrate moves them to nftables without a lost
/// connection, then back to iptables where upstream's DEL finds them.
#[test]
fn mixed_state_is_listed_migrated_both_ways_and_cleaned() {
    if !upstream_available() {
        return;
    }
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let legacy = legacy_tools();
    let upstream = PathBuf::from(UPSTREAM);
    let cs = containers(&rig, 3);
    let _srvs: Vec<EchoServer> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| EchoServer::start(&c.ns, &format!("c{i}"), 80).expect("echo"))
        .collect();
    let mut cfgs: Vec<Value> = [Some("iptables"), Some("iptables"), Some("nftables")]
        .iter()
        .zip(&cs)
        .enumerate()
        .map(|(i, (b, c))| config(c, *b, port(8080 + i as u16)))
        .collect();
    // ctr-nft is of another network: only our journal records it (its
    // nftables rules carry the container ID alone).
    cfgs[2]["name"] = json!("e2e-b");
    add_with(&rig, &upstream, &rig.tools, "ctr-up", &cs[0], &cfgs[0]);
    add_with(&rig, &ours(), &legacy, "ctr-legacy", &cs[1], &cfgs[1]);
    add_with(&rig, &ours(), &rig.tools, "ctr-nft", &cs[2], &cfgs[2]);
    assert_eq!(
        rig.listed(),
        vec![
            row("iptables-legacy", "ctr-legacy", 8081),
            row("iptables-nft", "ctr-up", 8080),
            row("nftables", "ctr-nft", 8082),
        ]
    );

    // auto picks nftables here: status points at the two elsewhere.
    let status = rig.cli(&["status"]);
    let mappings = status
        .stdout
        .lines()
        .find(|l| l.starts_with("mappings: "))
        .unwrap_or_default();
    for backend in ["nftables", "iptables-nft", "iptables-legacy"] {
        assert!(
            mappings.contains(&format!("1 container(s) in {backend}")),
            "{}",
            status.stdout
        );
    }
    for elsewhere in ["iptables-nft", "iptables-legacy"] {
        assert!(
            status.stdout.contains(&format!(
                "warning: 1 container(s) have mappings in {elsewhere}, but auto-selection picks nftables now"
            )),
            "{}",
            status.stdout
        );
    }
    assert!(
        status
            .stdout
            .contains("to move them: portmap migrate --to nftables"),
        "{}",
        status.stdout
    );

    let before = rig.ruleset();
    let dry = rig.cli(&["migrate", "--to", "nftables", "--dry-run"]);
    assert_eq!(dry.exit, Some(0), "{}", dry.summary());
    assert!(dry
        .stdout
        .contains("would move ctr-up: iptables-nft -> nftables"));
    assert!(dry
        .stdout
        .contains("would move ctr-legacy: iptables-legacy -> nftables"));
    assert_eq!(rig.ruleset(), before, "a dry run changes nothing");

    let mut moved = None;
    let (answered, failed) = poll_while(&rig, &[8080, 8081], || {
        moved = Some(rig.cli(&["migrate", "--to", "nftables"]));
    });
    let moved = moved.expect("ran");
    assert_eq!(moved.exit, Some(0), "{}", moved.summary());
    assert!(moved
        .stdout
        .contains("moved 2 container(s) to nftables, 0 failed"));
    eprintln!("during migration: {answered} answered, {failed} failed");
    assert_eq!(
        (failed, answered > 0),
        (0, true),
        "traffic during migration"
    );
    assert_eq!(
        rig.listed(),
        vec![
            row("nftables", "ctr-legacy", 8081),
            row("nftables", "ctr-nft", 8082),
            row("nftables", "ctr-up", 8080),
        ]
    );
    for (i, (id, c)) in ["ctr-up", "ctr-legacy", "ctr-nft"]
        .iter()
        .zip(&cs)
        .enumerate()
    {
        assert_eq!(rig.answers(8080 + i as u16), Some(format!("c{i}")));
        // CHECK as a runtime sends it (no backend key): auto finds nftables.
        rig.must(
            &ours(),
            "CHECK",
            id,
            Some(c),
            &config(c, None, port(8080 + i as u16)),
        );
    }
    let again = rig.cli(&["migrate", "--to", "nftables"]);
    assert!(
        again.stdout.contains("moved 0 container(s)"),
        "{}",
        again.summary()
    );

    // Back to iptables: nftables rules do not record the network. The
    // journal knows ctr-nft's (ours made it here); the other two were
    // made by upstream and under another state directory: refused.
    let refused = rig.cli(&["migrate", "--to", "iptables-legacy"]);
    assert_eq!(refused.exit, Some(1), "{}", refused.summary());
    for unknown in ["ctr-up", "ctr-legacy"] {
        assert!(
            refused.stderr.contains(&format!(
                "container {unknown} (nftables): the rules do not record its network name"
            )),
            "{}",
            refused.stderr
        );
    }
    assert!(
        refused
            .stdout
            .contains("moved 1 container(s) to iptables-legacy, 2 failed"),
        "{}",
        refused.summary()
    );
    assert_eq!(
        rig.listed(),
        vec![
            row("iptables-legacy", "ctr-nft", 8082),
            row("nftables", "ctr-legacy", 8081),
            row("nftables", "ctr-up", 8080),
        ]
    );
    // --network names only what the journal does not know.
    let back = rig.cli(&["migrate", "--to", "iptables-legacy", "--network", "e2e"]);
    assert_eq!(back.exit, Some(0), "{}", back.summary());
    assert_eq!(
        rig.listed(),
        vec![
            row("iptables-legacy", "ctr-legacy", 8081),
            row("iptables-legacy", "ctr-nft", 8082),
            row("iptables-legacy", "ctr-up", 8080),
        ]
    );
    // Our CHECK and upstream's DEL find what we re-created. (Upstream's
    // own CHECK is no witness: v1.1.1 checks IPv4 rules in ip6tables.)
    let check = Call::new("CHECK", "ctr-up", Some(&cs[0]), legacy.path(), &cfgs[0]);
    let out = invoke(&ours(), &rig.topo.host, &check).expect("run");
    assert!(out.ok(), "CHECK on iptables-legacy: {}", out.summary());
    let del = Call::new("DEL", "ctr-up", Some(&cs[0]), legacy.path(), &cfgs[0]);
    let out = invoke(&upstream, &rig.topo.host, &del).expect("run");
    assert!(out.ok(), "upstream DEL: {}", out.summary());
    // Each DEL names its own network: ctr-nft's rules went to e2e-b's chain.
    for (id, network) in [("ctr-legacy", "e2e"), ("ctr-nft", "e2e-b")] {
        let del = json!({"cniVersion": "1.0.0", "name": network, "type": "portmap"});
        rig.must(&ours(), "DEL", id, None, &del);
    }
    assert_nothing_left(&rig);
}

/// Switching from ours (which chose nftables) back to an iptables-only
/// upstream binary (Debian's 1.1.1): upstream's DEL cannot see nftables
/// rules, so without a move first our DNAT stays behind; after
/// `portmap migrate --to iptables`, upstream's DEL leaves nothing and a new
/// container on the same host port is reachable through upstream's rules.
#[rstest]
fn switching_back_to_an_iptables_only_upstream(#[values(true, false)] migrate_first: bool) {
    if !upstream_available() {
        return;
    }
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let upstream = PathBuf::from(UPSTREAM);
    let cs = containers(&rig, 2);
    // What a runtime sends: no backend key.
    let a_cfg = config(&cs[0], None, tcp_8080());
    let b_cfg = config(&cs[1], None, tcp_8080());
    let a_server = EchoServer::start(&cs[0].ns, "a", 80).expect("echo a");
    let _b_server = EchoServer::start(&cs[1].ns, "b", 80).expect("echo b");
    rig.must(&ours(), "ADD", "ctr-a", Some(&cs[0]), &a_cfg);
    assert_eq!(rig.listed(), vec![row("nftables", "ctr-a", 8080)]);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    if migrate_first {
        let moved = rig.cli(&["migrate", "--to", "iptables", "--network", "e2e"]);
        assert_eq!(moved.exit, Some(0), "{}", moved.summary());
        assert_eq!(rig.listed(), vec![row("iptables-nft", "ctr-a", 8080)]);
        assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    }
    // The host now runs upstream's binary: container a goes, b comes on
    // the same host port.
    drop(a_server);
    rig.must(&upstream, "DEL", "ctr-a", Some(&cs[0]), &a_cfg);
    rig.must(&upstream, "ADD", "ctr-b", Some(&cs[1]), &b_cfg);
    if migrate_first {
        assert_eq!(rig.listed(), vec![row("iptables-nft", "ctr-b", 8080)]);
        assert_eq!(rig.answers(8080).as_deref(), Some("b"));
    } else {
        // The leak the README's "Switching binaries" section warns about.
        assert!(
            rig.listed().contains(&row("nftables", "ctr-a", 8080)),
            "{:?}",
            rig.listed()
        );
        eprintln!("without migrate, port 8080 answers {:?}", rig.answers(8080));
    }
    rig.must(&upstream, "DEL", "ctr-b", Some(&cs[1]), &b_cfg);
    if !migrate_first {
        // Ours cleans what upstream could not see.
        rig.must(&ours(), "DEL", "ctr-a", None, &a_cfg);
    } else {
        // Our journal never heard of upstream's DEL: once a's namespace is
        // gone, a restore forgets it instead of bringing it back.
        drop(cs);
        let restore = rig.cli(&["restore"]);
        assert_eq!(restore.exit, Some(0), "{}", restore.summary());
        assert!(
            restore.stdout.contains("forgot ctr-a"),
            "{}",
            restore.stdout
        );
        assert!(
            restore.stdout.contains("reinstalled 0 container(s)"),
            "{}",
            restore.stdout
        );
    }
    assert_nothing_left(&rig);
}

/// GC over containers spread across backends (one leaked in two): all
/// but the valid attachment go, everywhere; the valid one keeps working.
#[test]
fn gc_removes_invalid_attachments_from_every_backend() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let legacy = legacy_tools();
    let cs = containers(&rig, 3);
    let _srv = EchoServer::start(&cs[1].ns, "keep", 80).expect("echo");
    let cfg = |i: usize, b: &str| config(&cs[i], Some(b), port(8080 + i as u16));
    add_with(
        &rig,
        &ours(),
        &rig.tools,
        "ctr-0",
        &cs[0],
        &cfg(0, "nftables"),
    );
    add_with(
        &rig,
        &ours(),
        &rig.tools,
        "ctr-0",
        &cs[0],
        &cfg(0, "iptables"),
    );
    add_with(
        &rig,
        &ours(),
        &rig.tools,
        "ctr-1",
        &cs[1],
        &cfg(1, "nftables"),
    );
    add_with(&rig, &ours(), &legacy, "ctr-2", &cs[2], &cfg(2, "iptables"));
    assert_eq!(rig.listed().len(), 4);
    let gc = json!({"cniVersion": "1.1.0", "name": "e2e", "type": "portmap",
                    "cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "eth0"}]});
    for _ in 0..2 {
        rig.must(&ours(), "GC", "", None, &gc);
        assert_eq!(rig.listed(), vec![row("nftables", "ctr-1", 8081)]);
        assert_eq!(rig.answers(8081).as_deref(), Some("keep"));
    }
    rig.must(&ours(), "DEL", "ctr-1", None, &gc);
}

/// GC as a runtime written from CNI 1.1.0's spec text sends it: the list
/// under `cni.dev/attachments` alone keeps the listed containers' rules in
/// every backend and removes the rest. Without either key GC removes
/// nothing (the firewall dump is unchanged) and says so on stderr.
#[test]
fn gc_takes_the_spec_texts_key_and_without_a_key_removes_nothing() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let legacy = legacy_tools();
    let cs = containers(&rig, 4);
    let _srv1 = EchoServer::start(&cs[1].ns, "keep-1", 80).expect("echo");
    let _srv2 = EchoServer::start(&cs[2].ns, "keep-2", 80).expect("echo");
    let cfg = |i: usize, b: &str| config(&cs[i], Some(b), port(8080 + i as u16));
    // ctr-0 leaked in two backends, ctr-3 in iptables-legacy: they go.
    // ctr-1 (nftables) and ctr-2 (iptables-nft) are listed: they stay.
    let tools = &rig.tools;
    add_with(&rig, &ours(), tools, "ctr-0", &cs[0], &cfg(0, "nftables"));
    add_with(&rig, &ours(), tools, "ctr-0", &cs[0], &cfg(0, "iptables"));
    add_with(&rig, &ours(), tools, "ctr-1", &cs[1], &cfg(1, "nftables"));
    add_with(&rig, &ours(), tools, "ctr-2", &cs[2], &cfg(2, "iptables"));
    add_with(&rig, &ours(), &legacy, "ctr-3", &cs[3], &cfg(3, "iptables"));
    let all = vec![
        row("iptables-legacy", "ctr-3", 8083),
        row("iptables-nft", "ctr-0", 8080),
        row("iptables-nft", "ctr-2", 8082),
        row("nftables", "ctr-0", 8080),
        row("nftables", "ctr-1", 8081),
    ];
    assert_eq!(rig.listed(), all);

    let before = rig.ruleset();
    let no_key = json!({"cniVersion": "1.1.0", "name": "e2e", "type": "portmap"});
    let out = rig.must(&ours(), "GC", "", None, &no_key);
    assert_eq!(out.stdout, "", "GC success prints nothing");
    assert!(
        out.stderr
            .contains("neither cni.dev/valid-attachments nor cni.dev/attachments: nothing removed"),
        "{}",
        out.stderr
    );
    assert_eq!(rig.ruleset(), before, "GC without a list removed rules");
    assert_eq!(rig.listed(), all);

    let spec_key = json!({"cniVersion": "1.1.0", "name": "e2e", "type": "portmap",
                          "cni.dev/attachments": [{"containerID": "ctr-1", "ifname": "eth0"},
                                                  {"containerID": "ctr-2", "ifname": "eth0"}]});
    for _ in 0..2 {
        let out = rig.must(&ours(), "GC", "", None, &spec_key);
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
        assert_eq!(
            rig.listed(),
            vec![
                row("iptables-nft", "ctr-2", 8082),
                row("nftables", "ctr-1", 8081)
            ]
        );
        let after = rig.ruleset();
        assert!(
            after.contains("ctr-1") && after.contains("ctr-2"),
            "kept rules:\n{after}"
        );
        assert!(
            !after.contains("ctr-0") && !after.contains("ctr-3"),
            "collected rules:\n{after}"
        );
        assert_eq!(rig.answers(8081).as_deref(), Some("keep-1"));
        assert_eq!(rig.answers(8082).as_deref(), Some("keep-2"));
        assert_eq!(rig.answers(8080), None);
    }
    rig.must(&ours(), "DEL", "ctr-1", None, &spec_key);
    rig.must(&ours(), "DEL", "ctr-2", None, &spec_key);
    assert_nothing_left(&rig);
}

/// A migration killed between "add in target" and "delete in source"
/// leaves a container in both backends: a re-run finishes the move
/// without duplicates. A container that cannot move (conditions in
/// iptables syntax) stays working where it is and fails the run.
#[test]
fn rerun_finishes_an_interrupted_migration_and_unmovable_containers_stay() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let b = rig.topo.container("b", 6).expect("container");
    let _srv_a = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let _srv_b = EchoServer::start(&b.ns, "b", 80).expect("echo");
    let tools = &rig.tools;
    add_with(
        &rig,
        &ours(),
        tools,
        "ctr-a",
        &a,
        &config(&a, Some("iptables"), port(8080)),
    );
    add_with(
        &rig,
        &ours(),
        tools,
        "ctr-a",
        &a,
        &config(&a, Some("nftables"), port(8080)),
    );
    let mut with_conditions = config(&b, Some("iptables"), port(8081));
    with_conditions["conditionsV4"] = json!(["!", "-s", "192.0.2.1/32"]);
    add_with(&rig, &ours(), tools, "ctr-b", &b, &with_conditions);

    let out = rig.cli(&["migrate", "--to", "nftables"]);
    assert_eq!(out.exit, Some(1), "{}", out.summary());
    assert!(
        out.stderr
            .contains("ctr-b (iptables-nft): its rules carry match conditions"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("moved ctr-a: iptables-nft -> nftables"));
    assert_eq!(
        rig.listed(),
        vec![
            row("iptables-nft", "ctr-b", 8081),
            row("nftables", "ctr-a", 8080)
        ]
    );
    // CHECK is exact: a duplicate rule for ctr-a would fail it.
    rig.must(
        &ours(),
        "CHECK",
        "ctr-a",
        Some(&a),
        &config(&a, None, port(8080)),
    );
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    assert_eq!(rig.answers(8081).as_deref(), Some("b"));
    let del = json!({"cniVersion": "1.0.0", "name": "e2e", "type": "portmap"});
    rig.must(&ours(), "DEL", "ctr-a", None, &del);
    rig.must(&ours(), "DEL", "ctr-b", None, &del);
    assert_eq!(rig.listed(), vec![]);
}
