//! The repair of a chunk of damaged entries under the plugin lock: each
//! entry read again (a DEL may have removed it), the chunk checked again
//! when anybody wrote since the lockless read, gone namespaces dropped,
//! the rest reinstalled in one `install_all` (one transaction where the
//! backend can), each one alone if that fails.

use portmap_backends::{host, nfnetlink, BackendError, Known, Plan, Receipt, Verdict};

use super::pass::{Damage, Repairs, Restored};
use crate::journal::{Entry, Receipted};
use crate::lock;

/// One entry of a chunk that is still to be written.
struct Pending<'e> {
    at: usize,
    entry: &'e Entry,
    plan: Plan,
    why: Damage,
}

impl Repairs<'_> {
    /// Why the container's rules need reinstalling although CHECK passes:
    /// its ADD installed the guard (the host's, which CHECK leaves out),
    /// and reinstalling puts it back.
    pub(super) fn guard_lost(&mut self, plan: &Plan) -> Option<Damage> {
        // Only containers whose ADD installs it (snat, IPv4).
        plan.localnet_container()?;
        let backend = &self.backend;
        let whole = *self
            .guard
            .get_or_insert_with(|| backend.localnet_guard().unwrap_or(false));
        (!whole).then_some(Damage::Guard)
    }

    /// Reinstalls `asked`, found damaged by the lockless read, under one
    /// hold of the plugin lock; one result per entry, in order.
    pub(super) fn repair(&mut self, asked: Vec<(&Entry, Damage)>) -> Vec<Result<Restored, String>> {
        let mut out: Vec<Option<Result<Restored, String>>> = asked.iter().map(|_| None).collect();
        if self.dry_run {
            for ((entry, why), out) in asked.into_iter().zip(&mut out) {
                *out = Some(match why {
                    Damage::Rules(_) => match self.stale(entry) {
                        Ok(true) => Ok(Restored::Dropped),
                        Ok(false) => Ok(Restored::Reinstalled(why.to_string())),
                        Err(e) => Err(e),
                    },
                    why => Ok(Restored::Reinstalled(why.to_string())),
                });
            }
            return finish(out);
        }
        if self.locked_before {
            std::thread::sleep(lock::YIELD);
        }
        self.locked_before = true;
        let _lock = match lock::acquire_plugin_lock() {
            Ok(lock) => lock,
            Err(e) => return asked.iter().map(|_| Err(e.msg.clone())).collect(),
        };
        let mut pending = Vec::new();
        for (at, (entry, why)) in asked.into_iter().enumerate() {
            let key = &entry.request.key;
            match self.journal.entry(key, &entry.ifname) {
                Ok(Some(now)) if now == *entry => pending.push(Pending {
                    at,
                    entry,
                    plan: Plan::new(&entry.request),
                    why,
                }),
                // Its ADD (which installed the rules) or DEL ran meanwhile.
                Ok(_) => out[at] = Some(Ok(Restored::Superseded)),
                Err(e) => out[at] = Some(Err(e.to_string())),
            }
        }
        let fresh = self.read_at.is_some() && nfnetlink::generation().ok() == self.read_at;
        if !fresh {
            // Somebody wrote since the read: these containers again, one read.
            pending = self.recheck(pending, &mut out);
        }
        // Rules gone with the namespace: the container is (the guard is
        // the host's, put back whatever became of the container).
        let mut write = Vec::new();
        for p in pending {
            if !matches!(p.why, Damage::Rules(_)) {
                write.push(p);
                continue;
            }
            match self.stale(p.entry) {
                Ok(false) => write.push(p),
                Ok(true) => {
                    let gone = self.journal.remove(&p.entry.request.key);
                    out[p.at] = Some(gone.map(|_| Restored::Dropped).map_err(|e| e.to_string()));
                }
                Err(e) => out[p.at] = Some(Err(e)),
            }
        }
        if !write.is_empty() {
            self.install(write, fresh, &mut out);
        }
        finish(out)
    }

    /// `pending` checked again against one read: those whole now are in
    /// place, the others keep the damage found now.
    fn recheck<'e>(
        &mut self,
        pending: Vec<Pending<'e>>,
        out: &mut [Option<Result<Restored, String>>],
    ) -> Vec<Pending<'e>> {
        self.guard = None;
        let plans: Vec<&Plan> = pending.iter().map(|p| &p.plan).collect();
        let verdicts = self.backend.check_all(&plans).map_err(|e| e.to_string());
        let name = self.backend.name();
        let mut still = Vec::new();
        for (i, mut p) in pending.into_iter().enumerate() {
            let damage = match &verdicts {
                Ok(v) => match v.get(i) {
                    Some(Verdict::Whole) => None,
                    Some(Verdict::Damaged(what)) => Some(format!("{name}: {what}")),
                    None => Some("not checked".to_string()),
                },
                Err(e) => Some(e.clone()),
            };
            match damage
                .map(Damage::Rules)
                .or_else(|| self.guard_lost(&p.plan))
            {
                Some(why) => {
                    p.why = why;
                    still.push(p);
                }
                None => out[p.at] = Some(Ok(Restored::InPlace)),
            }
        }
        still
    }

    /// One `install_all` of `write` (each alone if it fails), then the
    /// receipts, the ledger and the host's side effects.
    fn install(
        &mut self,
        write: Vec<Pending<'_>>,
        fresh: bool,
        out: &mut [Option<Result<Restored, String>>],
    ) {
        let known: Vec<Known> = write
            .iter()
            .map(|p| self.journal.known(&p.entry.request.key))
            .collect();
        let wanted: Vec<(&Plan, Option<&Known>)> = write
            .iter()
            .zip(&known)
            .map(|(p, k)| (&p.plan, Some(k)))
            .collect();
        let installed: Vec<Result<Option<Receipt>, String>> =
            match self.backend.install_all(&wanted) {
                Ok(receipts) if receipts.len() == wanted.len() => {
                    receipts.into_iter().map(Ok).collect()
                }
                // One transaction for all failed (nothing applied): alone,
                // a bad one fails only itself.
                _ if wanted.len() > 1 => wanted
                    .iter()
                    .map(|(plan, known)| self.backend.install(plan, *known).map_err(why))
                    .collect(),
                Ok(_) => vec![Err("the backend returned no receipt".to_string())],
                Err(e) => vec![Err(why(e))],
            };
        // Ours or not, a write may have happened: note where nf_tables is.
        let generation = nfnetlink::generation().ok();
        self.journal.write_ledger(generation);
        if fresh {
            // Only we wrote since the read: the other verdicts still hold.
            self.read_at = generation;
        }
        for (p, installed) in write.into_iter().zip(installed) {
            let at = p.at;
            out[at] = Some(self.installed(p, installed));
        }
    }

    /// The receipt and host side effects of one reinstalled entry.
    fn installed(
        &mut self,
        p: Pending<'_>,
        installed: Result<Option<Receipt>, String>,
    ) -> Result<Restored, String> {
        let receipt = installed?;
        // The rules moved: DEL goes by the new receipt (or reads all).
        let receipt = receipt.map(|receipt| Receipted {
            backend: p.entry.backend,
            receipt,
        });
        let key = &p.entry.request.key;
        let _ = self
            .journal
            .write_receipt(key, &p.entry.ifname, receipt.as_ref());
        host::after_add(&p.plan).map_err(|e| e.to_string())?;
        if p.plan.localnet_container().is_some() {
            // The install put the guard back with the rules.
            self.guard = Some(true);
        }
        Ok(Restored::Reinstalled(p.why.to_string()))
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

fn why(e: BackendError) -> String {
    format!("{e}: {}", e.details())
}

/// Every slot filled (one that is not was never reached: said so).
fn finish(out: Vec<Option<Result<Restored, String>>>) -> Vec<Result<Restored, String>> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err("not repaired".to_string())))
        .collect()
}
