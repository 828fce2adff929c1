//! Named network namespaces for tests and scenarios: created with
//! `ip netns add`, entered per thread with `setns`, removed on drop (also
//! when a test panics). Processes spawned from [`Netns::run`] or
//! [`Netns::command`] live in the namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns into {name} failed: {source}")]
    Setns { name: String, source: nix::Error },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, owned by the test that made it (deleted on drop)
/// or opened from a runtime's sandbox (left to the runtime).
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
    owned: bool,
}

impl Netns {
    /// Creates `pmt-<label>-<pid>-<n>` with loopback up.
    pub fn new(label: &str) -> Result<Netns, NetnsError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("pmt-{label}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let path = PathBuf::from(format!("/run/netns/{name}"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(source) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                return Err(NetnsError::Open { path, source });
            }
        };
        let ns = Netns {
            name,
            file,
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// An existing namespace under /run/netns (a container runtime's pod
    /// sandbox): entered like ours, never deleted by us.
    pub fn open(path: &std::path::Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Netns {
            name,
            file,
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted path, as runtimes pass it in `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a fresh thread inside the namespace; sockets it creates
    /// and processes it spawns belong to the namespace. A panic in `f`
    /// propagates to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Setns {
                        name: self.name.clone(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `fd` stays open while `self`
        // lives, and the child gets its own copy of the descriptor table.
        unsafe {
            cmd.pre_exec(move || {
                setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(|_| ())
    }

    /// Runs a program in the namespace and returns its stdout; fails on a
    /// non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let out = run_ok(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` style).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Spawn {
                command: format!("write {path}"),
                source,
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub(crate) fn run_ok(cmd: &mut Command) -> Result<Output, NetnsError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Whether tests that need root, namespaces and the given tools can run.
/// Without them a test is skipped, except under CI (`CI` set), where a
/// missing prerequisite is a failure.
pub fn prerequisites(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".into());
    }
    for t in std::iter::once(&"ip").chain(tools) {
        if which::which(t).is_err() {
            missing.push((*t).to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing prerequisites: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!(
            "{msg} (CI is set: a missing prerequisite is a failure; run scripts/install-deps.sh)"
        );
    }
    eprintln!("SKIPPED: {msg}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_made_inside_is_not_visible_outside_and_drop_removes_the_namespace() {
        if !prerequisites(&["nft"]) {
            return;
        }
        let ns = Netns::new("iso").expect("netns");
        ns.exec("nft", &["add", "table", "ip", "pmt_isolation_probe"])
            .expect("nft inside");
        let inside = ns.exec("nft", &["list", "tables"]).expect("list inside");
        assert!(inside.contains("pmt_isolation_probe"), "{inside}");
        let outside = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft outside");
        assert!(!String::from_utf8_lossy(&outside.stdout).contains("pmt_isolation_probe"));
        // run() puts the thread (and its children) inside as well.
        let from_thread = ns
            .run(|| Command::new("nft").args(["list", "tables"]).output())
            .expect("run")
            .expect("nft");
        assert!(String::from_utf8_lossy(&from_thread.stdout).contains("pmt_isolation_probe"));
        let path = ns.path();
        drop(ns);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn namespace_is_removed_when_the_owner_panics() {
        if !prerequisites(&[]) {
            return;
        }
        let mut path = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ns = Netns::new("panic").expect("netns");
            path = Some(ns.path());
            ns.run(|| panic!("boom")).expect("run");
        }));
        assert!(result.is_err());
        let path = path.expect("created");
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
