//! What the rules cost the data plane: new TCP connections from a client
//! namespace (routed to the host) to a host port nothing publishes, where
//! a listener of the host's own runs, and to a published hostPort DNATed
//! to a container's listener. States, each its own host namespace set up
//! once, measured in interleaved rounds: the probe's single mapping
//! alone ("empty"), beside one container of 5,000 mappings, beside 1,000
//! containers of one mapping each, and the same 1,000 in the backend's
//! opt-in indexed layout (nftables: maps; iptables: the port tree).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use serde_json::json;

use super::MAX_CONTAINERS;
use super::{port_range, BenchError, Binary, Env, Options, Stats, World, MAX_MAPPINGS};
use crate::matrix::Axis;
use crate::netns::Netns;
use crate::traffic::TrafficError;

#[derive(Debug, Clone)]
pub struct Sizes {
    /// Mappings of the one large container.
    pub mappings: usize,
    /// Containers of one mapping each.
    pub containers: usize,
    /// Batches per state and target (the median is over batches).
    pub batches: usize,
    /// Connections per batch.
    pub conns: usize,
}

impl Sizes {
    pub(crate) fn check(&self) -> Result<(), BenchError> {
        if self.mappings > MAX_MAPPINGS {
            return Err(BenchError::TooManyMappings(self.mappings));
        }
        if self.containers > MAX_CONTAINERS {
            return Err(BenchError::TooMany(self.containers));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    Mappings,
    Containers,
    /// The same containers in the backend's indexed layout:
    /// `"nftablesLayout": "maps"`, `"iptablesLayout": "tree"`.
    IndexedContainers,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Empty,
        State::Mappings,
        State::Containers,
        State::IndexedContainers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Mappings => "mappings",
            State::Containers => "containers",
            State::IndexedContainers => "containers-indexed",
        }
    }
}

