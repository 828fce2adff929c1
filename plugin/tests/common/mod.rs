//! Helpers shared by the plugin's black-box test files.
#![allow(dead_code)] // each test file uses its own subset

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use portmap_conformance::cni::{invoke, lock_path, run_with_input, state_dir, Call, Outcome};
use portmap_conformance::firewall;
use portmap_conformance::netns::{prerequisites, Netns};
use portmap_conformance::toolpath::{IptablesVariant, ToolDir, Tools};
use portmap_conformance::topology::{Container, Topology, HOST_V4};
use portmap_conformance::traffic::tcp_ask;
use serde_json::{json, Value};

pub const UPSTREAM: &str = "/usr/lib/cni/portmap";

pub fn ours() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portmap"))
}

/// A topology, a container with an echo server, and a tool PATH.
pub struct Rig {
    pub topo: Topology,
    pub tools: ToolDir,
}

impl Rig {
    pub fn new(tools: Tools) -> Option<Rig> {
        if !prerequisites(&[
            "nft",
            "iptables-legacy-save",
            "iptables-nft-save",
            "conntrack",
        ]) {
            return None;
        }
        Some(Rig {
            topo: Topology::new().expect("topology"),
            tools: ToolDir::new(tools).expect("tools"),
        })
    }

    pub fn call(
        &self,
        plugin: &Path,
        command: &str,
        id: &str,
        c: Option<&Container>,
        cfg: &Value,
    ) -> Outcome {
        let call = Call::new(command, id, c, self.tools.path(), cfg);
        invoke(plugin, &self.topo.host, &call).expect("run plugin")
    }

    pub fn must(
        &self,
        plugin: &Path,
        command: &str,
        id: &str,
        c: Option<&Container>,
        cfg: &Value,
    ) -> Outcome {
        let out = self.call(plugin, command, id, c, cfg);
        assert!(
            out.ok(),
            "{command} {id} by {}: {}\nruleset:\n{}",
            plugin.display(),
            out.summary(),
            self.ruleset()
        );
        out
    }

    /// Runs `portmap ARGS` (the human CLI) in the host namespace, with the
    /// PATH and journal the rig's plugin calls use.
    pub fn cli(&self, args: &[&str]) -> Outcome {
        cli_with(&self.topo.host, self.tools.path(), args)
    }

