//! firewalld's D-Bus signals as restore triggers for `portmap watch`.
//!
//! What firewalld 1.3 emits: `Reloaded` at the end of a reload
//! (`--reload`, `--complete-reload`, SIGHUP, i.e. `systemctl reload`),
//! after its flush. On start it takes its bus name *before* its start-up
//! flush and emits nothing after it; its main loop answers calls only once
//! the start is over, so a `state` query sent when the name appears is
//! answered after the flush. On exit (CleanupOnExit) it flushes, then its
//! name goes.

use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type;
use zbus::MatchRule;

use super::{on_bus, state, system_bus, FirewalldError, BUS_NAME, PATH};

/// Why a restore pass should follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `Reloaded`: a reload is over.
    Reloaded,
    /// firewalld came up and its start-up flush is over.
    Started,
    /// firewalld's name went away (its exit flushes too).
    Stopped,
    /// The bus came back after a loss: signals may have been missed.
    Reconnected,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Reloaded => "firewalld reloaded",
            Trigger::Started => "firewalld started",
            Trigger::Stopped => "firewalld stopped",
            Trigger::Reconnected => "system bus reconnected",
        })
    }
}

/// How long a start-up may take before the `state` query gives up.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Reconnection attempts after the bus went away, 1 s apart doubling to 30 s.
const RECONNECTS: u32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// firewalld's signals, listened to on a thread of their own.
pub struct Listener;

impl Listener {
    /// Subscribes on the system bus and starts listening, handing each
    /// trigger to `forward`; prints one line saying whether firewalld
    /// signals are on. `false`: no bus, and the watch goes on without them.
    pub fn start(forward: impl Fn(Trigger) + Send + 'static) -> bool {
        let sub = match Subscription::open() {
            Ok(s) => s,
            Err(e) => {
                println!("portmap watch: firewalld signals: off ({e})");
                return false;
            }
        };
        let running = match on_bus(&sub.bus) {
            Ok(true) => "firewalld is running",
            Ok(false) => "firewalld is not running now",
            Err(_) => "firewalld's presence unknown",
        };
        println!("portmap watch: firewalld signals: on ({running})");
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("firewalld".into())
            .spawn(move || listen(sub, &tx));
        if let Err(e) = spawned {
            println!("portmap watch: firewalld signals: off (no thread: {e})");
            return false;
        }
        // The waiter threads `listen` starts send on clones of `tx`; one
        // forwarder hands everything on in order.
        let forwarded = std::thread::Builder::new()
            .name("firewalld-forward".into())
            .spawn(move || rx.into_iter().for_each(forward));
        if let Err(e) = forwarded {
            println!("portmap watch: firewalld signals: off (no thread: {e})");
            return false;
        }
        true
    }
}

struct Subscription {
    bus: Connection,
    messages: MessageIterator,
}

impl Subscription {
    fn open() -> Result<Subscription, FirewalldError> {
        let bus = system_bus(START_TIMEOUT)?;
        // Before the matches: nothing they let through is missed.
        let messages = MessageIterator::from(&bus);
        let query = |what: &'static str| {
            move |e: zbus::Error| FirewalldError::Query {
                what,
                source: Box::new(e),
            }
        };
        let dbus = zbus::blocking::fdo::DBusProxy::new(&bus).map_err(query("for its proxy"))?;
        for rule in rules().map_err(query("a match rule"))? {
            dbus.add_match_rule(rule)
                .map_err(|e| query("to add a match")(e.into()))?;
        }
        Ok(Subscription { bus, messages })
    }
}

fn rules() -> Result<[MatchRule<'static>; 2], zbus::Error> {
    Ok([
        MatchRule::builder()
            .msg_type(Type::Signal)
            .interface(BUS_NAME)?
            .member("Reloaded")?
            .path(PATH)?
            .build(),
        MatchRule::builder()
            .msg_type(Type::Signal)
            .sender("org.freedesktop.DBus")?
            .interface("org.freedesktop.DBus")?
            .member("NameOwnerChanged")?
            .arg(0, BUS_NAME)?
            .build(),
    ])
}

/// The listening thread: one subscription at a time, re-opened (bounded)
/// when the bus goes away.
fn listen(mut sub: Subscription, tx: &Sender<Trigger>) {
    loop {
        for msg in &mut sub.messages {
            match msg {
                Ok(msg) => handle(&sub.bus, &msg, tx),
                Err(e) => eprintln!("portmap watch: system bus: {e}"),
            }
        }
        eprintln!("portmap watch: lost the system bus; reconnecting");
        match reconnect() {
            Some(s) => {
                sub = s;
                println!("portmap watch: firewalld signals: on again");
                let _ = tx.send(Trigger::Reconnected);
            }
            None => return,
        }
    }
}

fn reconnect() -> Option<Subscription> {
    let mut delay = Duration::from_secs(1);
    let mut last = None;
    for _ in 0..RECONNECTS {
        std::thread::sleep(delay);
        match Subscription::open() {
            Ok(s) => return Some(s),
            Err(e) => last = Some(e),
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
    let why = last.map(|e| e.to_string()).unwrap_or_default();
    println!(
        "portmap watch: firewalld signals: off (no system bus after {RECONNECTS} attempts: {why})"
    );
    None
}

fn handle(bus: &Connection, msg: &zbus::Message, tx: &Sender<Trigger>) {
    if msg.message_type() != Type::Signal {
        return;
    }
    let header = msg.header();
    let iface = header.interface().map(|i| i.as_str());
    let member = header.member().map(|m| m.as_str());
    match (iface, member) {
        (Some(BUS_NAME), Some("Reloaded")) => send(tx, Trigger::Reloaded),
        (Some("org.freedesktop.DBus"), Some("NameOwnerChanged")) => {
            let Ok((name, _, owner)) = msg.body().deserialize::<(String, String, String)>() else {
                return;
            };
            if name != BUS_NAME {
                return;
            }
            if owner.is_empty() {
                send(tx, Trigger::Stopped);
                return;
            }
            // Its start-up flush is still to come: wait for it on another
            // thread, so that signals keep being read meanwhile.
            let (bus, started) = (bus.clone(), tx.clone());
            let waiter = std::thread::Builder::new()
                .name("firewalld-start".into())
                .spawn(move || {
                    match state(&bus) {
                        Ok(s) if s == "RUNNING" => {}
                        Ok(s) => eprintln!("portmap watch: firewalld started in state {s}"),
                        Err(e) => eprintln!("portmap watch: firewalld started: {e}"),
                    }
                    send(&started, Trigger::Started);
                });
            if let Err(e) = waiter {
                eprintln!("portmap watch: firewalld started; cannot wait for it ({e})");
                send(tx, Trigger::Started);
            }
        }
        _ => {}
    }
}

fn send(tx: &Sender<Trigger>, trigger: Trigger) {
    println!("portmap watch: {trigger}: restore pass");
    let _ = tx.send(trigger);
}
