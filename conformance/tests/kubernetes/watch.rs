//! The image's `portmap watch`, run as the DaemonSet's watch container
//! (its mounts, capabilities, args) in a network namespace Docker made for
//! it (`--network none`, never the host's), with a pod namespace on a veth:
//! the runtime's ADD on the node side, our rules removed behind the
//! watch's back, back in place and answering.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use portmap_conformance::cni::run_with_input;
use portmap_conformance::netns::{prerequisites, Netns};
use portmap_conformance::toolpath::{IptablesVariant, ToolDir, Tools};
use portmap_conformance::traffic::{tcp_ask, EchoServer};
use rstest::rstest;
use serde_json::json;

use crate::manifest::{self, daemonset, docker, docker_args, Named, Scratch};
use crate::ours;

const NODE: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const POD: &str = "10.66.0.2/24";
const HOST_PORT: u16 = 18080;

/// Our rules in `ns` as `backend`'s tool lists them ("" when none).
fn our_rules(ns: &Netns, backend: Option<&str>) -> String {
    let mut cmd = match backend {
        None => ns.command("nft"),
        Some(_) => ns.command("iptables-legacy-save"),
    };
    match backend {
        None => cmd.args(["list", "table", "ip", "cni_hostport"]),
        Some(_) => cmd.args(["-t", "nat"]),
    };
    let out = cmd.output().expect("list rules");
    if !out.status.success() {
        return String::new();
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes them behind the watch's back, as a firewall reload would.
fn remove_rules(ns: &Netns, backend: Option<&str>) {
    let runs: &[&[&str]] = match backend {
        None => &[&["nft", "delete", "table", "ip", "cni_hostport"]],
        Some(_) => &[
            &["iptables-legacy", "-t", "nat", "-F"],
            &["iptables-legacy", "-t", "nat", "-X"],
        ],
    };
    for run in runs {
        let out = ns.command(run[0]).args(&run[1..]).output().expect("remove");
        assert!(out.status.success(), "{run:?}: {out:?}");
    }
    assert!(
        !our_rules(ns, backend).contains(&HOST_PORT.to_string()),
        "removed"
    );
}

fn logs(name: &str) -> String {
    let out = docker(&["logs", name]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Auto (nftables here: restored on its notification) and
/// iptables-legacy (no notifications: the manifest's --interval; its raw
/// socket is why the watch has NET_RAW).
#[rstest]
fn image_watch_restores_a_mapping_in_a_namespace(
    #[values(None, Some("iptables-legacy"))] backend: Option<&str>,
) {
    if !prerequisites(&["docker", "nft", "iptables-legacy-save"]) || !manifest::image_available() {
        return;
    }
    let ds = daemonset();
    // Node state the watch shares with the runtime's plugin runs: the
    // test's own (the host's /run/cni/portmap and locks stay untouched).
    let label = backend.unwrap_or("auto");
    let state = Scratch::new(&format!("node-{label}"));
    let journal = state.0.join("cni-portmap");
    std::fs::create_dir(&journal).expect("journal dir");
    for f in ["portmap.lock", "xtables.lock"] {
        std::fs::write(state.0.join(f), "").expect("lock file");
    }
    let host = |path: &str| match path {
        "/run/cni/portmap" => journal.display().to_string(),
        "/run/portmap.lock" | "/run/xtables.lock" => {
            state.0.join(&path["/run/".len()..]).display().to_string()
        }
        _ => path.to_string(),
    };
    // Before the watch starts: /run/netns is then a shared mount to follow.
    let pod = Netns::new("k8spod").expect("pod namespace");
    let name = format!("pmk8s-watch-{label}-{}", std::process::id());
    let named = Named(name.clone());
    let mut args = vec!["run", "-d", "--name", &name, "--network", "none"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(docker_args(&ds, "watch", &host));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = docker(&args);
    assert!(started.status.success(), "{started:?}");
    let started_at = Instant::now();
    while !logs(&name).contains("portmap watch:") {
        assert!(
            started_at.elapsed() < Duration::from_secs(10),
            "watch did not start: {}",
            logs(&name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &name]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let node = Netns::open(Path::new(&format!("/proc/{pid}/ns/net"))).expect("its namespace");

    // The node's side: a veth to the pod, as a bridge plugin would leave it.
    let ip = |ns: &Netns, args: &[&str]| {
        let out = ns.command("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(
        &node,
        &[
            "link",
            "add",
            "pmk8s0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ],
    );
    ip(
        &node,
        &["addr", "add", &format!("{NODE}/24"), "dev", "pmk8s0"],
    );
    ip(&node, &["link", "set", "pmk8s0", "up"]);
    ip(&pod, &["addr", "add", POD, "dev", "eth0"]);
    ip(&pod, &["link", "set", "eth0", "up"]);
    ip(&pod, &["route", "add", "default", "via", &NODE.to_string()]);
    let _echo = EchoServer::start(&pod, "k8s-pod", 80).expect("echo");

    // The runtime's ADD, on the node (not in the container), sharing the
    // journal and lock with the watch; `iptables` is legacy for that case.
    let tools = ToolDir::new(Tools {
        iptables: Some(IptablesVariant::Legacy),
        both_variants: false,
        ..Tools::default()
    })
    .expect("tool dir");
    let netns = pod.path().display().to_string();
    let cni = |command: &str| {
        let mut cfg = json!({
            "cniVersion": "1.0.0", "name": "pmk8s", "type": "portmap",
            "runtimeConfig": {"portMappings": [
                {"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": netns}],
                "ips": [{"address": POD, "interface": 0}]}
        });
        if backend.is_some() {
            cfg["backend"] = json!("iptables");
        }
        let mut cmd = node.command(ours());
        cmd.env_clear()
            .env("PATH", tools.path())
            .env("PORTMAP_STATE_DIR", &journal)
            .env("PORTMAP_LOCK", state.0.join("portmap.lock"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "k8s-pod-1")
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin");
        let out = run_with_input(cmd, cfg.to_string().as_bytes()).expect("plugin");
        assert!(out.ok(), "{command}: {}", out.summary());
    };
    let answers = || {
        tcp_ask(
            &node,
            SocketAddr::new(IpAddr::V4(NODE), HOST_PORT),
            Duration::from_secs(1),
        )
        .expect("client")
        .map(|a| a.tag)
    };
    cni("ADD");
    assert_eq!(answers().as_deref(), Some("k8s-pod"));

    remove_rules(&node, backend);
    let gone = Instant::now();
    // Notifications: within a second; else the interval the manifest gives.
    let within = Duration::from_secs(if backend.is_none() { 2 } else { 5 + 3 });
    let back = loop {
        let rules = our_rules(&node, backend);
        if rules.contains(&HOST_PORT.to_string()) && answers().as_deref() == Some("k8s-pod") {
            break gone.elapsed();
        }
        assert!(
            gone.elapsed() < within,
            "not restored; the namespace has:\n{rules}\nwatch said:\n{}",
            logs(&name)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{label}: restored {back:?} after the rules were removed");
    let said = logs(&name);
    assert!(said.contains("reinstalled k8s-pod-1 in"), "{said}");

    cni("DEL");
    assert!(
        !our_rules(&node, backend).contains(&HOST_PORT.to_string()),
        "DEL"
    );
    let stop = docker(&["stop", "-t", "5", &name]);
    assert!(stop.status.success(), "{stop:?}");
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "{}",
        logs(&name)
    );
    let said = logs(&name);
    assert!(
        said.trim_end().ends_with("portmap watch: stopped"),
        "{said}"
    );
    drop(named);
}
