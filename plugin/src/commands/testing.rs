//! Fakes for the commands' unit tests: a [`FakeHost`] whose backends
//! record what they were asked ([`Calls`]) and fail where the test says.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use portmap_backends::host::HostError;
use portmap_backends::iptables::{IptablesError, Variant};
use portmap_backends::select::{Choice, SelectError, Selected, Sweep};
use portmap_backends::{
    Attachment, Backend, BackendError, BackendKind, ClosedPort, ContainerKey, Family,
    InstalledContainer, Known, Plan, Receipt, RuleRef, Verdict,
};

use super::Host;
use crate::cni::CniError;
use crate::journal::{Journal, JournalError};
use crate::lock::Lock;

/// Records what the commands asked of the firewall.
#[derive(Default)]
pub struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn record(&self, call: String) {
        self.0.lock().expect("calls").push(call);
    }
}

struct FakeBackend {
    name: &'static str,
    /// What the journal records of it: its name's kind where the name is
    /// one, else one by its place in the host's list (each fake its own).
    kind: BackendKind,
    calls: Arc<Calls>,
    check_ok: bool,
    add_fails: bool,
    del_fails: bool,
    /// ADD returns a receipt, as nftables does.
    gives_receipts: bool,
    records_network: bool,
}

impl FakeBackend {
    /// A write the firewall refused, as iptables-restore reports one.
    fn refused(&self, stderr: &str) -> BackendError {
        BackendError::Iptables(IptablesError::Restore {
            tool: self.name.to_string(),
            variant: Variant::Nft,
            stderr: stderr.to_string(),
            batch: String::new(),
        })
    }

    fn record_add(&self, plan: &Plan, new: &str) -> Result<(), BackendError> {
        self.calls
            .record(format!("{} add {}{new}", self.name, plan.key.container_id));
        if self.add_fails {
            return Err(self.refused("transaction refused"));
        }
        Ok(())
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn records_network(&self) -> bool {
        self.records_network
    }
    fn install(
        &self,
        plan: &Plan,
        earlier: Option<&Known>,
    ) -> Result<Option<Receipt>, BackendError> {
        self.record_add(plan, if earlier.is_none() { " (new)" } else { "" })?;
        Ok(self.gives_receipts.then(|| Receipt {
            rules: vec![RuleRef {
                family: Family::V4,
                chain: "hostports".into(),
                handle: 42,
            }],
        }))
    }
    fn check(&self, plan: &Plan) -> Result<Verdict, BackendError> {
        self.calls
            .record(format!("{} check {}", self.name, plan.key.container_id));
        Ok(if self.check_ok {
            Verdict::Whole
        } else {
            Verdict::Damaged("rule missing".into())
        })
    }
    fn del(
        &self,
        key: &ContainerKey,
        _known: &Known,
        receipt: Option<&Receipt>,
    ) -> Result<Vec<ClosedPort>, BackendError> {
        let by = receipt.map_or_else(String::new, |r| {
            let handles: Vec<u64> = r.rules.iter().map(|r| r.handle).collect();
            format!(" by {handles:?}")
        });
        self.calls
            .record(format!("{} del {}{by}", self.name, key.container_id));
        if self.del_fails {
            return Err(self.refused("delete refused"));
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
        _doomed: &[Attachment],
    ) -> Result<Vec<String>, BackendError> {
        self.calls
            .record(format!("{} gc {network} keep {keep:?}", self.name));
        Ok(vec![])
    }
    fn localnet_guard(&self) -> Result<bool, BackendError> {
        Ok(false)
    }
}

pub struct FakeHost {
    calls: Arc<Calls>,
    /// (name, check passes) of every backend; the first is selected.
    backends: Vec<(&'static str, bool)>,
    pub unreadable: Vec<String>,
    /// The namespace's journal directory, in a state directory of its own.
    pub journal: PathBuf,
    /// Backends whose ADD fails (as a broken nft's transaction would).
    pub failing_adds: Vec<&'static str>,
    /// ADD's host side (route_localnet) fails.
    pub failing_after_add: bool,
    /// Backends whose DEL fails.
    pub failing_dels: Vec<&'static str>,
    /// Backends whose ADD returns a receipt (as nftables does).
    pub receipting: Vec<&'static str>,
    /// Backends whose rules record the network name (as iptables' do).
    pub recording_network: Vec<&'static str>,
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
    pub fn new(backends: Vec<(&'static str, bool)>) -> FakeHost {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FakeHost {
            calls: Arc::new(Calls::default()),
            backends,
            unreadable: vec![],
            failing_adds: vec![],
            failing_after_add: false,
            failing_dels: vec![],
            receipting: vec![],
            recording_network: vec![],
            journal: std::env::temp_dir()
                .join(format!("portmap-fake-journal-{}-{n}", std::process::id()))
                .join("netns-1-2"),
        }
    }
    fn backend(&self, (name, check_ok): (&'static str, bool)) -> Box<dyn Backend> {
        let place = self
            .backends
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or(0);
        let kind = BackendKind::parse(name).unwrap_or(BackendKind::ALL[place % 3]);
        Box::new(FakeBackend {
            name,
            kind,
            calls: self.calls.clone(),
            check_ok,
            add_fails: self.failing_adds.contains(&name),
            del_fails: self.failing_dels.contains(&name),
            gives_receipts: self.receipting.contains(&name),
            records_network: self.recording_network.contains(&name),
        })
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.0.lock().expect("calls").clone()
    }
    /// As after a write of ours that nobody followed: the ledger holds.
    pub fn ours_was_the_last_write(&self) {
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
