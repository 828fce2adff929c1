//! ADD / CHECK / DEL / STATUS / GC over the backend seam. Backend-blind:
//! which firewall runs comes from a [`Host`], so unit tests use a fake.

use portmap_backends::select::{Choice, SelectError, Selected};
use portmap_backends::{BackendError, BackendKind, ContainerKey, Plan, Verdict};
use serde_json::Value;

use crate::cni::result::convert;
use crate::cni::{CniError, Code, Command, Env};
use crate::config::{self, Config};
use crate::journal::{self, Entry, Journal, JournalError, Receipted};

mod host;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use host::{Host, RealHost};

fn journal_error(e: &JournalError) -> CniError {
    CniError::new(Code::Internal, e.to_string())
}

fn backend_error(e: &BackendError, backend: &str, reason: &str) -> CniError {
    let details = match e.details() {
        d if d.is_empty() => format!("backend: {backend} ({reason})"),
        d => format!("{d}\nbackend: {backend} ({reason})"),
    };
    CniError::new(Code::Internal, e.to_string()).with_details(details)
}

fn select_error(e: &SelectError) -> CniError {
    CniError::new(Code::Internal, e.to_string()).with_details(e.details())
}

fn requires_version(cfg: &Config, min: &str, what: &str) -> Result<(), CniError> {
    let order = |v: &str| crate::cni::SUPPORTED_VERSIONS.iter().position(|s| *s == v);
    if order(&cfg.cni_version) < order(min) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("config version does not allow {what}"),
        ));
    }
    Ok(())
}

/// Upstream refuses to run against its own namespace: the rules would be
/// installed where the container is supposed to be.
fn check_netns(env: &Env) -> Result<(), CniError> {
    use std::os::unix::fs::MetadataExt;
    if env.netns.is_empty() {
        return Ok(());
    }
    let (Ok(target), Ok(own)) = (
        std::fs::metadata(&env.netns),
        std::fs::metadata("/proc/self/ns/net"),
    ) else {
        return Ok(());
    };
    if (target.dev(), target.ino()) == (own.dev(), own.ino()) {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!(
                "CNI_NETNS {:?} is the plugin's own network namespace",
                env.netns
            ),
        ));
    }
    Ok(())
}

/// Runs one CNI command; `Ok(Some(json))` is printed on stdout.
pub fn run(
    command: Command,
    env: &Env,
    stdin: &[u8],
    host: &dyn Host,
) -> Result<Option<Value>, CniError> {
    match command {
        // DEL decodes no more than names the container (see parse_del).
        Command::Del => {
            let target = config::parse_del(stdin)?;
            let _lock = host.lock()?;
            del(&target.key(env), host).map(|()| None)
        }
        Command::Version => Ok(Some(crate::cni::version_info(
            &config::parse(stdin)?.cni_version,
        ))),
        Command::Add => locked_if_mapping(stdin, env, host, |cfg| add(cfg, env, host).map(Some)),
        Command::Check => {
            locked_if_mapping(stdin, env, host, |cfg| check(cfg, env, host).map(|()| None))
        }
        Command::Status => locked(stdin, host, |cfg| status(cfg, host).map(|()| None)),
        Command::Gc => locked(stdin, host, |cfg| gc(cfg, host).map(|()| None)),
    }
}

/// [`locked`], but with no lock for a request that maps no port: ADD and
/// CHECK then read and write nothing, and these are most chained calls on
/// a node (pods without host ports), which must not queue behind another
/// container's ADD or a restore.
fn locked_if_mapping<T>(
    stdin: &[u8],
    env: &Env,
    host: &dyn Host,
    f: impl FnOnce(&Config) -> Result<T, CniError>,
) -> Result<T, CniError> {
    let cfg = config::parse(stdin)?;
    let _lock = if Plan::new(&cfg.request(env)).is_empty() {
        None
    } else {
        host.lock()?
    };
    f(&cfg)
}

