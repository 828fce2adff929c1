//! One restore pass: every wanted journal entry checked against one read
//! per backend, without the plugin lock; what is missing reinstalled in
//! chunks (repair.rs), oldest ADD first, the lock taken around each chunk.
//! A runtime's ADD or DEL so waits for one chunk's write at most.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use portmap_backends::{nfnetlink, select, Backend, BackendError, BackendKind, Plan, Verdict};

use crate::journal::{Entry, Journal};

/// What one restore pass did.
#[derive(Debug, Default)]
pub(super) struct Pass {
    pub checked: usize,
    pub in_place: usize,
    pub reinstalled: usize,
    /// Forgotten: rules and namespace gone.
    pub dropped: usize,
    pub failed: usize,
    /// Deleted or re-added by a runtime while the pass ran (nothing to do).
    pub superseded: usize,
}

impl Pass {
    /// Whether the pass changed or failed anything.
    pub fn acted(&self) -> bool {
        self.reinstalled + self.dropped + self.failed > 0
    }
}

/// What the repair of one entry came to.
pub(super) enum Restored {
    InPlace,
    Reinstalled(String),
    /// Rules missing and the container's namespace gone: the entry goes.
    Dropped,
    /// A DEL removed the entry (or an ADD rewrote it) while we read.
    Superseded,
}

/// Why an entry needs reinstalling.
pub(super) enum Damage {
    /// What CHECK (or a failed read) says of its rules.
    Rules(String),
    /// Its rules are whole but its ADD's localnet guard is not (the
    /// host's, which CHECK leaves out; reinstalling puts it back).
    Guard,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Rules(why) => f.write_str(why),
            Damage::Guard => f.write_str("the localnet guard is missing"),
        }
    }
}

/// One backend's side of a pass.
pub(super) struct Repairs<'p> {
    pub journal: &'p Journal,
    pub backend: Box<dyn Backend>,
    pub dry_run: bool,
    /// The nf_tables generation our verdicts were read at (or our last
    /// write made): the same under the lock means nobody wrote since.
    /// Says nothing of iptables-legacy, which is then always re-read.
    pub read_at: Option<u32>,
    /// Whether a repair took the lock already (the next lets waiters in first).
    pub locked_before: bool,
    /// Whether the localnet guard is whole, asked once (iptables asks with
    /// an `iptables-save -t mangle` process).
    pub guard: Option<bool>,
}

/// Every plan's verdict, and whether the localnet guard is whole when a
/// plan's ADD installs it: two reads (on iptables two processes), side by
/// side.
fn read_both(
    backend: &dyn Backend,
    plans: &[&Plan],
) -> (Result<Vec<Verdict>, BackendError>, Option<bool>) {
    let guarded = plans.iter().any(|p| p.localnet_container().is_some());
    std::thread::scope(|scope| {
        let guard = guarded.then(|| scope.spawn(|| backend.localnet_guard().unwrap_or(false)));
        let verdicts = backend.check_all(plans);
        let guard = guard.map(|g| g.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        (verdicts, guard)
    })
}

/// Checks the entries of `journal` whose backend is `wanted` and
/// reinstalls what is missing; one line per container it acted on.
pub(super) fn run(journal: &Journal, dry_run: bool, wanted: &dyn Fn(BackendKind) -> bool) -> Pass {
    let mut pass = Pass::default();
    let read_at = nfnetlink::generation().ok();
    let mut by_backend: BTreeMap<BackendKind, Vec<(PathBuf, Entry)>> = BTreeMap::new();
    for entry in journal.entries() {
        match entry {
            Ok((path, entry)) if wanted(entry.backend) => {
                by_backend
                    .entry(entry.backend)
                    .or_default()
                    .push((path, entry));
            }
            Ok(_) => {}
            Err(e) => {
                pass.failed += 1;
                eprintln!("portmap: restore: {e}");
            }
        }
    }
    for (kind, entries) in by_backend {
        pass.checked += entries.len();
        let backend = match select::backend_for(kind) {
            Ok(b) => b,
            Err(e) => {
                for (path, entry) in &entries {
                    failed(&mut pass, path, entry, &e);
                }
                continue;
            }
        };
        let mut repairs = Repairs {
            journal,
            backend,
            dry_run,
            read_at: read_at.filter(|_| kind != BackendKind::IptablesLegacy),
            locked_before: false,
            guard: None,
        };
        let plans: Vec<Plan> = entries.iter().map(|(_, e)| Plan::new(&e.request)).collect();
        let refs: Vec<&Plan> = plans.iter().collect();
        let (verdicts, guard) = read_both(repairs.backend.as_ref(), &refs);
        repairs.guard = guard;
        let verdicts = verdicts.map_err(|e| e.to_string());
        let mut todo: Vec<(usize, Damage)> = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let damage = match &verdicts {
                Ok(v) => match v.get(i) {
                    Some(Verdict::Whole) => None,
                    Some(Verdict::Damaged(what)) => Some(format!("{}: {what}", kind.name())),
                    None => Some("not checked".to_string()),
                },
                Err(e) => Some(e.clone()),
            };
            match damage
                .map(Damage::Rules)
                .or_else(|| repairs.guard_lost(plan))
            {
                Some(why) => todo.push((i, why)),
                None => pass.in_place += 1,
            }
        }
        // Oldest ADD first: each reinstall goes to the head of the chains,
        // so the newest container ends first and wins a reused address or
        // port, as at its ADD.
        todo.sort_by_cached_key(|(i, _)| entries.get(*i).and_then(|(p, _)| added_at(p)));
        let chunk = if dry_run {
            1
        } else {
            repairs.backend.install_chunk().max(1)
        };
        let mut todo = todo.into_iter().peekable();
        while todo.peek().is_some() {
            let items: Vec<(usize, Damage)> = todo.by_ref().take(chunk).collect();
            let at: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
            // Indices from the enumeration of `entries` itself.
            let asked = items.into_iter().map(|(i, why)| (&entries[i].1, why));
            let results = repairs.repair(asked.collect());
            for (i, result) in at.into_iter().zip(results) {
                let (path, entry) = &entries[i];
                report(&mut pass, kind, dry_run, path, entry, result);
            }
        }
    }
    pass
}

fn failed(pass: &mut Pass, path: &std::path::Path, entry: &Entry, e: &str) {
    pass.failed += 1;
    eprintln!(
        "portmap: restore: {} ({} in {}): {e}",
        path.display(),
        entry.request.key.container_id,
        entry.backend
    );
}

/// When the entry was written (its ADD: entries are replaced, never
/// edited); `None` sorts first, in name order.
fn added_at(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
}

/// Counts and prints what the repair of one entry came to.
fn report(
    pass: &mut Pass,
    kind: BackendKind,
    dry_run: bool,
    path: &Path,
    entry: &Entry,
    result: Result<Restored, String>,
) {
    let id = &entry.request.key.container_id;
    match result {
        Ok(Restored::InPlace) => pass.in_place += 1,
        Ok(Restored::Superseded) => pass.superseded += 1,
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
            println!("{verb} {id} in {kind} ({why})");
        }
        Err(e) => failed(pass, path, entry, &e),
    }
}
