//! `portmap watch`: a restore pass after nf_tables reports a removal of
//! ours by somebody else (our tables, iptables-nft's CNI chains and the
//! jumps to them), after an extra [`Trigger`], and on a timer for
//! iptables-legacy, which has no notifications. Our own commits (ADD, DEL
//! and our passes) are told apart by the journal's ring of them.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use portmap_backends::nfnetlink::{self, Commit, Removal};
use portmap_backends::BackendKind;

use super::{open_journal, pass};

/// A reason to check every entry besides nf_tables notifications, sent
/// by another source (a firewalld `Reloaded` listener on its own thread)
/// over the channel `watch` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Another program's word that the firewall changed (firewalld
    /// reloaded, started, stopped), as the log line says it.
    Signal(String),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Signal(what) => f.write_str(what),
        }
    }
}

/// Quiet time after the last removal before restoring: a reload removes
/// many things, one pass should follow it, not one per notification.
const QUIET: Duration = Duration::from_millis(250);
/// A burst never delays the pass longer than this after its first event
/// (steady churn would otherwise keep pushing it back).
const CAP: Duration = Duration::from_secs(1);
/// The longest wait for notifications (how soon SIGTERM and triggers are seen).
const TICK: Duration = Duration::from_millis(100);
/// Every this many timer ticks, entries nf_tables notifications cover are
/// checked too: a foreign removal committed while one of our commands held
/// the lock is taken for ours, and this brings it back.
const BACKSTOP: u32 = 12;
/// The names our writes commit under: nft and the iptables restore tools
/// (comm is cut at 15 bytes). A commit by anything else is never ours.
const OUR_WRITERS: [&str; 4] = ["nft", "iptables", "ip6tables", "xtables"];

/// Events close together, answered by one pass.
#[derive(Debug)]
struct Burst {
    first: Instant,
    last: Instant,
    removals: Vec<Removal>,
    triggers: Vec<Trigger>,
}

/// What a burst's pass checks, and why.
#[derive(Debug, PartialEq, Eq)]
struct Scope {
    nftables: bool,
    iptables_nft: bool,
    everything: bool,
    why: String,
}

impl Scope {
    fn wants(&self, kind: BackendKind) -> bool {
        self.everything
            || match kind {
                BackendKind::Nftables => self.nftables,
                BackendKind::IptablesNft => self.iptables_nft,
                BackendKind::IptablesLegacy => false,
            }
    }
}

impl Burst {
    fn new(now: Instant) -> Burst {
        Burst {
            first: now,
            last: now,
            removals: Vec::new(),
            triggers: Vec::new(),
        }
    }

    fn removal(&mut self, now: Instant, r: Removal) {
        self.last = now;
        self.removals.push(r);
    }

    fn trigger(&mut self, now: Instant, t: Trigger) {
        self.last = now;
        self.triggers.push(t);
    }

    /// When its pass runs: after [`QUIET`], never later than [`CAP`]
    /// after the first event.
    fn deadline(&self) -> Instant {
        (self.last + QUIET).min(self.first + CAP)
    }

    /// What to check once our own commits (`own`, the journal's ring) are
    /// left out; `None`: nothing but ours.
    fn scope(&self, own: &[(u32, u32)]) -> Option<Scope> {
        let foreign: Vec<&Removal> = self
            .removals
            .iter()
            .filter(|r| !r.commit.as_ref().is_some_and(|c| is_ours(c, own)))
            .collect();
        let mut causes: Vec<String> = self.triggers.iter().map(Trigger::to_string).collect();
        causes.extend(foreign.iter().map(|r| describe(r)));
        let first = causes.first()?;
        let why = match causes.len() {
            1 => first.clone(),
            n => format!("{first} and {} more", n - 1),
        };
        Some(Scope {
            nftables: foreign.iter().any(|r| r.touched.nftables),
            iptables_nft: foreign.iter().any(|r| r.touched.iptables_nft),
            everything: !self.triggers.is_empty(),
            why,
        })
    }
}

/// Whether `commit` is one of ours: made by one of our tools, within a
/// range of generations a portmap recorded (see `Journal::own_commits`).
fn is_ours(commit: &Commit, own: &[(u32, u32)]) -> bool {
    OUR_WRITERS.iter().any(|w| commit.process.starts_with(w))
        && own.iter().any(|&(from, to)| {
            // (from, to], generations wrapping at u32::MAX.
            let offset = commit.generation.wrapping_sub(from);
            offset >= 1 && offset <= to.wrapping_sub(from)
        })
}

