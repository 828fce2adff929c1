//! The real `portmap` binary, run as a runtime runs it: env + stdin in,
//! JSON + exit code out; firewall tests inside namespaces they create.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portmap_conformance::cni::{invoke, run_with_input, Call, Outcome};
use portmap_conformance::firewall::has_guard;
use portmap_conformance::netns::{prerequisites, Netns};
use portmap_conformance::toolpath::{IptablesVariant, Nft, ToolDir, Tools};
use portmap_conformance::topology::{Container, HOST_V4};
use portmap_conformance::traffic::{udp_ask, EchoServer};
use rstest::rstest;
use serde_json::{json, Value};

mod common;
use common::{config, ours, tcp_8080, upstream_available, Rig, UPSTREAM};

/// Runs the binary outside any namespace (no firewall is touched), with
/// a lock and journal of its own (never the host's).
fn run_plain(env: &[(&str, &str)], stdin: &str) -> Outcome {
    let dir = Scratch::new();
    run_plain_in(&dir.0, env, stdin)
}

fn run_plain_in(dir: &Path, env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut cmd = Command::new(ours());
    cmd.env_clear()
        .env("PORTMAP_LOCK", dir.join("portmap.lock"))
        .env("PORTMAP_STATE_DIR", dir.join("state"))
        .envs(env.iter().copied());
    run_with_input(cmd, stdin.as_bytes()).expect("run")
}

/// A directory of its own per call, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("portmap-plain-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn version_prints_supported_versions() {
    let out = run_plain(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(out.ok(), "{}", out.summary());
    assert_eq!(
        out.json().expect("json"),
        json!({"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
}

#[test]
fn missing_env_is_code_4() {
    let out = run_plain(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ],
        r#"{"cniVersion":"1.0.0","name":"n"}"#,
    );
    assert_eq!(out.exit, Some(1));
    assert_eq!(out.error_code(), Some(4));
    assert_eq!(
        out.error_msg(),
        "required env variables [CNI_CONTAINERID,CNI_NETNS] missing"
    );
    assert_eq!(out.json().expect("json")["cniVersion"], "1.0.0");
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/x"),
    ]
}

#[rstest]
#[case::v04_prev_into_v1_config("1.0.0", json!({"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.0.0.2/24","interface":0}],"dns":{}}),
       json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}],"dns":{}}))]
