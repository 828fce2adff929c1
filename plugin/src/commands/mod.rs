//! ADD / CHECK / DEL / STATUS / GC over the backend seam. Backend-blind:
//! which firewall runs comes from a [`Host`], so unit tests use a fake.

use portmap_backends::host::HostError;
use portmap_backends::nftables::NAME as NFTABLES;
use portmap_backends::select::{self, Choice, SelectError, Selected, Sweep};
use portmap_backends::{host, nfnetlink, BackendError, ClosedPort, ContainerKey, Plan};
use serde_json::Value;

use crate::cni::result::convert;
use crate::cni::{CniError, Code, Command, Env};
use crate::config::{self, Config};
use crate::journal::{self, Entry, Journal, JournalError, Receipted};
use crate::lock::{self, Lock};
use std::path::Path;

/// What the commands need from the machine.
pub trait Host {
    /// Serialises firewall read-modify-write across invocations.
    fn lock(&self) -> Result<Option<Lock>, CniError>;
    /// The backend for ADD/CHECK, chosen without starting a process.
    fn select(
        &self,
        choice: Option<Choice>,
        iptables_specific: bool,
    ) -> Result<Selected, SelectError>;
    /// The same, nftables only after a checked transaction (STATUS).
    fn select_checked(
        &self,
        choice: Option<Choice>,
        iptables_specific: bool,
    ) -> Result<Selected, SelectError>;
    /// Every backend that may hold our rules (DEL, GC, CHECK fallback),
    /// and what may hold some but cannot be read here.
    fn sweep(&self) -> Sweep;
    fn after_add(&self, plan: &Plan) -> Result<(), HostError>;
    fn after_del(&self, removed: &[ClosedPort]);
    /// Where installed containers are recorded for `portmap restore`.
    fn journal(&self) -> Result<Journal, JournalError>;
    /// The nf_tables generation now (`None`: no answer), for the journal's
    /// ledger of our own writes.
    fn generation(&self) -> Option<u32>;
}

/// The real machine.
pub struct RealHost;

impl Host for RealHost {
    fn lock(&self) -> Result<Option<Lock>, CniError> {
        lock::acquire(Path::new(lock::LOCK_PATH)).map(Some)
    }

    fn select(
        &self,
        choice: Option<Choice>,
        iptables_specific: bool,
    ) -> Result<Selected, SelectError> {
        choose(choice, iptables_specific, select::select)
    }

    fn select_checked(
        &self,
        choice: Option<Choice>,
        iptables_specific: bool,
    ) -> Result<Selected, SelectError> {
        choose(choice, iptables_specific, select::select_checked)
    }

    fn sweep(&self) -> Sweep {
        select::sweep()
    }

    fn after_add(&self, plan: &Plan) -> Result<(), HostError> {
        host::after_add(plan)
    }

    fn after_del(&self, removed: &[ClosedPort]) {
        host::after_del(removed)
    }

    fn journal(&self) -> Result<Journal, JournalError> {
        Journal::here()
    }

    fn generation(&self) -> Option<u32> {
        nfnetlink::generation().ok()
    }
}

