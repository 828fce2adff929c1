//! `portmap restore` with nothing missing at N journaled containers (the
//! pass a boot or a watch wake-up runs), the reinstall of all N after a
//! flush of our tables (beyond the first N), and ADD/DEL latency of one more
//! container with `portmap watch` running beside the largest N against
//! the same host without it. Ours only (upstream has neither command).
//! Both run in the bench's host namespace: the journal is per namespace.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{container_id, one_mapping, BenchError, Binary, Env, Options, Stats, World};
use crate::matrix::Axis;

#[derive(Debug, Clone)]
pub struct Sizes {
    /// Journaled containers at each restore measurement.
    pub sizes: Vec<usize>,
    /// Restore passes per N (fewer once `budget` is spent).
    pub ops: usize,
    /// ADD+DEL pairs with watch running and without.
    pub watch_ops: usize,
}

/// Time after which no further pass of one N starts: a pass that reads
/// the whole firewall per container can take a minute at N = 1,000.
const BUDGET: Duration = Duration::from_secs(10);
/// A pass taking longer is stopped and reported as "> 60 s" (the whole
/// run must stay within minutes; one pass took 310 s at N = 1,000).
pub const PASS_LIMIT: Duration = Duration::from_secs(60);
/// A reinstall after a flush taking longer is stopped (reported as such)
/// and finished by an unlimited pass, so later measurements see all N.
pub const REINSTALL_LIMIT: Duration = Duration::from_secs(180);
/// How long `portmap watch` gets to stop after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(10);

impl Sizes {
    pub(crate) fn check(&self) -> Result<(), BenchError> {
        super::check_sizes(&self.sizes)
    }
}

#[derive(Debug, Clone)]
pub struct RestoreRow {
    pub backend: String,
    pub n: usize,
    pub pass: Stats,
    pub runs: usize,
    /// "N in place" as the pass printed it, when it prints that.
    pub in_place: Option<usize>,
    /// Set when a pass outlasted this limit and was stopped (then not
    /// among `runs`).
    pub over: Option<Duration>,
    /// The reinstall of all N after a flush (not at the first N).
    pub reinstall: Option<Reinstall>,
}

/// One `portmap restore` after our tables were flushed.
#[derive(Debug, Clone)]
pub struct Reinstall {
    /// `None`: stopped at [`REINSTALL_LIMIT`].
    pub elapsed: Option<Duration>,
    pub limit: Duration,
}

#[derive(Debug, Clone)]
pub struct WatchRow {
    pub backend: String,
    pub n: usize,
    pub quiet_add: Stats,
    pub quiet_del: Stats,
    pub watch_add: Stats,
    pub watch_del: Stats,
}

pub(crate) fn run(
    opts: &Options,
    axis: Axis,
    env: &Env<'_>,
) -> Result<(Vec<RestoreRow>, Vec<WatchRow>), BenchError> {
    let mut sizes = opts.restore.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let world = World::new(axis, env)?;
    let ours = Binary {
        label: "ours",
        path: &opts.plugin,
    };
    let mut rows = Vec::new();
    let mut installed = 0;
    for (k, &n) in sizes.iter().enumerate() {
        world.install(&ours, installed, n)?;
        installed = n;
        let mut row = passes(&world, &ours, n, opts.restore.ops)?;
        if k > 0 {
            row.reinstall = Some(reinstall(&world, &ours, n)?);
        }
        rows.push(row);
    }
    let watch = match sizes.last() {
        Some(&n) => vec![beside_watch(&world, &ours, n, opts.restore.watch_ops)?],
        None => Vec::new(),
    };
    Ok((rows, watch))
}

fn cli_error(world: &World<'_>, command: &str, reason: String) -> BenchError {
    BenchError::Cli {
        command: command.to_string(),
        backend: world.axis.name().to_string(),
        reason,
    }
}

fn passes(
    world: &World<'_>,
    ours: &Binary<'_>,
    n: usize,
    ops: usize,
) -> Result<RestoreRow, BenchError> {
    let mut times = Vec::new();
    let mut in_place = None;
    let mut over = None;
    let started = Instant::now();
    while times.len() < ops.max(1) && (times.is_empty() || started.elapsed() < BUDGET) {
        world.progress(&format!("restore N={n} pass {}/{ops}", times.len() + 1));
        let Some((elapsed, stdout)) = pass(world, ours, PASS_LIMIT)? else {
            over = Some(PASS_LIMIT);
            break;
        };
        in_place = parse_in_place(&stdout);
        if in_place.is_some_and(|k| k != n) {
            return Err(cli_error(
                world,
                "restore",
                format!("{n} containers journaled, pass said: {}", stdout.trim()),
            ));
        }
        times.push(elapsed);
    }
    Ok(RestoreRow {
        backend: world.axis.name().to_string(),
        n,
        pass: Stats::of(&times),
        runs: times.len(),
        in_place,
        over,
        reinstall: None,
    })
}