fn describe(r: &Removal) -> String {
    let what = match (r.touched.nftables, r.touched.iptables_nft) {
        (true, true) => "nftables and iptables-nft",
        (true, false) => "nftables",
        _ => "iptables-nft",
    };
    match &r.commit {
        Some(c) => format!(
            "{what} removal by {} (pid {}, generation {})",
            c.process, c.pid, c.generation
        ),
        None => format!("{what} removal (notifications lost)"),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn pass_line(why: &str, pass: &pass::Pass, took: Duration) -> String {
    format!(
        "portmap watch: pass ({why}): {} checked, {} reinstalled, {} gone, {} failed, \
         {} changed meanwhile, {} ms",
        pass.checked,
        pass.reinstalled,
        pass.dropped,
        pass.failed,
        pass.superseded,
        took.as_millis()
    )
}

/// Watches until SIGTERM or SIGINT; `triggers` brings extra reasons for a
/// pass (a sender dropped is fine: notifications and the timer go on).
pub(crate) fn watch(interval: Duration, triggers: Receiver<Trigger>) -> ExitCode {
    let handler = SigAction::new(SigHandler::Handler(stop), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no other handler for these signals is replaced
        // that anything else relies on.
        if let Err(e) = unsafe { sigaction(signal, &handler) } {
            eprintln!("portmap: watch: cannot handle {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some(journal) = open_journal("watch") else {
        return ExitCode::FAILURE;
    };
    let mut events = match nfnetlink::Events::subscribe() {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!(
                "portmap: watch: no nf_tables notifications ({e}): checking every {interval:?}"
            );
            None
        }
    };
    println!(
        "portmap watch: journal {}; nf_tables notifications: {}; iptables every {interval:?}",
        journal.dir().display(),
        if events.is_some() { "on" } else { "off" }
    );
    let mut burst: Option<Burst> = None;
    let mut triggers_open = true;
    let mut ticks: u32 = 0;
    let mut next_tick = Instant::now() + interval;
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut wait = TICK.min(next_tick.saturating_duration_since(now));
        if let Some(b) = &burst {
            wait = wait.min(b.deadline().saturating_duration_since(now));
        }
        let removals = match &mut events {
            Some(ev) => ev.wait(wait).unwrap_or_else(|e| {
                eprintln!("portmap: watch: {e}");
                std::thread::sleep(wait);
                Vec::new()
            }),
            None => {
                std::thread::sleep(wait);
                Vec::new()
            }
        };
        let now = Instant::now();
        for r in removals {
            burst.get_or_insert_with(|| Burst::new(now)).removal(now, r);
        }
        while triggers_open {
            match triggers.try_recv() {
                Ok(t) => burst.get_or_insert_with(|| Burst::new(now)).trigger(now, t),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => triggers_open = false,
            }
        }
        if let Some(done) = burst.take_if(|b| now >= b.deadline()) {
            // Read now, not at the notification: our command records its
            // commits right after making them.
            if let Some(scope) = done.scope(&journal.own_commits()) {
                let started = Instant::now();
                let pass = pass::run(&journal, false, &|k| scope.wants(k));
                println!("{}", pass_line(&scope.why, &pass, started.elapsed()));
            }
        }
        if now >= next_tick {
            next_tick = now + interval;
            ticks = ticks.wrapping_add(1);
            // Without notifications (or for iptables-legacy, which has none)
            // check on the timer.
            let everything = events.is_none() || ticks.is_multiple_of(BACKSTOP);
            let started = Instant::now();
            let pass = pass::run(&journal, false, &|k| {
                everything || k == BackendKind::IptablesLegacy
            });
            if pass.acted() {
                println!("{}", pass_line("timer", &pass, started.elapsed()));
            }
        }
    }
    println!("portmap watch: stopped");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use portmap_backends::nfnetlink::Touched;

    fn removal(nftables: bool, process: &str, generation: u32) -> Removal {
        Removal {
            touched: Touched {
                nftables,
                iptables_nft: !nftables,
            },
            commit: Some(Commit {
                generation,
                pid: 7,
                process: process.into(),
            }),
        }
    }

    #[test]
    fn a_burst_waits_for_quiet_but_never_past_the_cap() {
        let t0 = Instant::now();
        let mut b = Burst::new(t0);
        b.removal(t0, removal(true, "nft", 5));
        assert_eq!(b.deadline(), t0 + QUIET);
        // Steady churn every 100 ms: the deadline moves, up to the cap.
        for i in 1..30 {
            let t = t0 + Duration::from_millis(100 * i);
            b.removal(t, removal(true, "nft", 5));
            assert!(b.deadline() <= t0 + CAP, "{i}");
        }
        assert_eq!(b.deadline(), t0 + CAP);
    }

    #[test]
    fn our_own_commits_start_no_pass() {
        let t0 = Instant::now();
        let own = [(10, 12), (u32::MAX - 1, 1)];
        let mut b = Burst::new(t0);
        for r in [
            removal(true, "nft", 11),
            removal(false, "iptables-nft-re", 12),
            removal(true, "nft", 0),
        ] {
            b.removal(t0, r);
        }
        assert_eq!(b.scope(&own), None, "all within our ranges");
        // Outside them, or by another writer inside them: somebody else's.
        for (r, what) in [
            (
                removal(true, "nft", 10),
                "nftables removal by nft (pid 7, generation 10)",
            ),
            (
                removal(false, "firewalld", 11),
                "iptables-nft removal by firewalld (pid 7, generation 11)",
            ),
        ] {
            let mut b = Burst::new(t0);
            b.removal(t0, removal(true, "nft", 11));
            b.removal(t0, r.clone());
            let scope = b.scope(&own).expect("a pass");
            assert_eq!(scope.why, what);
            assert_eq!(
                (scope.nftables, scope.iptables_nft, scope.everything),
                (r.touched.nftables, r.touched.iptables_nft, false)
            );
            assert!(!scope.wants(BackendKind::IptablesLegacy));
        }
        let mut lost = Burst::new(t0);
        lost.removal(
            t0,
            Removal {
                touched: Touched::ALL,
                commit: None,
            },
        );
        assert!(
            lost.scope(&own).is_some(),
            "lost notifications are never ours"
        );
    }

    #[test]
    fn a_trigger_checks_everything() {
        let t0 = Instant::now();
        let mut b = Burst::new(t0);
        b.trigger(t0, Trigger::Signal("firewalld reloaded".into()));
        b.removal(t0, removal(true, "firewalld", 3));
        let scope = b.scope(&[]).expect("a pass");
        assert_eq!(scope.why, "firewalld reloaded and 1 more");
        assert!(BackendKind::ALL.iter().all(|k| scope.wants(*k)));
    }
}
