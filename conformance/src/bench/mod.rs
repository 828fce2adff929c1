//! The benchmark: sections of one run, each per backend in fresh
//! namespaces, ours beside a reference binary where it applies.
//!
//! - `latency`: ADD/DEL with N other containers, process counts (strace);
//! - `mappings`: one container with many mappings (UDP vs TCP, 5,000
//!   consecutive vs one);
//! - `dataplane`: cost of a new TCP connection with many rules installed;
//! - `restore`: `portmap restore` passes by N, ADD/DEL beside `portmap watch`.

pub mod dataplane;
pub mod latency;
pub mod mappings;
pub mod restore;
mod strace;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cni::{invoke, run_with_input, Call, Outcome};
use crate::matrix::Axis;
use crate::netns::NetnsError;
use crate::toolpath::ToolDir;
use crate::topology::{Container, Topology, TopologyError, BRIDGE, IFNAME};
use crate::traffic::TrafficError;

pub use self::dataplane::DataplaneRow;
pub use self::latency::Sample;
pub use self::mappings::MappingRow;
pub use self::restore::{Reinstall, RestoreRow, WatchRow};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("namespace setup: {0}")]
    Topology(#[from] TopologyError),
    #[error("namespace setup: {0}")]
    Netns(#[from] NetnsError),
    #[error("traffic: {0}")]
    Traffic(#[from] TrafficError),
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
    #[error("{0} mappings: at most {MAX_MAPPINGS} (host ports 20000..65535)")]
    TooManyMappings(usize),
    #[error("strace: {0}")]
    Strace(String),
    #[error("data plane {backend} {state} {target}: {reason}")]
    Connect {
        backend: String,
        state: String,
        target: String,
        reason: String,
    },
    #[error("portmap {command} on {backend}: {reason}")]
    Cli {
        command: String,
        backend: String,
        reason: String,
    },
}

/// The bench containers' subnet, on the host bridge beside the /24 the
/// conformance topology has: room for thousands of containers.
const SUBNET_PREFIX: [u8; 2] = [10, 89];

/// Host ports 20000.. and addresses 10.89.0.2.. are handed out per container.
pub const MAX_CONTAINERS: usize = 40_000;

/// The first of `sizes` over [`MAX_CONTAINERS`], as the error.
pub(crate) fn check_sizes(sizes: &[usize]) -> Result<(), BenchError> {
    match sizes.iter().find(|&&n| n > MAX_CONTAINERS) {
        Some(&n) => Err(BenchError::TooMany(n)),
        None => Ok(()),
    }
}
/// One container's mappings use host ports from 20000 on.
pub const MAX_MAPPINGS: usize = 45_000;

/// The parts of a run, in the order they run and print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Latency,
    Mappings,
    Dataplane,
    Restore,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Latency,
        Section::Mappings,
        Section::Dataplane,
        Section::Restore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Latency => "latency",
            Section::Mappings => "mappings",
            Section::Dataplane => "dataplane",
            Section::Restore => "restore",
        }
    }

    pub fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|x| x.name() == s)
    }
}

pub struct Options {
    pub plugin: PathBuf,
    pub reference: Option<PathBuf>,
    pub backends: Vec<Axis>,
    pub sections: Vec<Section>,
    pub latency: latency::Sizes,
    pub mappings: mappings::Sizes,
    pub dataplane: dataplane::Sizes,
    pub restore: restore::Sizes,
}

/// Every section's figures (empty for a section not run).
#[derive(Debug, Default)]
pub struct Report {
    pub latency: Vec<Sample>,
    pub mappings: Vec<MappingRow>,
    pub dataplane: Vec<DataplaneRow>,
    pub restore: Vec<RestoreRow>,
    pub watch: Vec<WatchRow>,
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median_ms: f64,
    pub p95_ms: f64,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Stats {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Stats::of_values(ms)
    }

    /// Median and nearest-rank p95 of plain figures.
    pub fn of_values(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let rank = ((v.len() as f64) * 0.95).ceil() as usize;
        let p95 = v.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN);
        Stats {
            median_ms: median,
            p95_ms: p95,
        }
    }
}

pub(crate) struct Binary<'a> {
    pub label: &'static str,
    pub path: &'a Path,
}

/// What every section's world shares: the strace found up front, progress.
pub(crate) struct Env<'a> {
    pub strace: PathBuf,
    pub progress: &'a dyn Fn(&str),
}

/// One backend's world: host namespace, one container namespace whose
/// path every bench container shares (portmap never enters it but for
/// UDP conntrack, which lives in the host's), tools, journal.
pub(crate) struct World<'a> {
    pub axis: Axis,
    /// Declared before `topo`: its veth goes while the host still exists.
    pub sandbox: Container,
    pub topo: Topology,
    pub tools: ToolDir,
    pub env: &'a Env<'a>,
}

impl<'a> World<'a> {
    pub fn new(axis: Axis, env: &'a Env<'a>) -> Result<World<'a>, BenchError> {
        let topo = Topology::new()?;
        let sandbox = topo.container("bench", 2)?;
        let world = World {
            axis,
            sandbox,
            tools: ToolDir::new(axis.tools()).map_err(BenchError::Tools)?,
            topo,
            env,
        };
        let (a, b) = (SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        world
            .topo
            .host
            .ip(&["addr", "add", &format!("{a}.{b}.0.1/16"), "dev", BRIDGE])?;
        Ok(world)
    }

    pub fn progress(&self, what: &str) {
        (self.env.progress)(&format!("{}: {what}", self.axis.name()));
    }