/// Parses the config, then runs `f` under the plugin lock.
fn locked<T>(
    stdin: &[u8],
    host: &dyn Host,
    f: impl FnOnce(&Config) -> Result<T, CniError>,
) -> Result<T, CniError> {
    let cfg = config::parse(stdin)?;
    let _lock = host.lock()?;
    f(&cfg)
}

fn add(cfg: &Config, env: &Env, host: &dyn Host) -> Result<Value, CniError> {
    let prev = cfg
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "must be called as chained plugin"))?;
    let out = convert(prev, &cfg.cni_version);
    let plan = Plan::new(&cfg.request(env));
    if plan.is_empty() {
        return Ok(out);
    }
    check_netns(env)?;
    let selected = host
        .select(cfg.backend, cfg.iptables_specific)
        .map_err(|e| select_error(&e))?;
    let journal = host.journal().map_err(|e| journal_error(&e))?;
    let auto_nftables = cfg.backend.is_none() && selected.backend.kind() == BackendKind::Nftables;
    // Judged once: a failed first try may take the journal's last file,
    // and the ledger with it.
    let ledger_holds = journal.ledger_holds(host.generation());
    match install(&journal, &selected, cfg, env, &plan, ledger_holds) {
        Ok(()) => {}
        // Auto picked nftables without trying nft: its transaction failed
        // (nft cannot run or parse, or the kernel refused it) and, being
        // atomic, applied nothing. Same invocation, iptables.
        Err(Failed::Rules(nft_error)) if auto_nftables => {
            let mut fallback = host
                .select(Some(Choice::Iptables), cfg.iptables_specific)
                .map_err(|e| select_error(&e))?;
            fallback.reason = format!(
                "auto: nftables failed ({}); {}",
                nft_error.msg, fallback.reason
            );
            install(&journal, &fallback, cfg, env, &plan, ledger_holds).map_err(|e| {
                let e = e.into_error();
                let details = format!("{}\nnftables before it: {}", e.details, nft_error.details);
                e.with_details(details)
            })?;
        }
        Err(e) => return Err(e.into_error()),
    }
    journal.write_ledger(host.generation());
    if let Err(e) = host.after_add(&plan) {
        // Rules without their host side (route_localnet) would half-work:
        // take this attachment back out, as DEL would.
        let error = CniError::new(Code::Internal, e.to_string());
        return Err(match del(&plan.key, host) {
            Ok(()) => error.with_details("the attachment's rules were removed again"),
            Err(undo) => error.with_details(format!(
                "removing the attachment's rules again failed too: {}",
                undo.msg
            )),
        });
    }
    Ok(out)
}

/// Which step of [`install`] failed: only failed rules may be retried in
/// another backend; a journal that cannot be written fails anywhere.
enum Failed {
    Journal(CniError),
    Rules(CniError),
}

impl Failed {
    fn into_error(self) -> CniError {
        match self {
            Failed::Journal(e) | Failed::Rules(e) => e,
        }
    }
}

/// The journal entry, then the rules in `selected`'s backend; a journal
/// that cannot be written leaves no rules, rules that fail no entry.
fn install(
    journal: &Journal,
    selected: &Selected,
    cfg: &Config,
    env: &Env,
    plan: &Plan,
    ledger_holds: bool,
) -> Result<(), Failed> {
    let entry = Entry::new(
        &env.ifname,
        &env.netns,
        selected.backend.kind(),
        cfg.request(env),
    );
    // No file of the ID means no rules of it, as long as nobody but us
    // wrote since our last write (a lost journal, another binary): else
    // look for earlier rules, and replace those of this attachment.
    let journaled = journal.may_hold(&plan.key.container_id);
    let replacing = journaled || !ledger_holds;
    let earlier = journal.known(&plan.key);
    journal
        .write(&entry)
        .map_err(|e| Failed::Journal(journal_error(&e)))?;
    let receipt = selected
        .backend
        .install(plan, replacing.then_some(&earlier))
        .map_err(|e| {
            // The failed transaction left any earlier rules in place: an ID
            // the journal knew stays known (retired), but not restorable;
            // one it did not know has no rules of ours (DEL sweeps anyway).
            let _ = if journaled {
                journal.retire(&plan.key)
            } else {
                journal.remove(&plan.key)
            };
            Failed::Rules(backend_error(&e, selected.backend.name(), &selected.reason))
        })?;
    let receipt = receipt.map(|receipt| Receipted {
        backend: selected.backend.kind(),
        receipt,
    });
    // Only a hint for DEL (without it DEL reads every container's rules):
    // not a reason to fail an ADD whose rules are in place.
    let _ = journal.write_receipt(&plan.key, &env.ifname, receipt.as_ref());
    Ok(())
}