    /// `portmap list --json` as (backend, container ID, hostPort) rows of
    /// installed mappings, sorted.
    pub fn listed(&self) -> Vec<(String, String, u64)> {
        let out = self.cli(&["list", "--json"]);
        assert_eq!(out.exit, Some(0), "list: {}", out.summary());
        let rows: Vec<Value> = serde_json::from_str(&out.stdout).expect("list JSON");
        let mut v: Vec<(String, String, u64)> = rows
            .iter()
            .filter(|r| r["state"] == "installed")
            .map(|r| {
                (
                    r["backend"].as_str().unwrap_or_default().to_string(),
                    r["containerID"].as_str().unwrap_or_default().to_string(),
                    r["hostPort"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn ruleset(&self) -> String {
        firewall::dump(&self.topo.host)
    }

    /// The receipt file an nftables ADD of `id` left in the rig's journal.
    pub fn receipt_path(&self, id: &str) -> Option<PathBuf> {
        std::fs::read_dir(state_dir(self.tools.path()))
            .ok()?
            .flatten()
            .flat_map(|netns| {
                std::fs::read_dir(netns.path().join(id))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| f.path())
            .find(|p| p.extension().is_some_and(|x| x == "receipt"))
    }

    /// [`Rig::ruleset`] without the localnet guard, which outlives every
    /// container: what is left is the port mappings' state.
    pub fn mappings(&self) -> String {
        firewall::without_guard(&self.ruleset())
    }

    pub fn answers(&self, port: u16) -> Option<String> {
        tcp_ask(
            &self.topo.host,
            SocketAddr::new(IpAddr::V4(HOST_V4), port),
            Duration::from_secs(2),
        )
        .expect("client")
        .map(|a| a.tag)
    }
}

/// `portmap ARGS` in `ns` with tool directory `path` (PATH, journal and
/// lock: never the host's /run/portmap.lock).
pub fn cli_with(ns: &Netns, path: &Path, args: &[&str]) -> Outcome {
    let mut cmd = ns.command(ours());
    cmd.env_clear()
        .env("PATH", path)
        .env("PORTMAP_STATE_DIR", state_dir(path))
        .env("PORTMAP_LOCK", lock_path(path))
        .args(args);
    run_with_input(cmd, b"").expect("run portmap cli")
}

pub fn config(c: &Container, backend: Option<&str>, mappings: Value) -> Value {
    let mut cfg = json!({
        "cniVersion": "1.0.0", "name": "e2e", "type": "portmap",
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": c.prev_result(true, true)
    });
    if let Some(b) = backend {
        cfg["backend"] = json!(b);
    }
    cfg
}

pub fn tcp_8080() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
}

pub fn upstream_available() -> bool {
    if Path::new(UPSTREAM).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{UPSTREAM} missing (CI is set): scripts/install-deps.sh installs containernetworking-plugins");
    }
    eprintln!("SKIPPED: {UPSTREAM} missing");
    false
}

/// The rig and config `backend` key for a test's backend: `nftables`,
/// or the iptables variant `nft` / `legacy`.
pub fn rig_for(backend: &str) -> Option<(Rig, &'static str)> {
    let tools = match backend {
        "nftables" => Tools::default(),
        "nft" => Tools {
            iptables: Some(IptablesVariant::Nft),
            ..Tools::default()
        },
        _ => Tools {
            iptables: Some(IptablesVariant::Legacy),
            both_variants: false,
            ..Tools::default()
        },
    };
    let key = if backend == "nftables" {
        "nftables"
    } else {
        "iptables"
    };
    Some((Rig::new(tools)?, key))
}

/// SIGTERMs a running `portmap watch`; it must exit 0 within 3 s.
pub fn stop_watch(child: &mut std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "watch ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// What a firewall reload does to us: everything of ours is gone.
pub fn flush_behind_the_back(rig: &Rig, backend: &str) {
    match backend {
        "nftables" => {
            rig.topo
                .host
                .exec("nft", &["flush", "ruleset"])
                .expect("nft flush");
        }
        variant => flush_nat(rig, variant),
    }
}

/// Every rule and chain of both families' nat tables of iptables `variant`.
pub fn flush_nat(rig: &Rig, variant: &str) {
    for tool in [
        format!("iptables-{variant}"),
        format!("ip6tables-{variant}"),
    ] {
        rig.topo
            .host
            .exec(&tool, &["-t", "nat", "-F"])
            .expect("flush");
        rig.topo
            .host
            .exec(&tool, &["-t", "nat", "-X"])
            .expect("delete chains");
    }
}

/// Deletes the v4 map element of `key` (e.g. `tcp . 8080`) behind the
/// plugin's back.
pub fn delete_map_element(rig: &Rig, key: &str) {
    let elem = format!("{{ {key} }}");
    rig.topo
        .host
        .exec(
            "nft",
            &[
                "delete",
                "element",
                "ip",
                "cni_hostport",
                "hostports_map",
                &elem,
            ],
        )
        .expect("nft delete element");
}

/// Ours (`ours_cfg`: ctr-ours on c0, hostPort 8080) beside upstream's
/// binary (`up_cfg` without `backend`: ctr-up on c1, 8081): both answer,
/// upstream's DEL keeps ours, our DEL keeps upstream's (re-added). Leaves
/// upstream's container installed.
pub fn ours_beside_upstream(
    rig: &Rig,
    (ours_c, ours_cfg): (&Container, &Value),
    (theirs, up_cfg): (&Container, &Value),
) {
    let upstream = PathBuf::from(UPSTREAM);
    rig.must(&ours(), "ADD", "ctr-ours", Some(ours_c), ours_cfg);
    rig.must(&upstream, "ADD", "ctr-up", Some(theirs), up_cfg);
    assert_eq!(rig.answers(8080).as_deref(), Some("c0"));
    assert_eq!(rig.answers(8081).as_deref(), Some("c1"));
    rig.must(&upstream, "DEL", "ctr-up", Some(theirs), up_cfg);
    assert_eq!(rig.answers(8081), None);
    assert_eq!(
        rig.answers(8080).as_deref(),
        Some("c0"),
        "upstream's DEL kept ours"
    );
    rig.must(&upstream, "ADD", "ctr-up", Some(theirs), up_cfg);
    rig.must(&ours(), "DEL", "ctr-ours", Some(ours_c), ours_cfg);
    assert_eq!(rig.answers(8080), None);
    assert_eq!(
        rig.answers(8081).as_deref(),
        Some("c1"),
        "our DEL kept upstream's"
    );
}
