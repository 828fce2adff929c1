//! Latency and process counts of ADD and DEL, ours beside a reference
//! binary in one run: per backend, in a fresh namespace, with N other
//! containers already installed. Rounds alternate which binary goes
//! first, so drift of the machine (caches, load) hits both alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cni::{invoke, run_with_input, speaks_cni_1_1, Call, Outcome};
use crate::matrix::Axis;
use crate::netns::NetnsError;
use crate::toolpath::ToolDir;
use crate::topology::{Topology, TopologyError, BRIDGE, IFNAME};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("namespace setup: {0}")]
    Topology(#[from] TopologyError),
    #[error("namespace setup: {0}")]
    Netns(#[from] NetnsError),
    #[error("tool dir: {0}")]
    Tools(std::io::Error),
    #[error("could not run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("{binary} {command} {id} failed on {backend}: {outcome}")]
    Plugin {
        binary: String,
        command: String,
        id: String,
        backend: String,
        outcome: String,
    },
    #[error("{0} containers: at most {MAX_CONTAINERS} (one host port each from 20000)")]
    TooMany(usize),
    #[error("strace: {0}")]
    Strace(String),
}

/// The bench containers' subnet, on the host bridge beside the /24 the
/// conformance topology has: room for thousands of containers.
const SUBNET_PREFIX: [u8; 2] = [10, 89];

/// Host ports 20000.. and addresses 10.89.0.2.. are handed out per container.
pub const MAX_CONTAINERS: usize = 40_000;

pub struct Options {
    pub plugin: PathBuf,
    pub reference: Option<PathBuf>,
    pub backends: Vec<Axis>,
    pub sizes: Vec<usize>,
    pub ops: usize,
}

/// One binary's figures at one (backend, N).
#[derive(Debug, Clone)]
pub struct Sample {
    pub binary: String,
    pub backend: String,
    pub n: usize,
    pub add: Stats,
    pub del: Stats,
    /// Programs the plugin started (execve) during one ADD / one DEL.
    pub add_spawned: Vec<String>,
    pub del_spawned: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median_ms: f64,
    pub p95_ms: f64,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let median = match ms.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => ms[n / 2],
            n => (ms[n / 2 - 1] + ms[n / 2]) / 2.0,
        };
        // Nearest-rank p95.
        let rank = ((ms.len() as f64) * 0.95).ceil() as usize;
        let p95 = ms.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN);
        Stats {
            median_ms: median,
            p95_ms: p95,
        }
    }
}

struct Binary<'a> {
    label: &'static str,
    path: &'a Path,
}

/// One backend's world: host namespace, one container namespace whose
/// path every bench container shares (portmap never enters it), tools.
struct Bench<'a> {
    axis: Axis,
    topo: Topology,
    sandbox: String,
    tools: ToolDir,
    strace: &'a Path,
    ops: usize,
    progress: &'a dyn Fn(&str),
}