fn check(cfg: &Config, env: &Env, host: &dyn Host) -> Result<(), CniError> {
    requires_version(cfg, "0.4.0", "CHECK")?;
    if cfg.prev_result.is_none() {
        return Err(CniError::new(
            Code::InvalidConfig,
            "Required prevResult missing",
        ));
    }
    let plan = Plan::new(&cfg.request(env));
    if plan.is_empty() {
        return Ok(());
    }
    let selected = host
        .select(cfg.backend, cfg.iptables_specific)
        .map_err(|e| select_error(&e))?;
    let name = selected.backend.name();
    let first = match selected.backend.check(&plan) {
        Ok(Verdict::Whole) => return Ok(()),
        Ok(Verdict::Damaged(what)) => CniError::new(Code::Internal, format!("{name}: {what}"))
            .with_details(format!("backend: {name} ({})", selected.reason)),
        Err(e) => backend_error(&e, name, &selected.reason),
    };
    // Without an explicit backend, rules made before a switch of default
    // (or by another binary) count wherever they are.
    if cfg.backend.is_none() {
        let others = host.sweep().backends;
        if others
            .iter()
            .filter(|b| b.kind() != selected.backend.kind())
            .any(|b| matches!(b.check(&plan), Ok(Verdict::Whole)))
        {
            return Ok(());
        }
    }
    Err(first)
}

/// Finds the container's rules by container ID and network name in every
/// backend: nothing else of the config matters to a DEL.
fn del(key: &ContainerKey, host: &dyn Host) -> Result<(), CniError> {
    let mut removed = Vec::new();
    // The journal entry retired before the rules: a DEL killed in between
    // must not leave an entry that `portmap restore` would bring back; it
    // goes for good once the rules are gone.
    // An ID the journal cannot hold was refused by every ADD of ours: no
    // journal to look at (it would only fail the DEL, retried forever).
    // Rules another binary made may exist: the sweep still runs.
    let journal = journal::can_hold(&key.container_id).then(|| host.journal());
    // Receipts name all of the attachment's rules only while nobody but us
    // wrote since our last write: else they are not used (a whole read).
    let receipts = match &journal {
        Some(Ok(j)) if j.ledger_holds(host.generation()) => j.receipts(key),
        _ => Vec::new(),
    };
    let known = match &journal {
        Some(Ok(j)) => j.known(key),
        _ => portmap_backends::Known::default(),
    };
    let mut errors: Vec<CniError> = match &journal {
        Some(Ok(j)) => j.retire(key).map_err(|e| journal_error(&e)).err(),
        Some(Err(e)) => Some(journal_error(e)),
        None => None,
    }
    .into_iter()
    .collect();
    let sweep = host.sweep();
    for backend in sweep.backends {
        // One receipt per backend: a container attached by several
        // interfaces has several, and then its rules are read as a whole.
        let mine: Vec<&Receipted> = receipts
            .iter()
            .filter(|r| r.backend == backend.kind())
            .collect();
        let receipt = match mine.as_slice() {
            [one] => Some(&one.receipt),
            _ => None,
        };
        let deleted = backend.del(key, &known, receipt);
        match deleted {
            Ok(r) => removed.extend(r),
            Err(e) => {
                errors.push(backend_error(&e, backend.name(), "cleanup"));
            }
        }
    }
    host.after_del(&removed);
    if let Some(Ok(j)) = &journal {
        j.write_ledger(host.generation());
    }
    if let Some(e) = every_error(errors) {
        return Err(e);
    }
    // Success would tell the runtime never to retry: not while rules may
    // remain where we could not look.
    unreadable_error(&sweep.unreadable)?;
    match &journal {
        Some(Ok(j)) => j.remove(key).map_err(|e| journal_error(&e)),
        _ => Ok(()),
    }
}

