//! What the watch tests share: `portmap watch` run in the rig's host
//! namespace (its output in files), tool wrappers that count or slow
//! calls, and many journaled containers on one real namespace.
#![allow(dead_code)] // each test file uses its own subset

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use portmap_conformance::cni::{lock_path, run_with_input, state_dir, Outcome};
use portmap_conformance::topology::Container;
use serde_json::{json, Value};

use crate::common::{config, ours, Rig};

pub use crate::common::rig_for;

/// The binary under test: `$PORTMAP_WATCH_BIN` (scripts/watch-bench.sh
/// passes the release build), else the one cargo built for the tests.
pub fn plugin() -> PathBuf {
    std::env::var_os("PORTMAP_WATCH_BIN").map_or_else(ours, PathBuf::from)
}

/// `portmap ARGS` in the rig's host namespace, with the PATH, journal and
/// lock its plugin calls use.
pub fn cli(rig: &Rig, args: &[&str]) -> Outcome {
    run_with_input(command(rig, args), b"").expect("run portmap cli")
}

fn command(rig: &Rig, args: &[&str]) -> std::process::Command {
    let path = rig.tools.path();
    let mut cmd = rig.topo.host.command(plugin());
    cmd.env_clear()
        .env("PATH", path)
        .env("PORTMAP_STATE_DIR", state_dir(path))
        .env("PORTMAP_LOCK", lock_path(path))
        .args(args);
    cmd
}

/// `portmap restore` started in the background.
pub fn spawn_restore(rig: &Rig) -> Child {
    command(rig, &["restore"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portmap restore")
}

/// A running `portmap watch`; killed when dropped.
pub struct Watch {
    child: Child,
    out: PathBuf,
}

impl Watch {
    /// Starts it and waits for its first line.
    pub fn start(rig: &Rig, interval_secs: u64) -> Watch {
        let out = rig.tools.path().join("watch.out");
        let err = rig.tools.path().join("watch.err");
        let child = command(rig, &["watch", "--interval", &interval_secs.to_string()])
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(err).expect("err"))
            .spawn()
            .expect("start portmap watch");
        let w = Watch { child, out };
        let started = Instant::now();
        while !w.said().contains("portmap watch: journal") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "watch did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Its pass lines so far.
    pub fn passes(&self) -> Vec<String> {
        self.said()
            .lines()
            .filter(|l| l.starts_with("portmap watch: pass ("))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM, then its exit within 3 s.
    pub fn stop(mut self) -> String {
        crate::common::stop_watch(&mut self.child);
        self.said()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `tools` in the rig's PATH with shell wrappers running `before`
/// (with `$TOOL` set to the tool's name) ahead of the real tool.
pub fn wrap(rig: &Rig, tools: &[&str], before: &str) {
    let dir = rig.tools.path();
    for tool in tools {
        let link = dir.join(tool);
        let Ok(real) = std::fs::read_link(&link) else {
            continue;
        };
        std::fs::remove_file(&link).expect("unlink");
        let script = format!(
            "#!/bin/sh\nTOOL={tool}\n{before}\nexec {} \"$@\"\n",
            real.display()
        );
        std::fs::write(&link, script).expect("wrapper");
        std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// Wraps `tools` to log each call (`tool args`) to the returned file.
pub fn count_calls(rig: &Rig, tools: &[&str]) -> PathBuf {
    let log = rig.tools.path().join("calls.log");
    wrap(
        rig,
        tools,
        &format!("echo \"$TOOL $*\" >> {}", log.display()),
    );
    log
}

/// Every read tool a pass may run.
pub const READ_TOOLS: [&str; 9] = [
    "nft",
    "iptables-save",
    "ip6tables-save",
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "iptables-nft",
    "iptables-legacy",
];

/// The config of synthetic container `i` of `c`'s namespace: its own
/// container address (10.90.x.y, nobody answers there) and host port.
pub fn synthetic(c: &Container, key: &str, i: u32) -> (String, Value) {
    let mut cfg = config(
        c,
        Some(key),
        json!([{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}]),
    );
    let addr = format!("10.90.{}.{}/16", i / 250, i % 250 + 2);
    cfg["prevResult"]["ips"] = json!([{"address": addr, "gateway": "10.90.0.1", "interface": 1}]);
    (format!("ctr-syn-{i}"), cfg)
}

/// Removes our rules behind the plugin's back: our table (nftables), or
/// the nat table's rules and chains (iptables).
pub fn flush_ours(rig: &Rig, backend: &str) {
    match backend {
        "nftables" => {
            rig.topo
                .host
                .exec("nft", &["delete", "table", "ip", "cni_hostport"])
                .expect("nft delete table");
        }
        variant => crate::common::flush_nat(rig, variant),
    }
}

/// How long until `port` answers with `tag` again (polled every 20 ms),
/// up to `limit`.
pub fn back_after(rig: &Rig, port: u16, tag: &str, limit: Duration) -> Option<Duration> {
    let since = Instant::now();
    while since.elapsed() < limit {
        if rig.answers(port).as_deref() == Some(tag) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// (utime + stime in clock ticks, VmRSS in kB) of process `pid`.
pub fn usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<u64>().expect("ticks");
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let cpu = ticks(11) + ticks(12);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    (cpu, rss)
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}
