//! One restore pass: every wanted journal entry checked against one read
//! per backend, without the plugin lock; the lock taken only around each
//! repair, which first makes sure the entry and what was read still hold.
//! A runtime's ADD or DEL so waits for one container's write at most.

use std::collections::BTreeMap;
use std::path::PathBuf;

use portmap_backends::{host, nfnetlink, select, Backend, BackendKind, Plan, Verdict};

use crate::journal::{Entry, Journal, Receipted};
use crate::lock;

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
enum Restored {
    InPlace,
    Reinstalled(String),
    /// Rules missing and the container's namespace gone: the entry goes.
    Dropped,
    /// A DEL removed the entry (or an ADD rewrote it) while we read.
    Superseded,
}

/// Why an entry needs reinstalling.
enum Damage {
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
struct Repairs<'p> {
    journal: &'p Journal,
    backend: Box<dyn Backend>,
    dry_run: bool,
    /// The nf_tables generation our verdicts were read at (or our last
    /// write made): the same under the lock means nobody wrote since.
    /// Says nothing of iptables-legacy, which is then always re-read.
    read_at: Option<u32>,
    /// Whether a repair took the lock already (the next lets waiters in first).
    locked_before: bool,
    /// Whether the localnet guard is whole, asked once (iptables asks with
    /// an `iptables-save -t mangle` process).
    guard: Option<bool>,
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
        let verdicts = repairs.backend.check_all(&refs).map_err(|e| e.to_string());
        for (i, (path, entry)) in entries.iter().enumerate() {
            let damage = match &verdicts {
                Ok(v) => match v.get(i) {
                    Some(Verdict::Whole) => None,
                    Some(Verdict::Damaged(what)) => Some(format!("{}: {what}", kind.name())),
                    None => Some("not checked".to_string()),
                },
                Err(e) => Some(e.clone()),
            };
            let damage = damage.map(Damage::Rules);
            let Some(why) = damage.or_else(|| repairs.guard_lost(&plans[i])) else {
                pass.in_place += 1;
                continue;
            };
            let id = &entry.request.key.container_id;
            match repairs.repair(entry, why) {
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
                Err(e) => failed(&mut pass, path, entry, &e),
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

impl Repairs<'_> {
    /// Why the container's rules need reinstalling although CHECK passes:
    /// its ADD installed the guard (the host's, which CHECK leaves out),
    /// and reinstalling puts it back.
    fn guard_lost(&mut self, plan: &Plan) -> Option<Damage> {
        // Only containers whose ADD installs it (snat, IPv4).
        plan.localnet_container()?;
        let backend = &self.backend;
        let whole = *self
            .guard
            .get_or_insert_with(|| backend.localnet_guard().unwrap_or(false));
        (!whole).then_some(Damage::Guard)
    }

    /// What CHECK says of the plan's rules, or what of the guard is lost.
    fn damage(&mut self, plan: &Plan) -> Option<Damage> {
        let damage = match self.backend.check(plan) {
            Ok(Verdict::Whole) => None,
            Ok(Verdict::Damaged(what)) => Some(format!("{}: {what}", self.backend.name())),
            Err(e) => Some(e.to_string()),
        };
        damage.map(Damage::Rules).or_else(|| self.guard_lost(plan))
    }

    /// Reinstalls `entry`, found damaged (`why`) by the lockless read,
    /// under the plugin lock: the entry read again (a DEL may have removed
    /// it), the container checked again when anybody wrote since.
    fn repair(&mut self, entry: &Entry, why: Damage) -> Result<Restored, String> {
        if self.dry_run {
            return Ok(match why {
                Damage::Rules(_) if self.stale(entry)? => Restored::Dropped,
                why => Restored::Reinstalled(why.to_string()),
            });
        }
        if self.locked_before {
            std::thread::sleep(lock::YIELD);
        }
        self.locked_before = true;
        let _lock = lock::acquire_plugin_lock().map_err(|e| e.msg)?;
        let key = &entry.request.key;
        match self.journal.entry(key, &entry.ifname) {
            Ok(Some(now)) if now == *entry => {}
            // Its ADD (which installed the rules) or DEL ran meanwhile.
            Ok(_) => return Ok(Restored::Superseded),
            Err(e) => return Err(e.to_string()),
        }
        let plan = Plan::new(&entry.request);
        let fresh = self.read_at.is_some() && nfnetlink::generation().ok() == self.read_at;
        let why = if fresh {
            why
        } else {
            // Somebody wrote since the read: look at this container again.
            self.guard = None;
            match self.damage(&plan) {
                Some(why) => why,
                None => return Ok(Restored::InPlace),
            }
        };
        // Rules gone with the namespace: the container is (the guard is
        // the host's, put back whatever became of the container).
        if matches!(why, Damage::Rules(_)) && self.stale(entry)? {
            self.journal.remove(key).map_err(|e| e.to_string())?;
            return Ok(Restored::Dropped);
        }
        let known = self.journal.known(key);
        let installed = self.backend.install(&plan, Some(&known));
        // Ours or not, a write may have happened: note where nf_tables is.
        let generation = nfnetlink::generation().ok();
        self.journal.write_ledger(generation);
        if fresh {
            // Only we wrote since the read: the other verdicts still hold.
            self.read_at = generation;
        }
        let receipt = installed.map_err(|e| format!("{e}: {}", e.details()))?;
        // The rules moved: DEL goes by the new receipt (or reads all).
        let receipt = receipt.map(|receipt| Receipted {
            backend: entry.backend,
            receipt,
        });
        let _ = self
            .journal
            .write_receipt(key, &entry.ifname, receipt.as_ref());
        host::after_add(&plan).map_err(|e| e.to_string())?;
        if plan.localnet_container().is_some() {
            // The install put the guard back with the rules.
            self.guard = Some(true);
        }
        Ok(Restored::Reinstalled(why.to_string()))
    }

    /// Whether the entry's namespace is gone (an error: keep the entry).
    fn stale(&self, entry: &Entry) -> Result<bool, String> {
        entry.is_stale().map_err(|e| {
            format!(
                "skipped, entry kept: cannot tell whether its network namespace {} still exists: {e}",
                entry.netns
            )
        })
    }
}