pub fn run(opts: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Sample>, BenchError> {
    let mut sizes = opts.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if let Some(&too_many) = sizes.iter().find(|&&n| n > MAX_CONTAINERS) {
        return Err(BenchError::TooMany(too_many));
    }
    // Found before minutes of installing, not after.
    let strace = which::which("strace")
        .map_err(|_| BenchError::Strace("strace not found (run scripts/install-deps.sh)".into()))?;
    let mut samples = Vec::new();
    for &axis in &opts.backends {
        let topo = Topology::new()?;
        let sandbox = topo.container("bench", 2)?;
        let bench = Bench {
            axis,
            sandbox: sandbox.ns.path().display().to_string(),
            topo,
            tools: ToolDir::new(axis.tools()).map_err(BenchError::Tools)?,
            strace: &strace,
            ops: opts.ops,
            progress,
        };
        bench.topo.host.ip(&[
            "addr",
            "add",
            &format!("{}.{}.0.1/16", SUBNET_PREFIX[0], SUBNET_PREFIX[1]),
            "dev",
            BRIDGE,
        ])?;
        let mut binaries = vec![Binary {
            label: "ours",
            path: &opts.plugin,
        }];
        if let Some(reference) = &opts.reference {
            // A reference speaking only CNI <= 1.0.0 predates upstream's
            // nftables backend: on that row it would measure iptables.
            if axis != Axis::Nftables || speaks_cni_1_1(reference) {
                binaries.push(Binary {
                    label: "upstream",
                    path: reference,
                });
            }
        }
        let mut installed = 0;
        for &n in &sizes {
            progress(&format!("{}: installing {n} containers", axis.name()));
            for i in installed..n {
                bench.call(&binaries[0], "ADD", i)?;
            }
            installed = n;
            samples.extend(bench.measure(&binaries, n)?);
        }
    }
    Ok(samples)
}

impl Bench<'_> {
    fn config(&self, i: usize) -> Value {
        let ip = format!(
            "{}.{}.{}.{}",
            SUBNET_PREFIX[0],
            SUBNET_PREFIX[1],
            i / 250,
            i % 250 + 2
        );
        let port = 20000 + i;
        let mut cfg = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "portmap",
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": BRIDGE}, {"name": IFNAME, "sandbox": self.sandbox}],
                "ips": [{"address": format!("{ip}/16"), "interface": 1}]
            }
        });
        if let Some(key) = self.axis.backend_key() {
            cfg["backend"] = json!(key);
        }
        cfg
    }

    fn call_with(
        &self,
        binary: &Binary<'_>,
        command: &str,
        i: usize,
        wrap: Option<&Path>,
    ) -> Result<Outcome, BenchError> {
        let id = format!("bench-{i}");
        let cfg = self.config(i);
        let call = Call {
            command,
            container_id: &id,
            netns: self.sandbox.clone(),
            ifname: IFNAME,
            path: self.tools.path(),
            config: &cfg,
            env: Vec::new(),
        };
        let spawn = |source| BenchError::Spawn {
            binary: binary.path.display().to_string(),
            source,
        };
        let out = match wrap {
            None => invoke(binary.path, &self.topo.host, &call).map_err(spawn)?,
            Some(trace) => {
                let mut cmd = self.topo.host.command(self.strace);
                cmd.args(["-f", "-qq", "-e", "trace=execve", "-o"])
                    .arg(trace)
                    .arg(binary.path);
                call.apply_env(&mut cmd);
                run_with_input(cmd, cfg.to_string().as_bytes()).map_err(spawn)?
            }
        };
        if !out.ok() {
            return Err(BenchError::Plugin {
                binary: binary.label.to_string(),
                command: command.to_string(),
                id,
                backend: self.axis.name().to_string(),
                outcome: out.summary(),
            });
        }
        Ok(out)
    }

    fn call(&self, binary: &Binary<'_>, command: &str, i: usize) -> Result<Outcome, BenchError> {
        self.call_with(binary, command, i, None)
    }

    /// `ops` ADD+DEL pairs of one more container per binary, then one
    /// traced pair each.
    fn measure(&self, binaries: &[Binary<'_>], n: usize) -> Result<Vec<Sample>, BenchError> {
        // The next container's slot: free while N are installed.
        let probe = n;
        let mut times: BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
        for round in 0..self.ops {
            (self.progress)(&format!(
                "{}: N={n} round {}/{}",
                self.axis.name(),
                round + 1,
                self.ops
            ));
            for k in 0..binaries.len() {
                let b = &binaries[(k + round) % binaries.len()];
                let add = self.call(b, "ADD", probe)?.elapsed;
                let del = self.call(b, "DEL", probe)?.elapsed;
                let entry = times.entry(b.label).or_default();
                entry.0.push(add);
                entry.1.push(del);
            }
        }
        let trace =
            std::env::temp_dir().join(format!("portmap-bench-{}.strace", std::process::id()));
        let mut out = Vec::new();
        for b in binaries {
            self.call_with(b, "ADD", probe, Some(&trace))?;
            let add_spawned = spawned(&trace)?;
            self.call_with(b, "DEL", probe, Some(&trace))?;
            let del_spawned = spawned(&trace)?;
            let (adds, dels) = times.remove(b.label).unwrap_or_default();
            out.push(Sample {
                binary: b.label.to_string(),
                backend: self.axis.name().to_string(),
                n,
                add: Stats::of(&adds),
                del: Stats::of(&dels),
                add_spawned,
                del_spawned,
            });
        }
        let _ = std::fs::remove_file(&trace);
        Ok(out)
    }
}

/// Programs started by the traced plugin (not the plugin itself), from
/// `strace -f -e trace=execve` output: successful execve calls, matching
/// `<unfinished ...>` lines to their `resumed` results by pid.
fn spawned(trace: &Path) -> Result<Vec<String>, BenchError> {
    let text = std::fs::read_to_string(trace)
        .map_err(|e| BenchError::Strace(format!("reading {}: {e}", trace.display())))?;
    Ok(parse_execs(&text).into_iter().skip(1).collect())
}

fn parse_execs(text: &str) -> Vec<String> {
    let mut pending: BTreeMap<&str, String> = BTreeMap::new();
    let mut programs = Vec::new();
    let program = |line: &str| {
        line.split_once("execve(\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| path.rsplit('/').next().unwrap_or(path).to_string())
    };
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or("");
        let succeeded = |l: &str| l.trim_end().ends_with("= 0");
        if line.contains("execve(") {
            let Some(name) = program(line) else { continue };
            if line.contains("<unfinished ...>") {
                pending.insert(pid, name);
            } else if succeeded(line) {
                programs.push(name);
            }
        } else if line.contains("<... execve resumed>") {
            if let Some(name) = pending.remove(pid) {
                if succeeded(line) {
                    programs.push(name);
                }
            }
        }
    }
    programs
}

/// Host facts for the report.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let version = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": cores,
        "kernel": version("uname", "-r"),
        "nft": version("nft", "--version"),
        "iptables": version("iptables", "--version"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_nearest_rank_p95() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = Stats::of(&ms(&[5, 1, 3, 2, 4]));
        assert_eq!((s.median_ms, s.p95_ms), (3.0, 5.0));
        let s = Stats::of(&ms(&(1..=40).collect::<Vec<_>>()));
        assert_eq!((s.median_ms, s.p95_ms), (20.5, 38.0));
    }

    #[test]
    fn execs_are_counted_once_each_failed_lookups_are_not() {
        let trace = r#"100 execve("/opt/portmap", ["portmap"], 0x7ffd /* 5 vars */) = 0
101 execve("/tmp/tools/iptables-save", ["iptables-save"], 0x1 /* 5 vars */ <unfinished ...>
102 execve("/usr/local/sbin/nft", ["nft"], 0x1 /* 5 vars */) = -1 ENOENT (No such file or directory)
102 execve("/usr/sbin/nft", ["nft", "-j"], 0x1 /* 5 vars */) = 0
101 <... execve resumed>)                 = 0
"#;
        assert_eq!(parse_execs(trace), ["portmap", "nft", "iptables-save"]);
    }
}