#[case::v1_prev_into_v04_config("0.4.0", json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"fd00::2/64","interface":0}]}),
       json!({"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"6","address":"fd00::2/64","interface":0}]}))]
#[case::v1_prev_into_v02_config("0.2.0", json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}),
       json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0"}]}}))]
fn add_without_mappings_echoes_prev_result_converted(
    #[case] version: &str,
    #[case] prev: Value,
    #[case] want: Value,
) {
    let cfg = json!({"cniVersion": version, "name": "net", "type": "portmap", "prevResult": prev});
    // PATH has no firewall tool at all: nothing may be touched.
    let out = run_plain(&add_env(), &cfg.to_string());
    assert!(out.ok(), "{}", out.summary());
    assert_eq!(out.json().expect("json"), want);
}

/// Most chained calls on a node map no port (pods without host ports):
/// they answer at once while another portmap holds the lock (which an ADD
/// with mappings waits 60 s for), and write nothing.
#[test]
fn add_and_check_without_mappings_take_no_lock() {
    let dir = Scratch::new();
    let lock = std::fs::File::create(dir.0.join("portmap.lock")).expect("lock file");
    lock.try_lock().expect("hold the lock");
    let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
    let cfg = json!({"cniVersion": "1.0.0", "name": "net", "type": "portmap", "prevResult": prev});
    for command in ["ADD", "CHECK"] {
        let mut env = add_env();
        env[0].1 = command;
        let started = std::time::Instant::now();
        let out = run_plain_in(&dir.0, &env, &cfg.to_string());
        assert!(out.ok(), "{command}: {}", out.summary());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{command} waited {:?} for a lock it does not need",
            started.elapsed()
        );
    }
    assert!(!dir.0.join("state").exists(), "no journal written");
}

fn bad(patch: Value) -> Value {
    let mut cfg = json!({
        "cniVersion": "1.0.0", "name": "net", "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    });
    for (k, v) in patch.as_object().expect("object") {
        if v.is_null() {
            cfg.as_object_mut().expect("object").remove(k);
        } else {
            cfg[k] = v.clone();
        }
    }
    cfg
}

fn mapping(m: Value) -> Value {
    json!({"runtimeConfig": {"portMappings": [m]}})
}

#[rstest]
#[case::mark_bit_32(bad(json!({"markMasqBit": 32})), 7, "MasqMarkBit must be between 0 and 31")]
#[case::host_port_0(bad(mapping(json!({"hostPort": 0, "containerPort": 80}))), 7, "Invalid host port number: 0")]
#[case::host_port_70000(bad(mapping(json!({"hostPort": 70000, "containerPort": 80}))), 7, "Invalid host port number: 70000")]
#[case::protocol_icmp(bad(mapping(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}))), 7, "Invalid protocol: \"icmp\"")]
#[case::host_ip_not_an_ip(bad(mapping(json!({"hostPort": 80, "containerPort": 80, "hostIP": "not-an-ip"}))), 7, "Invalid host IP: \"not-an-ip\"")]
#[case::backend_pf(bad(json!({"backend": "pf"})), 7, "unrecognized backend \"pf\"")]
#[case::nftables_with_external_chain(bad(json!({"backend": "nftables", "externalSetMarkChain": "KUBE-MARK-MASQ"})), 7,
       "nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain]")]
#[case::missing_prev_result(bad(json!({"prevResult": null})), 7, "must be called as chained plugin")]
#[case::unsupported_version(bad(json!({"cniVersion": "3.0.0"})), 1, "incompatible CNI versions")]
fn invalid_input_is_a_cni_error_and_changes_nothing(
    #[case] cfg: Value,
    #[case] code: u64,
    #[case] msg: &str,
) {
    if !prerequisites(&["nft", "iptables-nft-save"]) {
        return;
    }
    let ns = Netns::new("invalid").expect("netns");
    let tools = ToolDir::new(Tools::default()).expect("tools");
    let dump = || {
        ns.exec("nft", &["list", "ruleset"]).expect("nft")
            + &ns.exec("iptables-nft-save", &[]).expect("save")
    };
    let before = dump();
    let call = Call {
        command: "ADD",
        container_id: "ctr-1",
        netns: "/var/run/netns/x".into(),
        ifname: "eth0",
        path: tools.path(),
        config: &cfg,
        env: Vec::new(),
    };
    let out = invoke(&ours(), &ns, &call).expect("run");
    assert_eq!(out.exit, Some(1), "{}", out.summary());
    assert_eq!(out.error_code(), Some(code), "{}", out.summary());
    assert_eq!(out.error_msg(), msg);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(dump(), before, "an error must leave the firewall untouched");
}

#[rstest]
#[case::nftables(Some("nftables"), Tools::default(), "table ip cni_hostport")]
#[case::iptables_nft(Some("iptables"), Tools { iptables: Some(IptablesVariant::Nft), ..Tools::default() }, "CNI-HOSTPORT-DNAT")]
#[case::iptables_legacy(Some("iptables"), Tools { iptables: Some(IptablesVariant::Legacy), ..Tools::default() }, "CNI-HOSTPORT-DNAT")]
fn add_check_del_end_to_end(
    #[case] backend: Option<&str>,
    #[case] tools: Tools,
    #[case] marker: &str,
) {
    let Some(rig) = Rig::new(tools) else { return };
    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = config(&a, backend, tcp_8080());
    let out = rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    assert_eq!(
        out.json().expect("result")["ips"][0]["address"],
        "10.88.0.5/24"
    );
    assert!(
        rig.ruleset().contains(marker),
        "expected {marker}:\n{}",
        rig.ruleset()
    );
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    let out = rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    assert_eq!(out.stdout.trim(), "");
    assert_eq!(rig.answers(8080), None);
    let left = rig.mappings();
    assert!(
        !left.contains("CNI-") && !left.contains("cni_hostport"),
        "{left}"
    );
    // route_localnet stays on, and so does the guard.
    assert!(has_guard(&rig.ruleset()), "{}", rig.ruleset());
}

/// DEL never wedges a container: a DEL whose config ADD would refuse
/// (the runtime resends what failed, or a config edited since) still
/// removes the container's rules, found by container ID and network name,
/// and exits 0; a DEL that names no container is still an error.
#[rstest]
#[case::nftables(Some("nftables"), Tools::default())]
#[case::iptables_nft(Some("iptables"), Tools { iptables: Some(IptablesVariant::Nft), ..Tools::default() })]
#[case::iptables_legacy(Some("iptables"), Tools { iptables: Some(IptablesVariant::Legacy), ..Tools::default() })]
fn del_with_a_config_add_refuses_still_removes_the_rules(
    #[case] backend: Option<&str>,
    #[case] tools: Tools,
) {
    let Some(rig) = Rig::new(tools) else { return };
    let a = rig.topo.container("a", 5).expect("container");
    let refused = [
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}]),
        json!([{"hostPort": "8080", "containerPort": 80}]),
        json!([{"hostPort": 70000, "containerPort": 80}]),
    ];
    for (i, mappings) in refused.into_iter().enumerate() {
        let good = config(&a, backend, tcp_8080());
        rig.must(&ours(), "ADD", "ctr-a", Some(&a), &good);
        assert!(rig.ruleset().contains("10.88.0.5:80"), "{}", rig.ruleset());
        let mut bad = config(&a, backend, mappings);
        if i == 1 {
            bad["conditionsV4"] = json!(["-s 10.0.0.0/8; flush"]);
        }
        let add = rig.call(&ours(), "ADD", "ctr-b", Some(&a), &bad);
        assert_eq!(add.exit, Some(1), "ADD refuses it: {}", add.summary());
        let del = rig.call(&ours(), "DEL", "ctr-a", None, &bad);
        assert_eq!(del.exit, Some(0), "DEL #{i}: {}", del.summary());
        let left = rig.ruleset();
        assert!(
            !left.contains("10.88.0.5:80") && !left.contains("CNI-DN-"),
            "DEL #{i} left:\n{left}"
        );
    }
    let undecodable = rig.call(&ours(), "DEL", "ctr-a", None, &json!([1]));
    assert_eq!(undecodable.exit, Some(1), "{}", undecodable.summary());
    assert_eq!(undecodable.error_code(), Some(6));
}

