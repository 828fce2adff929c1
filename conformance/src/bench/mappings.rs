//! One container with many mappings: 1,000 UDP against 1,000 TCP (UDP
//! adds a conntrack flush per family), and 5,000 consecutive TCP ports
//! (podman's `-p 20000-24999:20000-24999`) against a single mapping.
//! Ours only: Debian's v1.1.1 takes about 130 s for one iptables ADD of
//! 1,000 mappings (one process per rule), beyond any sensible run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::strace::{spawned, TraceFile};
use super::{port_range, BenchError, Binary, Env, Options, Stats, World, MAX_MAPPINGS};
use crate::matrix::Axis;

#[derive(Debug, Clone)]
pub struct Sizes {
    /// Mappings of the UDP and the TCP container.
    pub many: usize,
    /// Consecutive TCP mappings of the large container.
    pub consecutive: usize,
    /// ADD+DEL pairs per shape.
    pub ops: usize,
}

/// Host ports of the UDP/TCP containers start here (the consecutive
/// range at 20000, the single mapping at 19000).
const MANY_FROM: usize = 30000;

impl Sizes {
    pub(crate) fn check(&self) -> Result<(), BenchError> {
        if self.many > 65535 - MANY_FROM {
            return Err(BenchError::TooManyMappings(self.many));
        }
        if self.consecutive > MAX_MAPPINGS {
            return Err(BenchError::TooManyMappings(self.consecutive));
        }
        Ok(())
    }
}

/// Which container of the section a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    One,
    Tcp,
    Udp,
    Consecutive,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::One, Shape::Tcp, Shape::Udp, Shape::Consecutive];

    pub fn name(self) -> &'static str {
        match self {
            Shape::One => "1 tcp",
            Shape::Tcp => "tcp",
            Shape::Udp => "udp",
            Shape::Consecutive => "consecutive tcp",
        }
    }

    fn mappings(self, sizes: &Sizes) -> Value {
        match self {
            Shape::One => port_range("tcp", 19000, 1),
            Shape::Tcp => port_range("tcp", MANY_FROM, sizes.many),
            Shape::Udp => port_range("udp", MANY_FROM, sizes.many),
            Shape::Consecutive => port_range("tcp", 20000, sizes.consecutive),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MappingRow {
    pub backend: String,
    pub shape: Shape,
    /// Mappings of the container.
    pub mappings: usize,
    pub add: Stats,
    pub del: Stats,
    pub add_spawned: Vec<String>,
    pub del_spawned: Vec<String>,
}

pub(crate) fn run(
    opts: &Options,
    axis: Axis,
    env: &Env<'_>,
) -> Result<Vec<MappingRow>, BenchError> {
    let world = World::new(axis, env)?;
    let ours = Binary {
        label: "ours",
        path: &opts.plugin,
    };
    let sizes = &opts.mappings;
    let configs: Vec<(Shape, String, Value)> = Shape::ALL
        .iter()
        .map(|&s| {
            let id = format!("map-{}", s.name().replace(' ', "-"));
            (s, id, world.config(0, s.mappings(sizes)))
        })
        .collect();
    let mut times: BTreeMap<Shape, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for round in 0..sizes.ops {
        world.progress(&format!("mappings round {}/{}", round + 1, sizes.ops));
        // Each round starts with another shape: drift hits all alike.
        for k in 0..configs.len() {
            let (shape, id, cfg) = &configs[(k + round) % configs.len()];
            let add = world.call(&ours, "ADD", id, cfg, None)?.elapsed;
            let del = world.call(&ours, "DEL", id, cfg, None)?.elapsed;
            let entry = times.entry(*shape).or_default();
            entry.0.push(add);
            entry.1.push(del);
        }
    }
    let trace = TraceFile::new("mappings");
    let mut rows = Vec::new();
    for (shape, id, cfg) in &configs {
        world.call(&ours, "ADD", id, cfg, Some(&trace.0))?;
        let add_spawned = spawned(&trace.0)?;
        world.call(&ours, "DEL", id, cfg, Some(&trace.0))?;
        let del_spawned = spawned(&trace.0)?;
        let (adds, dels) = times.remove(shape).unwrap_or_default();
        rows.push(MappingRow {
            backend: axis.name().to_string(),
            shape: *shape,
            mappings: cfg["runtimeConfig"]["portMappings"]
                .as_array()
                .map_or(0, Vec::len),
            add: Stats::of(&adds),
            del: Stats::of(&dels),
            add_spawned,
            del_spawned,
        });
    }
    Ok(rows)
}