fn choose(
    choice: Option<Choice>,
    iptables_specific: bool,
    pick: fn(Option<Choice>) -> Result<Selected, SelectError>,
) -> Result<Selected, SelectError> {
    match (choice, iptables_specific) {
        // markMasqBit / externalSetMarkChain only mean something to iptables.
        (None, true) => {
            let mut s = pick(Some(Choice::Iptables))?;
            s.reason = format!("auto: config has iptables-specific options; {}", s.reason);
            Ok(s)
        }
        (choice, _) => pick(choice),
    }
}

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
        Command::Add => locked(stdin, host, |cfg| add(cfg, env, host).map(Some)),
        Command::Check => locked(stdin, host, |cfg| check(cfg, env, host).map(|()| None)),
        Command::Status => locked(stdin, host, |cfg| status(cfg, host).map(|()| None)),
        Command::Gc => locked(stdin, host, |cfg| gc(cfg, host).map(|()| None)),
    }
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
    let auto_nftables = cfg.backend.is_none() && selected.backend.name() == NFTABLES;
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
        selected.backend.name(),
        cfg.request(env),
    );
    // No file of the ID means no rules of it, as long as nobody but us
    // wrote since our last write (a lost journal, another binary): else
    // look for earlier rules, and replace those of this attachment.
    let replacing = journal.may_hold(&plan.key.container_id) || !ledger_holds;
    let earlier = journal.known(&plan.key);
    journal
        .write(&entry)
        .map_err(|e| Failed::Journal(journal_error(&e)))?;
    let receipt = selected
        .backend
        .install(plan, replacing.then_some(&earlier))
        .map_err(|e| {
            // The failed transaction left any earlier rules in place: their
            // ID stays known (retired), but not restorable.
            let _ = if replacing {
                journal.retire(&plan.key)
            } else {
                journal.remove(&plan.key)
            };
            Failed::Rules(backend_error(&e, selected.backend.name(), &selected.reason))
        })?;
    let receipt = receipt.map(|receipt| Receipted {
        backend: selected.backend.name().to_string(),
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
    let Err(first) = selected.backend.check(&plan) else {
        return Ok(());
    };
    // Without an explicit backend, rules made before a switch of default
    // (or by another binary) count wherever they are.
    if cfg.backend.is_none() {
        let others = host.sweep().backends;
        if others
            .iter()
            .filter(|b| b.name() != selected.backend.name())
            .any(|b| b.check(&plan).is_ok())
        {
            return Ok(());
        }
    }
    Err(backend_error(
        &first,
        selected.backend.name(),
        &selected.reason,
    ))
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
            .filter(|r| r.backend == backend.name())
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

#[cfg(test)]
mod tests {
    use super::*;
    use portmap_backends::{Backend, InstalledContainer, Known};
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    /// Records what the commands asked of the firewall.
    #[derive(Default)]
    struct Calls(Mutex<Vec<String>>);

    impl Calls {
        fn record(&self, call: String) {
            self.0.lock().expect("calls").push(call);
        }
    }

    struct FakeBackend {
        name: &'static str,
        calls: Arc<Calls>,
        check_ok: bool,
        add_fails: bool,
        del_fails: bool,
    }

    impl FakeBackend {
        fn record_add(&self, plan: &Plan, new: &str) -> Result<(), BackendError> {
            self.calls
                .record(format!("{} add {}{new}", self.name, plan.key.container_id));
            if self.name == "failing" || self.add_fails {
                return Err(BackendError::CheckFailed {
                    backend: self.name,
                    what: "transaction refused".into(),
                });
            }
            Ok(())
        }
    }

    impl Backend for FakeBackend {
        fn name(&self) -> &'static str {
            self.name
        }
        fn records_network(&self) -> bool {
            self.name.starts_with("iptables")
        }
        fn install(
            &self,
            plan: &Plan,
            earlier: Option<&Known>,
        ) -> Result<Option<portmap_backends::Receipt>, BackendError> {
            self.record_add(plan, if earlier.is_none() { " (new)" } else { "" })?;
            // "receipting" backends return a receipt, as nftables does.
            Ok(
                (self.name == "receipting").then(|| portmap_backends::Receipt {
                    rules: vec![portmap_backends::RuleRef {
                        family: portmap_backends::Family::V4,
                        chain: "hostports".into(),
                        handle: 42,
                    }],
                }),
            )
        }
        fn check(&self, plan: &Plan) -> Result<(), BackendError> {
            self.calls
                .record(format!("{} check {}", self.name, plan.key.container_id));
            if self.check_ok {
                Ok(())
            } else {
                Err(BackendError::CheckFailed {
                    backend: self.name,
                    what: "rule missing".into(),
                })
            }
        }
        fn del(
            &self,
            key: &ContainerKey,
            _known: &Known,
            receipt: Option<&portmap_backends::Receipt>,
        ) -> Result<Vec<ClosedPort>, BackendError> {
            let by = receipt.map_or_else(String::new, |r| {
                let handles: Vec<u64> = r.rules.iter().map(|r| r.handle).collect();
                format!(" by {handles:?}")
            });
            self.calls
                .record(format!("{} del {}{by}", self.name, key.container_id));
            if self.del_fails {
                return Err(BackendError::CheckFailed {
                    backend: self.name,
                    what: "delete refused".into(),
                });
            }
            Ok(vec![])
        }
        fn list(&self) -> Result<Vec<InstalledContainer>, BackendError> {
            Ok(vec![])
        }
        fn gc(
            &self,
            network: &str,
            keep: &BTreeSet<String>,
            _doomed: &[portmap_backends::Attachment],
        ) -> Result<Vec<String>, BackendError> {
            self.calls
                .record(format!("{} gc {network} keep {keep:?}", self.name));
            Ok(vec![])
        }
        fn localnet_guard(&self) -> Result<bool, BackendError> {
            Ok(false)
        }
    }

    struct FakeHost {
        calls: Arc<Calls>,
        /// (name, check passes) of every backend; the first is selected.
        backends: Vec<(&'static str, bool)>,
        unreadable: Vec<String>,
        /// The namespace's journal directory, in a state directory of its own.
        journal: PathBuf,
        /// Backends whose ADD fails (as a broken nft's transaction would).
        failing_adds: Vec<&'static str>,
        /// ADD's host side (route_localnet) fails.
        failing_after_add: bool,
        /// Backends whose DEL fails.
        failing_dels: Vec<&'static str>,
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            // Only a state directory the fake made (a test may point it
            // elsewhere).
            let root = self.journal.parent();
            if let Some(root) = root.filter(|r| r.starts_with(std::env::temp_dir())) {
                let _ = std::fs::remove_dir_all(root);
            }
        }
    }

    impl FakeHost {
        fn new(backends: Vec<(&'static str, bool)>) -> FakeHost {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            FakeHost {
                calls: Arc::new(Calls::default()),
                backends,
                unreadable: vec![],
                failing_adds: vec![],
                failing_after_add: false,
                failing_dels: vec![],
                journal: std::env::temp_dir()
                    .join(format!("portmap-fake-journal-{}-{n}", std::process::id()))
                    .join("netns-1-2"),
            }
        }
        fn backend(&self, (name, check_ok): (&'static str, bool)) -> Box<dyn Backend> {
            Box::new(FakeBackend {
                name,
                calls: self.calls.clone(),
                check_ok,
                add_fails: self.failing_adds.contains(&name),
                del_fails: self.failing_dels.contains(&name),
            })
        }
        fn calls(&self) -> Vec<String> {
            self.calls.0.lock().expect("calls").clone()
        }
        /// As after a write of ours that nobody followed: the ledger holds.
        fn ours_was_the_last_write(&self) {
            Journal::at(self.journal.clone()).write_ledger(self.generation());
        }
    }

    impl Host for FakeHost {
        fn lock(&self) -> Result<Option<Lock>, CniError> {
            Ok(None)
        }
        fn select(&self, choice: Option<Choice>, _: bool) -> Result<Selected, SelectError> {
            // An explicit iptables is the second backend (the fallback).
            let i = usize::from(choice == Some(Choice::Iptables) && self.backends.len() > 1);
            Ok(Selected {
                backend: self.backend(self.backends[i]),
                reason: "fake".into(),
            })
        }
        fn select_checked(
            &self,
            choice: Option<Choice>,
            iptables_specific: bool,
        ) -> Result<Selected, SelectError> {
            self.select(choice, iptables_specific)
        }
        fn sweep(&self) -> Sweep {
            Sweep {
                backends: self.backends.iter().map(|b| self.backend(*b)).collect(),
                unreadable: self.unreadable.clone(),
            }
        }
        fn after_add(&self, plan: &Plan) -> Result<(), HostError> {
            self.calls
                .record(format!("after_add {}", plan.key.container_id));
            if self.failing_after_add {
                return Err(HostError::Sysctl {
                    path: "/proc/sys/net/ipv4/conf/br0/route_localnet".into(),
                    source: std::io::Error::from_raw_os_error(30),
                });
            }
            Ok(())
        }
        fn after_del(&self, _: &[ClosedPort]) {
            self.calls.0.lock().expect("calls").push("after_del".into());
        }
        fn journal(&self) -> Result<Journal, JournalError> {
            Ok(Journal::at(self.journal.clone()))
        }
        fn generation(&self) -> Option<u32> {
            // Nobody else writes a fake's firewall.
            Some(7)
        }
    }

    fn env() -> Env {
        Env {
            container_id: "c1".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            path: "/opt/cni/bin".into(),
            args: String::new(),
        }
    }

    fn config(mappings: Value, version: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "cniVersion": version, "name": "net", "type": "portmap",
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                           "ips": [{"address": "10.0.0.2/24", "interface": 0}]}
        }))
        .expect("json")
    }

    fn one_mapping() -> Value {
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    }

    #[test]
    fn add_without_mappings_touches_no_firewall() {
        let host = FakeHost::new(vec![("fake", true)]);
        let out = run(Command::Add, &env(), &config(json!([]), "1.0.0"), &host)
            .expect("ok")
            .expect("json");
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
        assert!(host.calls().is_empty(), "{:?}", host.calls());
    }

    #[test]
    fn add_installs_then_applies_host_side_effects() {
        let host = FakeHost::new(vec![("fake", true)]);
        host.ours_was_the_last_write();
        let out = run(Command::Add, &env(), &config(one_mapping(), "0.4.0"), &host)
            .expect("ok")
            .expect("json");
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(host.calls(), vec!["fake add c1 (new)", "after_add c1"]);
    }

    /// DEL as runtimes send it: network `net`, no mappings.
    fn del_net(host: &FakeHost) -> Result<Option<Value>, CniError> {
        run(
            Command::Del,
            &env(),
            br#"{"cniVersion":"1.0.0","name":"net"}"#,
            host,
        )
    }

    fn journaled(host: &FakeHost) -> Vec<(String, String)> {
        Journal::at(host.journal.clone())
            .entries()
            .into_iter()
            .map(|e| {
                let (_, e) = e.expect("readable");
                (e.request.key.container_id, e.backend)
            })
            .collect()
    }

    #[test]
    fn add_journals_the_container_and_del_and_gc_remove_it() {
        let host = FakeHost::new(vec![("fake", true)]);
        run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("ok");
        assert_eq!(
            journaled(&host),
            vec![("c1".to_string(), "fake".to_string())]
        );
        let entry = &Journal::at(host.journal.clone()).entries()[0];
        let request = &entry.as_ref().expect("entry").1.request;
        assert_eq!(request.mappings[0].host_port, 8080);
        assert_eq!(
            request.v4.map(|a| a.addr.to_string()),
            Some("10.0.0.2".into())
        );
        del_net(&host).expect("ok");
        assert_eq!(journaled(&host), vec![]);

        run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("ok");
        let keep_c1 = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        run(Command::Gc, &env(), keep_c1, &host).expect("ok");
        assert_eq!(journaled(&host).len(), 1, "a valid attachment stays");
        let other_network =
            br#"{"cniVersion":"1.1.0","name":"other","cni.dev/valid-attachments":[]}"#;
        run(Command::Gc, &env(), other_network, &host).expect("ok");
        assert_eq!(journaled(&host).len(), 1, "another network's GC leaves it");
        let keep_none = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[]}"#;
        run(Command::Gc, &env(), keep_none, &host).expect("ok");
        assert_eq!(journaled(&host), vec![]);
    }

    /// ADD looks for earlier rules to replace only where the journal says
    /// there may be some: a re-ADD, or a DEL that could not finish.
    #[test]
    fn only_a_container_the_journal_knows_is_searched_for_rules_to_replace() {
        let mut host = FakeHost::new(vec![("fake", true)]);
        let add = |host: &FakeHost| {
            run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), host).expect("add")
        };
        host.ours_was_the_last_write();
        add(&host);
        add(&host);
        del_net(&host).expect("del");
        // The last DEL took the ledger with the journal's last file (the
        // next ADD would read everything: see the end of this test).
        host.ours_was_the_last_write();
        add(&host);
        host.unreadable = vec!["legacy nat tables, no iptables-legacy".into()];
        del_net(&host).expect_err("rules may remain");
        assert_eq!(
            journaled(&host),
            vec![],
            "retired: out of a restore's sight"
        );
        host.unreadable = vec![];
        add(&host);
        let keep_none = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[]}"#;
        run(Command::Gc, &env(), keep_none, &host).expect("gc");
        host.ours_was_the_last_write();
        add(&host);
        // GC also clears what a failed DEL retired.
        host.unreadable = vec!["legacy nat tables, no iptables-legacy".into()];
        del_net(&host).expect_err("rules may remain");
        host.unreadable = vec![];
        run(Command::Gc, &env(), keep_none, &host).expect("gc");
        host.ours_was_the_last_write();
        add(&host);
        // Without a ledger that holds (lost with the journal, or another
        // writer since our last write), an unknown ID is searched too.
        del_net(&host).expect("del");
        add(&host);
        del_net(&host).expect("del");
        host.ours_was_the_last_write();
        let journal = Journal::at(host.journal.clone());
        journal.write_ledger(Some(6));
        add(&host);
        let adds: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("fake add"))
            .collect();
        assert_eq!(
            adds,
            [
                "fake add c1 (new)",
                "fake add c1",
                "fake add c1 (new)",
                "fake add c1",
                "fake add c1 (new)",
                "fake add c1 (new)",
                "fake add c1",
                "fake add c1"
            ]
        );
    }

    /// Every backend's DEL runs, and every failure reaches the runtime.
    #[test]
    fn del_reports_every_backends_error() {
        let mut host = FakeHost::new(vec![("a", true), ("b", true), ("c", true)]);
        host.failing_dels = vec!["a", "c"];
        let e = del_net(&host).expect_err("two failed");
        assert_eq!(e.msg, "a: delete refused (and 1 more failure(s))");
        assert!(
            e.details.contains("a: delete refused") && e.details.contains("c: delete refused"),
            "{}",
            e.details
        );
        let dels: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| c.contains(" del "))
            .collect();
        assert_eq!(dels, ["a del c1", "b del c1", "c del c1"]);
    }

    /// A failure after the rules went in (route_localnet) takes the
    /// attachment back out: its rules and its journal entry.
    #[test]
    fn a_failing_host_side_rolls_the_add_back() {
        let mut host = FakeHost::new(vec![("fake", true)]);
        host.failing_after_add = true;
        let err = run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host)
            .expect_err("ADD fails");
        assert!(err.msg.contains("route_localnet"), "{}", err.msg);
        assert_eq!(
            err.details, "the attachment's rules were removed again",
            "{err:?}"
        );
        let calls = host.calls();
        assert_eq!(calls[..2], ["fake add c1", "after_add c1"], "{calls:?}");
        assert!(calls[2..].contains(&"fake del c1".to_string()), "{calls:?}");
        assert_eq!(journaled(&host), vec![], "no entry left to restore");
    }

    /// The receipt an ADD returns is kept beside the entry and handed back
    /// to that backend's DEL (another backend deletes as always); DEL
    /// removes it with the entry.
    #[test]
    fn del_hands_the_add_receipt_to_the_backend_that_made_it() {
        let host = FakeHost::new(vec![("receipting", true), ("other", true)]);
        run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("add");
        let receipts = Journal::at(host.journal.clone()).receipts(&ContainerKey {
            network: "net".into(),
            container_id: "c1".into(),
        });
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].backend, "receipting");
        del_net(&host).expect("del");
        let dels: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| c.contains(" del "))
            .collect();
        assert_eq!(dels, ["receipting del c1 by [42]", "other del c1"]);
        assert!(!host.journal.exists(), "entry and receipt gone");
    }

    #[test]
    fn auto_falls_back_to_iptables_when_the_nftables_transaction_fails() {
        let mut host = FakeHost::new(vec![("nftables", true), ("iptables-nft", true)]);
        host.failing_adds = vec!["nftables"];
        host.ours_was_the_last_write();
        run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host).expect("fell back");
        assert_eq!(
            host.calls(),
            vec![
                "nftables add c1 (new)",
                "iptables-nft add c1 (new)",
                "after_add c1"
            ]
        );
        assert_eq!(
            journaled(&host),
            vec![("c1".to_string(), "iptables-nft".to_string())]
        );

        // An explicit nftables fails with nft's error, and journals nothing.
        let mut host = FakeHost::new(vec![("nftables", true), ("iptables-nft", true)]);
        host.failing_adds = vec!["nftables"];
        host.ours_was_the_last_write();
        let mut cfg: Value = serde_json::from_slice(&config(one_mapping(), "1.0.0")).expect("json");
        cfg["backend"] = json!("nftables");
        let stdin = serde_json::to_vec(&cfg).expect("json");
        let e = run(Command::Add, &env(), &stdin, &host).expect_err("no fallback");
        assert_eq!(e.msg, "nftables: transaction refused");
        assert_eq!(host.calls(), vec!["nftables add c1 (new)"]);
        assert_eq!(journaled(&host), vec![]);
    }

    #[test]
    fn a_failed_add_leaves_no_entry_and_an_unwritable_journal_no_rules() {
        let host = FakeHost::new(vec![("failing", true)]);
        run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host).expect_err("refused");
        assert_eq!(journaled(&host), vec![]);

        let mut host = FakeHost::new(vec![("nftables", true), ("iptables-nft", true)]);
        host.journal = PathBuf::from("/proc/portmap-state-cannot-exist/netns-1-2");
        let e = run(Command::Add, &env(), &config(one_mapping(), "1.0.0"), &host)
            .expect_err("no journal, no ADD");
        assert!(
            e.msg
                .starts_with("cannot create journal directory /proc/portmap-state-cannot-exist"),
            "{}",
            e.msg
        );
        assert!(
            !e.details.contains("nftables before it"),
            "a journal failure is no reason to try iptables: {}",
            e.details
        );
        assert!(
            host.calls().is_empty(),
            "no rules were made: {:?}",
            host.calls()
        );
    }

    #[test]
    fn add_without_prev_result_is_an_error() {
        let host = FakeHost::new(vec![("fake", true)]);
        let stdin = br#"{"cniVersion":"1.0.0","name":"net","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1}]}}"#;
        let e = run(Command::Add, &env(), stdin, &host).expect_err("error");
        assert_eq!(e.msg, "must be called as chained plugin");
        let e = run(Command::Check, &env(), stdin, &host).expect_err("error");
        assert_eq!(e.msg, "Required prevResult missing");
    }

    #[test]
    fn del_of_an_id_too_long_for_the_journal_sweeps_and_succeeds() {
        let mut host = FakeHost::new(vec![("a", true)]);
        // A journal that could not even be opened: not looked at.
        host.journal = PathBuf::from("/proc/portmap-state-cannot-exist/netns-1-2");
        let long = Env {
            container_id: "c".repeat(300),
            ..env()
        };
        let add = run(Command::Add, &long, &config(one_mapping(), "1.0.0"), &host);
        assert!(add
            .expect_err("refused")
            .msg
            .contains("too long for the journal"));
        assert!(host.calls().is_empty(), "no rule: {:?}", host.calls());
        let del = br#"{"cniVersion":"1.0.0","name":"net"}"#;
        run(Command::Del, &long, del, &host).expect("DEL succeeds");
        assert_eq!(
            host.calls(),
            vec![format!("a del {}", long.container_id), "after_del".into()]
        );
    }

    #[test]
    fn del_sweeps_every_backend_even_without_mappings() {
        let host = FakeHost::new(vec![("a", true), ("b", true)]);
        del_net(&host).expect("ok");
        assert_eq!(host.calls(), vec!["a del c1", "b del c1", "after_del"]);
    }

    #[test]
    fn del_fails_while_a_place_that_may_hold_rules_is_unreadable() {
        let mut host = FakeHost::new(vec![("a", true)]);
        host.unreadable = vec!["nftables table exists but nft is missing".into()];
        let e = run(
            Command::Del,
            &env(),
            br#"{"cniVersion":"1.0.0","name":"net"}"#,
            &host,
        )
        .expect_err("not a success the runtime would never retry");
        assert_eq!(
            e.msg,
            "could not read every firewall that may hold the container's rules"
        );
        assert_eq!(e.details, "nftables table exists but nft is missing");
        assert_eq!(
            host.calls(),
            vec!["a del c1", "after_del"],
            "what it can read is cleaned"
        );
    }

    #[test]
    fn check_falls_back_to_the_backend_holding_the_rules() {
        let host = FakeHost::new(vec![
            ("selected", false),
            ("selected", false),
            ("other", true),
        ]);
        run(
            Command::Check,
            &env(),
            &config(one_mapping(), "1.0.0"),
            &host,
        )
        .expect("ok");
        assert_eq!(host.calls(), vec!["selected check c1", "other check c1"]);
        let host = FakeHost::new(vec![("only", false)]);
        let e = run(
            Command::Check,
            &env(),
            &config(one_mapping(), "1.0.0"),
            &host,
        )
        .expect_err("fails");
        assert_eq!(e.msg, "only: rule missing");
    }

    #[test]
    fn check_needs_0_4_0_and_status_gc_need_1_1_0() {
        let host = FakeHost::new(vec![("fake", true)]);
        let e = run(
            Command::Check,
            &env(),
            &config(one_mapping(), "0.3.1"),
            &host,
        )
        .expect_err("old");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                Code::IncompatibleVersion,
                "config version does not allow CHECK"
            )
        );
        let e = run(Command::Status, &env(), &config(json!([]), "1.0.0"), &host).expect_err("old");
        assert_eq!(e.msg, "config version does not allow STATUS");
        run(Command::Status, &env(), &config(json!([]), "1.1.0"), &host).expect("ok");
    }

    #[test]
    fn gc_passes_network_and_valid_attachments() {
        let host = FakeHost::new(vec![("a", true)]);
        let stdin = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}"#;
        run(Command::Gc, &env(), stdin, &host).expect("ok");
        assert_eq!(host.calls(), vec![r#"a gc net keep {"keep"}"#]);
    }

    /// Either spec key, or both (their union), is the list every backend
    /// keeps; neither key asks no backend to collect anything.
    #[rstest::rstest]
    #[case::valid_attachments(
        r#""cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]"#,
        Some(r#"{"keep"}"#)
    )]
    #[case::spec_text_attachments(
        r#""cni.dev/attachments":[{"containerID":"keep","ifname":"eth0"}]"#,
        Some(r#"{"keep"}"#)
    )]
    #[case::both_keys_union(r#""cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]"#, Some(r#"{"a", "b"}"#))]
    #[case::neither_key(r#""other":1"#, None)]
    fn gc_keeps_what_either_key_lists(#[case] keys: &str, #[case] keep: Option<&str>) {
        let host = FakeHost::new(vec![("a", true), ("b", true)]);
        let stdin = format!(r#"{{"cniVersion":"1.1.0","name":"net",{keys}}}"#);
        let out = run(Command::Gc, &env(), stdin.as_bytes(), &host).expect("ok");
        assert_eq!(out, None, "GC success prints nothing");
        let want: Vec<String> = keep
            .map(|k| vec![format!("a gc net keep {k}"), format!("b gc net keep {k}")])
            .unwrap_or_default();
        assert_eq!(host.calls(), want);
    }

    /// Without either key the journal keeps its entries too: a later
    /// `portmap restore` must still bring the containers back.
    #[test]
    fn gc_without_attachments_leaves_the_journal() {
        let host = FakeHost::new(vec![("fake", true)]);
        run(Command::Add, &env(), &config(one_mapping(), "1.1.0"), &host).expect("add");
        let no_key = br#"{"cniVersion":"1.1.0","name":"net"}"#;
        run(Command::Gc, &env(), no_key, &host).expect("gc");
        assert_eq!(
            journaled(&host),
            vec![("c1".to_string(), "fake".to_string())]
        );
        let spec_key = br#"{"cniVersion":"1.1.0","name":"net","cni.dev/attachments":[]}"#;
        run(Command::Gc, &env(), spec_key, &host).expect("gc");
        assert_eq!(journaled(&host), vec![], "an empty list collects it");
    }

    #[test]
    fn gc_without_attachments_still_needs_1_1_0() {
        let host = FakeHost::new(vec![("fake", true)]);
        let e = run(
            Command::Gc,
            &env(),
            br#"{"cniVersion":"1.0.0","name":"net"}"#,
            &host,
        )
        .expect_err("old");
        assert_eq!(e.msg, "config version does not allow GC");
    }
}