/// A container ID longer than a file name: ADD refuses it cleanly (no
/// journal entry, so no rule), and DEL, which runtimes retry until it
/// succeeds, succeeds: nothing of ours can exist for it.
#[rstest]
#[case::nftables(Some("nftables"))]
#[case::iptables(Some("iptables"))]
fn a_container_id_too_long_for_the_journal_is_refused_by_add_and_deleted(
    #[case] backend: Option<&str>,
) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let cfg = config(&a, backend, tcp_8080());
    let id = "c".repeat(300);
    let before = rig.ruleset();
    let add = rig.call(&ours(), "ADD", &id, Some(&a), &cfg);
    assert_eq!(add.exit, Some(1), "{}", add.summary());
    assert_eq!(
        add.error_msg(),
        "container ID of 300 bytes is too long for the journal (a file name has at most 255)"
    );
    assert_eq!(rig.ruleset(), before, "no rule");
    for netns in [Some(&a), None] {
        let del = rig.call(&ours(), "DEL", &id, netns, &cfg);
        assert_eq!(del.exit, Some(0), "{}", del.summary());
        assert_eq!((del.stdout.trim(), del.stderr.trim()), ("", ""));
    }
    assert_eq!(rig.ruleset(), before);
}

/// Every client fixture (containerd, CRI-O, podman, cnitool input) through
/// ADD, CHECK, traffic and DEL on every backend. (The harness's client
/// scenarios send CHECK only where the client does; ours must pass it for
/// all of them.)
#[rstest]
#[case::nftables(Some("nftables"), IptablesVariant::Nft)]
#[case::iptables_nft(Some("iptables"), IptablesVariant::Nft)]
#[case::iptables_legacy(Some("iptables"), IptablesVariant::Legacy)]
#[case::auto(None, IptablesVariant::Nft)]
fn client_fixtures_add_check_del(#[case] backend: Option<&str>, #[case] variant: IptablesVariant) {
    use portmap_conformance::clients::{Client, TCP, UDP};
    let Some(rig) = Rig::new(Tools {
        iptables: Some(variant),
        ..Tools::default()
    }) else {
        return;
    };
    for client in Client::ALL {
        let pod = rig.topo.container("pod", 20).expect("container");
        let _tcp = EchoServer::start(&pod.ns, "pod", TCP.1).expect("echo");
        let _udp = EchoServer::start(&pod.ns, "pod", UDP.1).expect("echo");
        let add = client.add_config(&pod.prev_result(true, false), backend);
        let send = |command: &str, cfg: &Value, netns: Option<&Container>| {
            let mut call = Call::new(command, "ctr-pod", netns, rig.tools.path(), cfg);
            call.env = client.env("ctr-pod");
            let out = invoke(&ours(), &rig.topo.host, &call).expect("run");
            assert!(
                out.ok(),
                "{client:?} {command}: {}\n{}",
                out.summary(),
                rig.ruleset()
            );
        };
        send("ADD", &add, Some(&pod));
        // CHECK exists from CNI 0.4.0 on (Multus's fixture is 0.3.1).
        if !add["cniVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("0.3"))
        {
            send("CHECK", &add, Some(&pod));
        }
        assert_eq!(rig.answers(TCP.0).as_deref(), Some("pod"), "{client:?} tcp");
        let udp = udp_ask(
            &rig.topo.host,
            SocketAddr::new(IpAddr::V4(HOST_V4), UDP.0),
            0,
            Duration::from_secs(2),
        )
        .expect("udp");
        assert_eq!(udp.map(|a| a.tag).as_deref(), Some("pod"), "{client:?} udp");
        for del in client.dels(&add, backend) {
            send("DEL", &del.config, del.with_netns.then_some(&pod));
        }
        assert_eq!(rig.answers(TCP.0), None, "{client:?}: port closed");
        let left = rig.ruleset();
        assert!(
            !left.contains("10.88.0.20:") && !left.contains("CNI-DN-"),
            "{client:?} left:\n{left}"
        );
    }
}

/// A journal that cannot be written fails the ADD with a clear error and
/// the firewall untouched (no rules a restore would not know about).
#[rstest]
#[case::nftables(Some("nftables"))]
#[case::iptables(Some("iptables"))]
fn an_unwritable_journal_fails_add_and_writes_no_rule(#[case] backend: Option<&str>) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let before = rig.ruleset();
    let cfg = config(&a, backend, tcp_8080());
    let mut cmd = rig.topo.host.command(ours());
    Call::new("ADD", "ctr-a", Some(&a), rig.tools.path(), &cfg).apply_env(&mut cmd);
    // /proc refuses new directories: no journal can be made there.
    cmd.env("PORTMAP_STATE_DIR", "/proc/portmap-state");
    let out = run_with_input(cmd, cfg.to_string().as_bytes()).expect("run");
    assert_eq!(out.exit, Some(1), "{}", out.summary());
    assert!(
        out.error_msg()
            .starts_with("cannot create journal directory /proc/portmap-state: "),
        "{}",
        out.summary()
    );
    assert_eq!(rig.ruleset(), before, "no rule without a journal entry");
}

#[test]
fn del_without_backend_cleans_rules_of_every_backend() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let b = rig.topo.container("b", 6).expect("container b");
    rig.must(
        &ours(),
        "ADD",
        "ctr-a",
        Some(&a),
        &config(&a, Some("nftables"), tcp_8080()),
    );
    rig.must(
        &ours(),
        "ADD",
        "ctr-b",
        Some(&b),
        &config(
            &b,
            Some("iptables"),
            json!([{"hostPort": 8081, "containerPort": 80}]),
        ),
    );
    // DEL as runtimes send it: no backend key, no mappings.
    let del = json!({"cniVersion": "1.0.0", "name": "e2e", "type": "portmap"});
    rig.must(&ours(), "DEL", "ctr-a", None, &del);
    rig.must(&ours(), "DEL", "ctr-b", None, &del);
    let left = rig.ruleset();
    assert!(
        !left.contains("ctr-a") && !left.contains("ctr-b") && !left.contains("CNI-DN-"),
        "leaked:\n{left}"
    );
}