    /// A config for bench container `i` (address 10.89.x.y) with `mappings`.
    pub fn config(&self, i: usize, mappings: Value) -> Value {
        let ip = format!(
            "{}.{}.{}.{}",
            SUBNET_PREFIX[0],
            SUBNET_PREFIX[1],
            i / 250,
            i % 250 + 2
        );
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": BRIDGE}, {"name": IFNAME, "sandbox": self.sandbox_path()}],
            "ips": [{"address": format!("{ip}/16"), "interface": 1}]
        });
        self.config_with(prev, mappings)
    }

    pub fn config_with(&self, prev: Value, mappings: Value) -> Value {
        let mut cfg = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "portmap",
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": prev,
        });
        if let Some(key) = self.axis.backend_key() {
            cfg["backend"] = json!(key);
        }
        cfg
    }

    fn sandbox_path(&self) -> String {
        self.sandbox.ns.path().display().to_string()
    }

    /// Runs one command; a failed one is an error. Under `trace`, the
    /// plugin runs under `strace -f -e trace=execve -o trace`.
    pub fn call(
        &self,
        binary: &Binary<'_>,
        command: &str,
        id: &str,
        cfg: &Value,
        trace: Option<&Path>,
    ) -> Result<Outcome, BenchError> {
        let call = Call {
            command,
            container_id: id,
            netns: self.sandbox_path(),
            ifname: IFNAME,
            path: self.tools.path(),
            config: cfg,
            env: Vec::new(),
        };
        let spawn = |source| BenchError::Spawn {
            binary: binary.path.display().to_string(),
            source,
        };
        let out = match trace {
            None => invoke(binary.path, &self.topo.host, &call).map_err(spawn)?,
            Some(trace) => {
                let mut cmd = self.topo.host.command(&self.env.strace);
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
                id: id.to_string(),
                backend: self.axis.name().to_string(),
                outcome: out.summary(),
            });
        }
        Ok(out)
    }

    /// ADDs bench containers `from..to` (one TCP mapping each, host port
    /// 20000 + i) with `binary`.
    pub fn install(&self, binary: &Binary<'_>, from: usize, to: usize) -> Result<(), BenchError> {
        self.install_in(binary, from, to, None)
    }

    /// [`World::install`] with `layout` (config key, value) set in the config.
    pub fn install_in(
        &self,
        binary: &Binary<'_>,
        from: usize,
        to: usize,
        layout: Option<(&str, &str)>,
    ) -> Result<(), BenchError> {
        for i in from..to {
            if i % 100 == 0 {
                self.progress(&format!("installing containers {i}/{to}"));
            }
            let mut cfg = self.config(i, one_mapping(i));
            if let Some((key, value)) = layout {
                cfg[key] = json!(value);
            }
            self.call(binary, "ADD", &container_id(i), &cfg, None)?;
        }
        Ok(())
    }

    /// A `portmap ARGS` command (not a CNI call) in the host namespace,
    /// with this world's tools and journal.
    pub fn cli(&self, plugin: &Path) -> Command {
        let mut cmd = self.topo.host.command(plugin);
        let path = self.tools.path();
        cmd.env_clear()
            .env("PATH", path)
            .env("PORTMAP_STATE_DIR", crate::cni::state_dir(path))
            .env("PORTMAP_LOCK", crate::cni::lock_path(path));
        cmd
    }
}

pub(crate) fn container_id(i: usize) -> String {
    format!("bench-{i}")
}

/// Bench container `i`'s mapping: host port 20000 + i to port 80.
pub(crate) fn one_mapping(i: usize) -> Value {
    json!([{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}])
}

/// `count` consecutive mappings from host port `first`, each to the same
/// container port (the shape `podman -p 20000-24999:20000-24999` sends).
pub(crate) fn port_range(proto: &str, first: usize, count: usize) -> Value {
    Value::Array(
        (first..first + count)
            .map(|p| json!({"hostPort": p, "containerPort": p, "protocol": proto}))
            .collect(),
    )
}

pub fn run(opts: &Options, progress: &dyn Fn(&str)) -> Result<Report, BenchError> {
    opts.latency.check()?;
    opts.mappings.check()?;
    opts.dataplane.check()?;
    opts.restore.check()?;
    // Found before minutes of installing, not after.
    let strace = which::which("strace")
        .map_err(|_| BenchError::Strace("strace not found (run scripts/install-deps.sh)".into()))?;
    let env = Env { strace, progress };
    let mut report = Report::default();
    let mut sections = opts.sections.clone();
    sections.sort_unstable();
    sections.dedup();
    for section in sections {
        for &axis in &opts.backends {
            match section {
                Section::Latency => report.latency.extend(latency::run(opts, axis, &env)?),
                Section::Mappings => report.mappings.extend(mappings::run(opts, axis, &env)?),
                Section::Dataplane => report.dataplane.extend(dataplane::run(opts, axis, &env)?),
                Section::Restore => {
                    let (restore, watch) = restore::run(opts, axis, &env)?;
                    report.restore.extend(restore);
                    report.watch.extend(watch);
                }
            }
        }
    }
    Ok(report)
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
    fn sections_parse_by_name() {
        assert_eq!(Section::parse("dataplane"), Some(Section::Dataplane));
        assert_eq!(Section::parse("nope"), None);
        let range = port_range("udp", 20000, 3);
        assert_eq!(range[2]["hostPort"], 20002);
        assert_eq!(range[2]["containerPort"], 20002);
    }
}
