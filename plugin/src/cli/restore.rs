//! `portmap restore` and `portmap watch`: journaled containers whose
//! rules are missing reinstalled, once or after every removal (signals
//! stop the watch).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use portmap_backends::select;
use portmap_backends::{host, nfnetlink, BackendKind, Plan, Verdict};

use crate::journal::{Entry, Journal, Receipted};
use crate::lock;

/// What `restore` found for one journal entry.
enum Restored {
    InPlace,
    Reinstalled(String),
    /// Rules missing and the container's namespace gone: the entry goes.
    Dropped,
}

/// Whether each backend's localnet guard is whole, asked once per pass
/// (iptables asks with an `iptables-save -t mangle` process).
type Guards = BTreeMap<BackendKind, bool>;

fn restore_one(
    journal: &Journal,
    entry: &Entry,
    dry_run: bool,
    guards: &mut Guards,
) -> Result<Restored, String> {
    let backend = select::backend_for(entry.backend)?;
    let plan = Plan::new(&entry.request);
    let needs_guard = plan.localnet_container().is_some();
    let mut guard_lost = || {
        needs_guard
            && !*guards
                .entry(entry.backend)
                .or_insert_with(|| backend.localnet_guard().unwrap_or(false))
    };
    let damage = match backend.check(&plan) {
        Ok(Verdict::Whole) => None,
        Ok(Verdict::Damaged(what)) => Some(format!("{}: {what}", backend.name())),
        Err(e) => Some(e.to_string()),
    };
    let why = match damage {
        // The guard is the host's (CHECK leaves it out), but the container's
        // ADD installed it: reinstalling puts it back.
        None if guard_lost() => "the localnet guard is missing".to_string(),
        None => return Ok(Restored::InPlace),
        Some(why) => {
            let stale = entry.is_stale().map_err(|e| {
                format!(
                    "skipped, entry kept: cannot tell whether its network namespace {} still exists: {e}",
                    entry.netns
                )
            })?;
            if stale {
                if !dry_run {
                    journal
                        .remove(&entry.request.key)
                        .map_err(|e| e.to_string())?;
                }
                return Ok(Restored::Dropped);
            }
            why
        }
    };
    if !dry_run {
        let known = journal.known(&entry.request.key);
        let receipt = backend
            .install(&plan, Some(&known))
            .map_err(|e| format!("{e}: {}", e.details()))?;
        journal.write_ledger(nfnetlink::generation().ok());
        // The rules moved: DEL goes by the new receipt (or reads all).
        let receipt = receipt.map(|receipt| Receipted {
            backend: entry.backend,
            receipt,
        });
        let _ = journal.write_receipt(&entry.request.key, &entry.ifname, receipt.as_ref());
        host::after_add(&plan).map_err(|e| e.to_string())?;
        if needs_guard {
            // The install put the guard back with the rules.
            guards.insert(entry.backend, true);
        }
    }
    Ok(Restored::Reinstalled(why))
}

/// What one restore pass did.
#[derive(Default)]
struct Pass {
    in_place: usize,
    reinstalled: usize,
    dropped: usize,
    failed: usize,
}

/// Checks the `wanted` entries of `journal` under the plugin lock and
/// reinstalls what is missing; one line per container it acted on.
fn restore_pass(journal: &Journal, dry_run: bool, wanted: &dyn Fn(&Entry) -> bool) -> Pass {
    let mut pass = Pass::default();
    let mut guards = Guards::new();
    // Runtimes' ADD/DEL must not interleave (an ADD journals before it
    // installs: without the lock we would race it).
    let _lock = match lock::acquire_plugin_lock() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portmap: restore: {}", e.msg);
            pass.failed += 1;
            return pass;
        }
    };
    for entry in journal.entries() {
        let (path, entry) = match entry {
            Ok(e) => e,
            Err(e) => {
                pass.failed += 1;
                eprintln!("portmap: restore: {e}");
                continue;
            }
        };
        if !wanted(&entry) {
            continue;
        }
        let id = &entry.request.key.container_id;
        match restore_one(journal, &entry, dry_run, &mut guards) {
            Ok(Restored::InPlace) => pass.in_place += 1,
            Ok(Restored::Dropped) => {
                pass.dropped += 1;
                println!(
                    "{} {id}: its rules are gone and so is its network namespace {}",
                    if dry_run { "would forget" } else { "forgot" },
                    entry.netns
                );
            }
            Ok(Restored::Reinstalled(why)) => {
                pass.reinstalled += 1;
                let verb = if dry_run {
                    "would reinstall"
                } else {
                    "reinstalled"
                };
                println!("{verb} {id} in {} ({why})", entry.backend);
            }
            Err(e) => {
                pass.failed += 1;
                eprintln!(
                    "portmap: restore: {} ({id} in {}): {e}",
                    path.display(),
                    entry.backend
                );
            }
        }
    }
    pass
}

/// This namespace's journal; `None` once `portmap <command>` said why not.
fn open_journal(command: &str) -> Option<Journal> {
    Journal::here()
        .inspect_err(|e| eprintln!("portmap: {command}: {e}"))
        .ok()
}

pub(super) fn restore(dry_run: bool) -> ExitCode {
    let Some(journal) = open_journal("restore") else {
        return ExitCode::FAILURE;
    };
    let pass = restore_pass(&journal, dry_run, &|_| true);
    println!(
        "{} {} container(s), {} in place, {} gone, {} could not be restored",
        if dry_run {
            "would reinstall"
        } else {
            "reinstalled"
        },
        pass.reinstalled,
        pass.in_place,
        pass.dropped,
        pass.failed
    );
    if pass.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Quiet time after the last removal before restoring: a reload removes
/// many things, one pass should follow it, not one per notification.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How long one wait for notifications lasts (and so how soon SIGTERM is seen).
const TICK: Duration = Duration::from_millis(200);

pub(super) fn watch(interval: Duration) -> ExitCode {
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
    let mut events = match nfnetlink::Events::subscribe(TICK) {
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
    // firewalld's Reloaded (and start, stop): its flush takes legacy
    // iptables too, which sends no nf_tables notification.
    let firewalld = crate::firewalld::Listener::start();
    let mut removal_at: Option<Instant> = None;
    let mut next_check = Instant::now() + interval;
    while !STOP.load(Ordering::SeqCst) {
        match &mut events {
            Some(ev) => match ev.removed() {
                Ok(true) => removal_at = Some(Instant::now()),
                Ok(false) => {}
                Err(e) => eprintln!("portmap: watch: {e}"),
            },
            None => std::thread::sleep(TICK),
        }
        if firewalld.as_ref().is_some_and(|f| f.triggered()) {
            removal_at = None;
            restore_pass(&journal, false, &|_| true);
        }
        if removal_at.is_some_and(|t| t.elapsed() >= DEBOUNCE) {
            removal_at = None;
            restore_pass(&journal, false, &|_| true);
        }
        // Without events (or for iptables, which has none) check on a timer.
        if Instant::now() >= next_check {
            next_check = Instant::now() + interval;
            let nft_covered = events.is_some();
            restore_pass(&journal, false, &|e| {
                !(nft_covered && e.backend == portmap_backends::BackendKind::Nftables)
            });
        }
    }
    println!("portmap watch: stopped");
    ExitCode::SUCCESS
}