#[rstest]
fn udp_conntrack_is_flushed_on_del_with_or_without_the_conntrack_tool(
    #[values(true, false)] have_conntrack: bool,
) {
    let Some(rig) = Rig::new(Tools {
        conntrack: have_conntrack,
        ..Tools::default()
    }) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = config(
        &a,
        Some("nftables"),
        json!([{"hostPort": 5353, "containerPort": 80, "protocol": "udp"}]),
    );
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    let to = SocketAddr::new(IpAddr::V4(HOST_V4), 5353);
    let got = udp_ask(&rig.topo.host, to, 40000, Duration::from_secs(2)).expect("udp");
    assert_eq!(got.map(|a| a.tag).as_deref(), Some("a"));
    let flows = || {
        rig.topo
            .host
            .exec("conntrack", &["-L", "-p", "udp", "--orig-port-dst", "5353"])
            .unwrap_or_default()
    };
    assert!(flows().contains("dport=5353"), "a flow exists: {}", flows());
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    // The flush is ctnetlink: the tool in the plugin's PATH plays no part
    // (the test's own `conntrack -L` runs with the test's PATH).
    assert!(
        !flows().contains("dport=5353"),
        "DEL must flush the flow: {}",
        flows()
    );
}

/// One container with 1,000 UDP mappings costs at most twice the same
/// with TCP (ADD+DEL, nftables): the conntrack flush is one ctnetlink
/// dump per family, not one process per port. A live flow to one of the
/// ports is flushed by the DEL.
#[test]
fn a_thousand_udp_mappings_cost_at_most_twice_a_thousand_tcp() {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = |proto: &str| {
        let maps: Vec<Value> = (20_000..21_000u16)
            .map(|p| json!({"hostPort": p, "containerPort": 80, "protocol": proto}))
            .collect();
        config(&a, Some("nftables"), Value::Array(maps))
    };
    let flows = || {
        rig.topo
            .host
            .exec(
                "conntrack",
                &["-L", "-p", "udp", "--orig-port-dst", "20500"],
            )
            .unwrap_or_default()
    };
    // Best of three ADD+DEL pairs each, interleaved: other tests share
    // the machine.
    let (mut tcp, mut udp) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        for proto in ["tcp", "udp"] {
            let cfg = cfg(proto);
            let add = rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
            if proto == "udp" {
                let to = SocketAddr::new(IpAddr::V4(HOST_V4), 20500);
                let got = udp_ask(&rig.topo.host, to, 40000, Duration::from_secs(2)).expect("udp");
                assert_eq!(got.map(|a| a.tag).as_deref(), Some("a"));
                assert!(flows().contains("dport=20500"), "a flow: {}", flows());
            }
            let del = rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
            assert!(!del.stderr.contains("warning"), "{}", del.summary());
            let took = add.elapsed + del.elapsed;
            let best = if proto == "tcp" { &mut tcp } else { &mut udp };
            *best = (*best).min(took);
        }
        assert!(!flows().contains("dport=20500"), "DEL flushed: {}", flows());
    }
    eprintln!(
        "1000 mappings, ADD+DEL (best of 3): tcp {tcp:?}, udp {udp:?}, udp/tcp {:.2}",
        udp.as_secs_f64() / tcp.as_secs_f64()
    );
    assert!(udp <= 2 * tcp, "udp {udp:?} vs tcp {tcp:?}");
}