/// One CNI error for all of DEL's: the first one's message, each one's
/// words in the details (a runtime sees every backend that failed).
fn every_error(errors: Vec<CniError>) -> Option<CniError> {
    let mut errors = errors.into_iter();
    let first = errors.next()?;
    let rest: Vec<CniError> = errors.collect();
    if rest.is_empty() {
        return Some(first);
    }
    let details = std::iter::once(&first)
        .chain(&rest)
        .map(|e| match e.details.as_str() {
            "" => e.msg.clone(),
            d => format!("{}: {d}", e.msg),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let msg = format!("{} (and {} more failure(s))", first.msg, rest.len());
    Some(CniError::new(first.code, msg).with_details(details))
}

fn unreadable_error(unreadable: &[String]) -> Result<(), CniError> {
    if unreadable.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        Code::Internal,
        "could not read every firewall that may hold the container's rules",
    )
    .with_details(unreadable.join("\n")))
}

fn status(cfg: &Config, host: &dyn Host) -> Result<(), CniError> {
    requires_version(cfg, "1.1.0", "STATUS")?;
    host.select_checked(cfg.backend, cfg.iptables_specific)
        .map(|_| ())
        .map_err(|e| {
            CniError::new(Code::PluginNotAvailable, e.to_string()).with_details(e.details())
        })
}

/// Says on stderr why a GC removed nothing (GC's success prints nothing).
const GC_WITHOUT_ATTACHMENTS: &str = "portmap: GC: the config has neither cni.dev/valid-attachments nor cni.dev/attachments: nothing removed";

fn gc(cfg: &Config, host: &dyn Host) -> Result<(), CniError> {
    requires_version(cfg, "1.1.0", "GC")?;
    // No list is not an empty list: a runtime that sends the key under a
    // name we do not know must not lose every container of the network.
    let Some(valid) = &cfg.valid_attachments else {
        eprintln!("{GC_WITHOUT_ATTACHMENTS}");
        return Ok(());
    };
    let journal = host.journal().map_err(|e| journal_error(&e))?;
    let collected =
        |key: &ContainerKey| key.network == cfg.name && !valid.contains(&key.container_id);
    // Entries of an earlier DEL or GC that did not finish go too.
    let mut gone: Vec<ContainerKey> = journal.retired().into_iter().filter(collected).collect();
    for (_, entry) in journal.entries().into_iter().flatten() {
        let key = entry.request.key;
        if collected(&key) {
            journal.retire(&key).map_err(|e| journal_error(&e))?;
            gone.push(key);
        }
    }
    // nftables rules record no network: only attachments the journal
    // knows to be this network's may go there.
    let doomed = journal.attachments(&gone);
    let sweep = host.sweep();
    for backend in sweep.backends {
        backend
            .gc(&cfg.name, valid, &doomed)
            .map_err(|e| backend_error(&e, backend.name(), "gc"))?;
    }
    journal.write_ledger(host.generation());
    unreadable_error(&sweep.unreadable)?;
    for key in &gone {
        journal.remove(key).map_err(|e| journal_error(&e))?;
    }
    Ok(())
}
