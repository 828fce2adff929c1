//! The machine the commands run on: the [`Host`] seam, the real one and
//! how it chooses a backend.

use portmap_backends::host::HostError;
use portmap_backends::select::{self, Choice, SelectError, Selected, Sweep};
use portmap_backends::{host, nfnetlink, ClosedPort, Plan};

use crate::cni::CniError;
use crate::journal::{Journal, JournalError};
use crate::lock::{self, Lock};

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
        lock::acquire_plugin_lock().map(Some)
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