/// The config key and value of `axis`'s indexed layout, and its name.
pub fn indexed_layout(backend: &str) -> (&'static str, &'static str) {
    match backend == Axis::Nftables.name() {
        true => ("nftablesLayout", "maps"),
        false => ("iptablesLayout", "tree"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A listener of the host's own, on a port no mapping names.
    Unpublished,
    /// The probe's hostPort, DNATed to the container's listener.
    Published,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Unpublished => "unpublished",
            Target::Published => "published",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DataplaneRow {
    pub backend: String,
    pub state: State,
    /// Mappings installed beside the probe's (0, 5,000, 1,000).
    pub installed: usize,
    pub target: Target,
    /// Per-connection µs of a batch: median and p95 over batches.
    pub median_us: f64,
    pub p95_us: f64,
    pub batches: usize,
    pub conns: usize,
}

/// The host's own listener; the probe's hostPort (to the container's 80).
const HOST_PORT: u16 = 9000;
const PROBE_PORT: u16 = 19000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Accepted connections a sink keeps open.
const HELD: usize = 64;
/// SO_LINGER on, 0 s: close() sends a reset.
const RESET: nix::libc::linger = nix::libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

/// A listener that accepts and drops, stopped on drop.
struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &Netns, port: u16) -> Result<Sink, BenchError> {
        let addr = SocketAddr::from(([0u8; 4], port));
        let io = |what| move |source| TrafficError::Io { what, addr, source };
        let listener = ns.run(|| TcpListener::bind(addr))?.map_err(io("bind"))?;
        // accept() honours SO_RCVTIMEO: the thread sees `stop` in time.
        setsockopt(
            &listener.as_fd(),
            sockopt::ReceiveTimeout,
            &TimeVal::new(0, 50_000),
        )
        .map_err(|e| io("configure")(e.into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Kept until the client has reset them (it connects one at a
            // time): closing first would leave TIME_WAIT here, and a SYN
            // meeting one stalls for a second.
            let mut held = std::collections::VecDeque::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    held.push_back(conn);
                    if held.len() > HELD {
                        held.pop_front();
                    }
                }
            }
        });
        Ok(Sink {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One state's host: its world, listeners, and the client namespace.
struct Host<'a> {
    state: State,
    installed: usize,
    /// Dropped before the world (their namespaces go with it).
    _sinks: [Sink; 2],
    client: Netns,
    world: World<'a>,
}

impl<'a> Host<'a> {
    fn new(opts: &Options, axis: Axis, env: &'a Env<'a>, state: State) -> Result<Self, BenchError> {
        let world = World::new(axis, env)?;
        let ours = Binary {
            label: "ours",
            path: &opts.plugin,
        };
        let sinks = [
            Sink::start(&world.topo.host, HOST_PORT)?,
            Sink::start(&world.sandbox.ns, 80)?,
        ];
        let client = world.topo.remote()?;
        let probe = json!([{"hostPort": PROBE_PORT, "containerPort": 80, "protocol": "tcp"}]);
        let mut cfg = world.config_with(world.sandbox.prev_result(true, false), probe);
        // In the indexed state the probe is an element (a leaf) too: a
        // rule of its own would sit in front of the lookup, and the
        // published port would measure that rule, not the layout.
        let layout = indexed_layout(axis.name());
        if state == State::IndexedContainers {
            cfg[layout.0] = json!(layout.1);
        }
        world.call(&ours, "ADD", "dp-probe", &cfg, None)?;
        let sizes = &opts.dataplane;
        let installed = match state {
            State::Empty => 0,
            State::Mappings => {
                world.progress(&format!("data plane: {} mappings", sizes.mappings));
                let cfg = world.config(0, port_range("tcp", 20000, sizes.mappings));
                world.call(&ours, "ADD", "dp-many", &cfg, None)?;
                sizes.mappings
            }
            State::Containers => {
                world.install(&ours, 0, sizes.containers)?;
                sizes.containers
            }
            State::IndexedContainers => {
                world.install_in(&ours, 0, sizes.containers, Some(layout))?;
                sizes.containers
            }
        };
        Ok(Host {
            state,
            installed,
            _sinks: sinks,
            client,
            world,
        })
    }

    fn addr(&self, target: Target) -> SocketAddr {
        let port = match target {
            Target::Unpublished => HOST_PORT,
            Target::Published => PROBE_PORT,
        };
        SocketAddr::from(([10, 77, 0, 1], port))
    }

    /// `conns` connect+close from the client; the time per connection.
    fn batch(&self, target: Target, conns: usize) -> Result<f64, BenchError> {
        let to = self.addr(target);
        let timed = self.client.run(|| {
            let start = Instant::now();
            for _ in 0..conns {
                let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
                    .map_err(|e| format!("connect {to}: {e}"))?;
                // Closed with a reset: no TIME_WAIT piling up over batches.
                setsockopt(&s, sockopt::Linger, &RESET).map_err(|e| format!("SO_LINGER: {e}"))?;
            }
            Ok::<_, String>(start.elapsed())
        })?;
        let elapsed = timed.map_err(|reason| BenchError::Connect {
            backend: self.world.axis.name().to_string(),
            state: self.state.name().to_string(),
            target: target.name().to_string(),
            reason,
        })?;
        Ok(elapsed.as_secs_f64() * 1e6 / conns.max(1) as f64)
    }
}

pub(crate) fn run(
    opts: &Options,
    axis: Axis,
    env: &Env<'_>,
) -> Result<Vec<DataplaneRow>, BenchError> {
    let sizes = &opts.dataplane;
    let hosts = State::ALL
        .iter()
        .map(|&s| Host::new(opts, axis, env, s))
        .collect::<Result<Vec<_>, _>>()?;
    let targets = [Target::Unpublished, Target::Published];
    // Warm-up: neighbours resolved, caches filled, before anything counts.
    for h in &hosts {
        for t in targets {
            h.batch(t, sizes.conns.min(50))?;
        }
    }
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); hosts.len() * targets.len()];
    for round in 0..sizes.batches {
        (env.progress)(&format!(
            "{}: data plane round {}/{}",
            axis.name(),
            round + 1,
            sizes.batches
        ));
        // Each round starts with another state: drift hits all alike.
        for k in 0..hosts.len() {
            let hi = (k + round) % hosts.len();
            for (ti, t) in targets.iter().enumerate() {
                per[hi * targets.len() + ti].push(hosts[hi].batch(*t, sizes.conns)?);
            }
        }
    }
    let mut rows = Vec::new();
    for (hi, h) in hosts.iter().enumerate() {
        for (ti, t) in targets.iter().enumerate() {
            let s = Stats::of_values(per[hi * targets.len() + ti].clone());
            rows.push(DataplaneRow {
                backend: axis.name().to_string(),
                state: h.state,
                installed: h.installed,
                target: *t,
                median_us: s.median_ms,
                p95_us: s.p95_ms,
                batches: sizes.batches,
                conns: sizes.conns,
            });
        }
    }
    Ok(rows)
}
