//! firewalld: whether one runs in this network namespace, which backend
//! it uses, and (listen.rs) its D-Bus signals for `portmap watch`.
//!
//! firewalld runs `iptables -F -X -Z` on every start and reload, whatever
//! its backend: our iptables-held mappings go, the nftables ones stay.

mod listen;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use portmap_backends::BackendKind;
use zbus::blocking::Connection;

pub use listen::{Listener, Trigger};

pub const BUS_NAME: &str = "org.fedoraproject.FirewallD1";
pub const PATH: &str = "/org/fedoraproject/FirewallD1";
const CONFIG_PATH: &str = "/org/fedoraproject/FirewallD1/config";
const CONFIG_IFACE: &str = "org.fedoraproject.FirewallD1.config";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
pub const CONF_FILE: &str = "/etc/firewalld/firewalld.conf";

#[derive(Debug, thiserror::Error)]
pub enum FirewalldError {
    // Boxed: zbus::Error is 128 bytes.
    #[error("cannot connect to the system bus: {0}")]
    Connect(#[source] Box<zbus::Error>),
    #[error("asking the system bus {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("firewalld's {what} is not a {expected}: {source}")]
    Decode {
        what: &'static str,
        expected: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
}

/// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` honoured); calls time out
/// after `timeout` (firewalld answers only once its start-up is over).
pub fn system_bus(timeout: Duration) -> Result<Connection, FirewalldError> {
    zbus::blocking::connection::Builder::system()
        .and_then(|b| b.method_timeout(timeout).build())
        .map_err(|e| FirewalldError::Connect(Box::new(e)))
}

/// Whether firewalld's name has an owner on `bus`.
pub fn on_bus(bus: &Connection) -> Result<bool, FirewalldError> {
    let reply = bus
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "NameHasOwner",
            &(BUS_NAME,),
        )
        .map_err(|e| FirewalldError::Query {
            what: "whether firewalld is on it",
            source: Box::new(e),
        })?;
    reply
        .body()
        .deserialize::<bool>()
        .map_err(|e| FirewalldError::Decode {
            what: "NameHasOwner reply",
            expected: "boolean",
            source: Box::new(e),
        })
}

/// A string property of firewalld's (`state` on its main object,
/// `FirewallBackend` on its config object).
fn property(
    bus: &Connection,
    path: &str,
    iface: &str,
    name: &'static str,
) -> Result<String, FirewalldError> {
    let reply = bus
        .call_method(
            Some(BUS_NAME),
            path,
            Some(PROPERTIES),
            "Get",
            &(iface, name),
        )
        .map_err(|e| FirewalldError::Query {
            what: name,
            source: Box::new(e),
        })?;
    let value = reply
        .body()
        .deserialize::<zbus::zvariant::OwnedValue>()
        .map_err(|e| FirewalldError::Decode {
            what: name,
            expected: "variant",
            source: Box::new(e),
        })?;
    String::try_from(&*value).map_err(|e| FirewalldError::Decode {
        what: name,
        expected: "string",
        source: Box::new(e.into()),
    })
}

/// firewalld's `state` property: `RUNNING` once its start-up is over.
pub fn state(bus: &Connection) -> Result<String, FirewalldError> {
    property(bus, PATH, BUS_NAME, "state")
}

/// `FirewallBackend=` of a firewalld.conf text; firewalld's default
/// (nftables) when the key is absent.
pub fn backend_in_conf(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("FirewallBackend="))
        .next_back()
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "nftables".to_string())
}

/// Whether firewalld's start and reload flush `backend`'s rules: its
/// `iptables -F -X -Z` takes every iptables table, legacy or nf_tables
/// (the variant its /usr/sbin/iptables is), and leaves our nftables table.
pub fn flushes(backend: BackendKind) -> bool {
    backend != BackendKind::Nftables
}

/// What `portmap status` knows of firewalld here.
pub struct Presence {
    /// firewalld processes in this network namespace: the ones whose
    /// flushes reach our rules (the bus is the whole machine's).
    pub here: Vec<u32>,
    /// Whether its name is owned on the system bus (any namespace's).
    pub on_bus: Result<bool, FirewalldError>,
    /// Its backend and where that came from.
    pub backend: Option<(String, &'static str)>,
}

pub fn presence() -> Presence {
    // A Python script: the kernel names it after the script (comm).
    let here = processes_here(|comm, _| comm == "firewalld");
    let (on_bus, mut backend) = match system_bus(Duration::from_secs(2)) {
        Err(e) => (Err(e), None),
        Ok(bus) => {
            let owned = on_bus(&bus);
            let backend = matches!(owned, Ok(true))
                .then(|| property(&bus, CONFIG_PATH, CONFIG_IFACE, "FirewallBackend").ok())
                .flatten()
                .map(|b| (b, "its D-Bus config"));
            (owned, backend)
        }
    };
    if backend.is_none() && (!here.is_empty() || matches!(on_bus, Ok(true))) {
        if let Ok(text) = std::fs::read_to_string(CONF_FILE) {
            backend = Some((backend_in_conf(&text), CONF_FILE));
        }
    }
    Presence {
        here,
        on_bus,
        backend,
    }
}

/// `portmap watch` processes in this network namespace.
pub fn watchers() -> Vec<u32> {
    processes_here(|comm, argv| comm == "portmap" && argv.get(1).is_some_and(|a| a == "watch"))
}

/// PIDs of processes in this thread's network namespace whose command
/// name and argv match (ours excluded).
fn processes_here(matches: impl Fn(&str, &[String]) -> bool) -> Vec<u32> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(ours) = id(Path::new("/proc/thread-self/ns/net")) else {
        return vec![];
    };
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                return false;
            };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            matches(comm.trim_end(), &argv)
        })
        .filter(|pid| id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(ours))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_is_the_last_setting_or_firewalld_s_default() {
        assert_eq!(
            backend_in_conf("# FirewallBackend=iptables\nFirewallBackend=iptables\n"),
            "iptables"
        );
        assert_eq!(
            backend_in_conf("FirewallBackend=iptables\n FirewallBackend=nftables \n"),
            "nftables"
        );
        assert_eq!(backend_in_conf("DefaultZone=public\n"), "nftables");
    }

    #[test]
    fn only_iptables_backends_are_flushed() {
        assert!(!flushes(BackendKind::Nftables));
        assert!(flushes(BackendKind::IptablesNft));
        assert!(flushes(BackendKind::IptablesLegacy));
    }
}
