//! ADD and DEL latency and process counts, ours beside a reference binary,
//! with N other containers installed. Rounds alternate which binary goes
//! first, so drift of the machine (caches, load) hits both alike.

use std::collections::BTreeMap;
use std::time::Duration;

use super::strace::{spawned, TraceFile};
use super::{container_id, one_mapping, BenchError, Binary, Env, Options, Stats, World};
use crate::cni::speaks_cni_1_1;
use crate::matrix::Axis;

/// The section's sizes.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Containers already installed when measuring.
    pub sizes: Vec<usize>,
    /// ADD+DEL pairs per binary and N.
    pub ops: usize,
}

impl Sizes {
    pub(crate) fn check(&self) -> Result<(), BenchError> {
        super::check_sizes(&self.sizes)
    }
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

/// The binaries measured on `axis`: ours, and the reference where it can
/// have written the rules. A reference speaking only CNI <= 1.0.0
/// predates upstream's nftables backend: there it would measure iptables.
pub(crate) fn binaries(opts: &Options, axis: Axis) -> Vec<Binary<'_>> {
    let mut binaries = vec![Binary {
        label: "ours",
        path: &opts.plugin,
    }];
    if let Some(reference) = &opts.reference {
        if axis != Axis::Nftables || speaks_cni_1_1(reference) {
            binaries.push(Binary {
                label: "upstream",
                path: reference,
            });
        }
    }
    binaries
}

pub(crate) fn run(opts: &Options, axis: Axis, env: &Env<'_>) -> Result<Vec<Sample>, BenchError> {
    let mut sizes = opts.latency.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let world = World::new(axis, env)?;
    let binaries = binaries(opts, axis);
    let mut samples = Vec::new();
    let mut installed = 0;
    for &n in &sizes {
        world.install(&binaries[0], installed, n)?;
        installed = n;
        samples.extend(measure(&world, &binaries, n, opts.latency.ops)?);
    }
    Ok(samples)
}

/// `ops` ADD+DEL pairs of one more container per binary, then one
/// traced pair each.
fn measure(
    world: &World<'_>,
    binaries: &[Binary<'_>],
    n: usize,
    ops: usize,
) -> Result<Vec<Sample>, BenchError> {
    // The next container's slot: free while N are installed.
    let (id, cfg) = (container_id(n), world.config(n, one_mapping(n)));
    let mut times: BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for round in 0..ops {
        world.progress(&format!("latency N={n} round {}/{ops}", round + 1));
        for k in 0..binaries.len() {
            let b = &binaries[(k + round) % binaries.len()];
            let add = world.call(b, "ADD", &id, &cfg, None)?.elapsed;
            let del = world.call(b, "DEL", &id, &cfg, None)?.elapsed;
            let entry = times.entry(b.label).or_default();
            entry.0.push(add);
            entry.1.push(del);
        }
    }
    let trace = TraceFile::new("latency");
    let mut out = Vec::new();
    for b in binaries {
        world.call(b, "ADD", &id, &cfg, Some(&trace.0))?;
        let add_spawned = spawned(&trace.0)?;
        world.call(b, "DEL", &id, &cfg, Some(&trace.0))?;
        let del_spawned = spawned(&trace.0)?;
        let (adds, dels) = times.remove(b.label).unwrap_or_default();
        out.push(Sample {
            binary: b.label.to_string(),
            backend: world.axis.name().to_string(),
            n,
            add: Stats::of(&adds),
            del: Stats::of(&dels),
            add_spawned,
            del_spawned,
        });
    }
    Ok(out)
}