#[rstest]
fn interop_with_upstream_binary(
    #[values(IptablesVariant::Nft, IptablesVariant::Legacy)] variant: IptablesVariant,
) {
    if !upstream_available() {
        return;
    }
    let tools = Tools {
        iptables: Some(variant),
        both_variants: false,
        nft: Nft::Missing,
        ..Tools::default()
    };
    let Some(rig) = Rig::new(tools) else { return };
    let upstream = PathBuf::from(UPSTREAM);
    let a = rig.topo.container("a", 5).expect("container");
    let _srv = EchoServer::start(&a.ns, "a", 80).expect("echo");
    let cfg = config(&a, Some("iptables"), tcp_8080());
    let save = || {
        let h = &rig.topo.host;
        let v = variant.as_str();
        h.exec(&format!("iptables-{v}-save"), &["-t", "nat"])
            .expect("save")
            + &h.exec(&format!("ip6tables-{v}-save"), &["-t", "nat"])
                .expect("save")
    };

    // Upstream ADD, our CHECK and DEL.
    rig.must(&upstream, "ADD", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    rig.must(&ours(), "CHECK", "ctr-a", Some(&a), &cfg);
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080), None);
    assert!(
        !save().contains("CNI-"),
        "ours left upstream's rules:\n{}",
        save()
    );

    // Our ADD, upstream's DEL.
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("a"));
    rig.must(&upstream, "DEL", "ctr-a", Some(&a), &cfg);
    assert_eq!(rig.answers(8080), None);
    let left = save();
    assert!(
        !left.contains("CNI-DN-") && !left.contains("ctr-a"),
        "upstream left our rules:\n{left}"
    );
}