/// Our tables flushed (what a firewall reload does), then one timed
/// `portmap restore`, which must reinstall all `n`.
fn reinstall(world: &World<'_>, ours: &Binary<'_>, n: usize) -> Result<Reinstall, BenchError> {
    world.progress(&format!("restore N={n} after a flush"));
    let host = &world.topo.host;
    let flush = |tool: &str, args: &[&str]| {
        host.exec(tool, args)
            .map(|_| ())
            .map_err(|e| cli_error(world, tool, e.to_string()))
    };
    match world.axis {
        Axis::Nftables | Axis::NftablesMaps => flush("nft", &["flush", "ruleset"])?,
        Axis::IptablesNft | Axis::IptablesNftTree | Axis::IptablesLegacy => {
            let variant = if matches!(world.axis, Axis::IptablesNft | Axis::IptablesNftTree) {
                "nft"
            } else {
                "legacy"
            };
            for tool in [
                format!("iptables-{variant}"),
                format!("ip6tables-{variant}"),
            ] {
                flush(&tool, &["-t", "nat", "-F"])?;
                flush(&tool, &["-t", "nat", "-X"])?;
            }
        }
        Axis::Auto => {
            return Err(cli_error(world, "restore", "no flush for auto".into()));
        }
    }
    let Some((elapsed, stdout)) = pass(world, ours, REINSTALL_LIMIT)? else {
        world.progress(&format!("restore N={n}: finishing the stopped reinstall"));
        pass(world, ours, Duration::from_secs(3600))?;
        return Ok(Reinstall {
            elapsed: None,
            limit: REINSTALL_LIMIT,
        });
    };
    let wanted = format!("reinstalled {n} container(s), 0 in place");
    if !stdout.contains(&wanted) {
        return Err(cli_error(
            world,
            "restore",
            format!("after a flush of {n}, the pass said: {}", stdout.trim()),
        ));
    }
    Ok(Reinstall {
        elapsed: Some(elapsed),
        limit: REINSTALL_LIMIT,
    })
}

/// One `portmap restore`: its time and output, `None` when it outlasted
/// `limit` (then killed: a pass with nothing missing writes nothing).
fn pass(
    world: &World<'_>,
    ours: &Binary<'_>,
    limit: Duration,
) -> Result<Option<(Duration, String)>, BenchError> {
    let mut cmd = world.cli(ours.path);
    cmd.arg("restore")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| cli_error(world, "restore", e.to_string()))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send((start.elapsed(), out));
    });
    let (elapsed, out) = match rx.recv_timeout(limit) {
        Ok(done) => done,
        Err(_) => {
            // Our own child, by its pid; the thread reaps it.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv_timeout(STOP_WAIT);
            return Ok(None);
        }
    };
    let out = out.map_err(|e| cli_error(world, "restore", e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(cli_error(
            world,
            "restore",
            format!(
                "{}: {} {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(Some((elapsed, stdout)))
}

/// `reinstalled 0 container(s), 20 in place, ...` → 20.
fn parse_in_place(stdout: &str) -> Option<usize> {
    let (before, _) = stdout.split_once(" in place")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// A running `portmap watch`, stopped by SIGTERM (its pid only) on drop.
/// Its stdout is read to the end by a thread: a closed pipe would make
/// its next line a failure.
struct Watch {
    child: Child,
    stopped: bool,
}

/// How long `portmap watch` may take to print its first line.
const START_WAIT: Duration = Duration::from_secs(10);

impl Watch {
    fn start(world: &World<'_>, ours: &Binary<'_>) -> Result<Watch, BenchError> {
        let mut cmd = world.cli(ours.path);
        cmd.arg("watch")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| cli_error(world, "watch", e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut watch = Watch {
            child,
            stopped: false,
        };
        // Its first line says it is subscribed; none means it exited or hangs.
        if rx.recv_timeout(START_WAIT).is_err() {
            let _ = watch.terminate();
            return Err(cli_error(
                world,
                "watch",
                "no first line within 10 s".into(),
            ));
        }
        Ok(watch)
    }

    /// SIGTERM, then a bounded wait: whether it stopped cleanly.
    fn terminate(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("watch exited with {status}")),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e.to_string()),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "watch did not stop within {STOP_WAIT:?} of SIGTERM"
        ))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// ADD+DEL pairs of one more container: quiet, beside watch, quiet again
/// (the two quiet halves pooled, so drift over the section hits both).
fn beside_watch(
    world: &World<'_>,
    ours: &Binary<'_>,
    n: usize,
    ops: usize,
) -> Result<WatchRow, BenchError> {
    let (id, cfg) = (container_id(n), world.config(n, one_mapping(n)));
    let pairs = |label: &str, count: usize, adds: &mut Vec<Duration>, dels: &mut Vec<Duration>| {
        for k in 0..count {
            world.progress(&format!("N={n} {label} ADD+DEL {}/{count}", k + 1));
            adds.push(world.call(ours, "ADD", &id, &cfg, None)?.elapsed);
            dels.push(world.call(ours, "DEL", &id, &cfg, None)?.elapsed);
        }
        Ok::<_, BenchError>(())
    };
    let (mut quiet_add, mut quiet_del) = (Vec::new(), Vec::new());
    let (mut watch_add, mut watch_del) = (Vec::new(), Vec::new());
    pairs("quiet", ops.div_ceil(2), &mut quiet_add, &mut quiet_del)?;
    let mut watch = Watch::start(world, ours)?;
    pairs("beside watch", ops, &mut watch_add, &mut watch_del)?;
    watch
        .terminate()
        .map_err(|e| cli_error(world, "watch", e))?;
    pairs("quiet", ops / 2, &mut quiet_add, &mut quiet_del)?;
    Ok(WatchRow {
        backend: world.axis.name().to_string(),
        n,
        quiet_add: Stats::of(&quiet_add),
        quiet_del: Stats::of(&quiet_del),
        watch_add: Stats::of(&watch_add),
        watch_del: Stats::of(&watch_del),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_place_count_is_read_from_the_summary() {
        let line = "reinstalled 0 container(s), 200 in place, 0 gone, 0 could not be restored\n";
        assert_eq!(parse_in_place(line), Some(200));
        assert_eq!(parse_in_place("something else"), None);
    }
}