/// nftables ADD keeps a receipt of its rules' handles (from the kernel's
/// notifications) and DEL deletes by it. A receipt that does not hold,
/// here one naming another container's rules, must not delete them: DEL
/// checks every handle against the kernel and falls back to reading all.
#[rstest]
#[case::by_its_receipt(false)]
#[case::by_a_receipt_naming_another_containers_rules(true)]
fn nftables_del_by_receipt_never_takes_another_containers_rules(#[case] forged: bool) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let a = rig.topo.container("a", 5).expect("container a");
    let b = rig.topo.container("b", 6).expect("container b");
    let _srv_a = EchoServer::start(&a.ns, "a", 80).expect("echo a");
    let _srv_b = EchoServer::start(&b.ns, "b", 80).expect("echo b");
    let cfg_a = config(&a, Some("nftables"), tcp_8080());
    let cfg_b = config(
        &b,
        Some("nftables"),
        json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]),
    );
    rig.must(&ours(), "ADD", "ctr-a", Some(&a), &cfg_a);
    rig.must(&ours(), "ADD", "ctr-b", Some(&b), &cfg_b);
    let path_a = rig.receipt_path("ctr-a").expect("ADD left a receipt");
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(&path_a).expect("read")).expect("json");
    assert_eq!(receipt["backend"], "nftables");
    // IPv4: one DNAT, two masquerade rules (container, localhost); IPv6:
    // one DNAT, one masquerade rule.
    assert_eq!(
        receipt["rules"].as_array().map(Vec::len),
        Some(5),
        "{receipt}"
    );
    if forged {
        let of_b = std::fs::read(rig.receipt_path("ctr-b").expect("b's")).expect("read");
        std::fs::write(&path_a, of_b).expect("forge");
    }
    rig.must(&ours(), "DEL", "ctr-a", Some(&a), &cfg_a);
    let ruleset = rig.ruleset();
    assert!(
        !ruleset.contains("ctr-a") && ruleset.contains("ctr-b"),
        "{ruleset}"
    );
    assert_eq!(rig.answers(8080), None);
    assert_eq!(rig.answers(8081).as_deref(), Some("b"));
    assert!(rig.receipt_path("ctr-a").is_none(), "DEL removed it");
    rig.must(&ours(), "DEL", "ctr-b", Some(&b), &cfg_b);
    assert!(
        !rig.mappings().contains("cni_hostport"),
        "{}",
        rig.ruleset()
    );
}
