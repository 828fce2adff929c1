//! Invokes a CNI plugin binary as a runtime does: env, stdin, stdout.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde_json::Value;

use crate::netns::Netns;

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    /// `CNI_NETNS`; empty for DEL after the namespace is gone.
    pub netns: String,
    pub ifname: &'a str,
    /// PATH the plugin sees (decides its firewall tools).
    pub path: &'a Path,
    pub config: &'a Value,
    /// More variables, as a client sets them (`CNI_ARGS`, `CAP_ARGS`).
    pub env: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    /// A call with no variables beyond the `CNI_*` ones. (`Call::new`, a
    /// call about a topology container on `eth0`, is the topology's: this
    /// module knows namespaces, not topologies.)
    pub fn on(
        command: &'a str,
        container_id: &'a str,
        netns: String,
        ifname: &'a str,
        path: &'a Path,
        config: &'a Value,
    ) -> Call<'a> {
        Call {
            command,
            container_id,
            netns,
            ifname,
            path,
            config,
            env: Vec::new(),
        }
    }
}

/// What the plugin did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The CNI error code printed on failure.
    pub fn error_code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }

    pub fn error_msg(&self) -> String {
        self.json()
            .and_then(|j| j.get("msg").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    }

    /// One line for reports.
    pub fn summary(&self) -> String {
        format!(
            "exit {:?}, stdout {}, stderr {}",
            self.exit,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Runs the plugin inside `ns` (the "host" namespace of a scenario).
pub fn invoke(plugin: &Path, ns: &Netns, call: &Call<'_>) -> std::io::Result<Outcome> {
    let mut cmd = ns.command(plugin);
    call.apply_env(&mut cmd);
    run_with_input(cmd, call.config.to_string().as_bytes())
}

/// [`invoke`] for a conformance cell: the plugin also gets the cell's own
/// /run (see [`isolate`]), so what it keeps there is the cell's.
pub fn invoke_isolated(plugin: &Path, ns: &Netns, call: &Call<'_>) -> std::io::Result<Outcome> {
    let mut cmd = ns.command(plugin);
    call.apply_env(&mut cmd);
    isolate(&mut cmd, call.path)?;
    run_with_input(cmd, call.config.to_string().as_bytes())
}

/// The directory the plugins of a run with tool directory `path` see as
/// /run (see [`isolate`]).
pub fn run_dir(path: &Path) -> PathBuf {
    path.join("run")
}

/// Where `ip netns add` binds the namespaces `CNI_NETNS` names.
const NETNS_DIR: &CStr = c"/run/netns";

/// Starts `cmd` in a mount namespace of its own whose /run is
/// [`run_dir`]`(path)`, with the host's /run/netns bound back in. A binary
/// that ignores `PORTMAP_LOCK` and `PORTMAP_STATE_DIR` (another portmap,
/// an older one of ours) still locks /run/portmap.lock and journals under
/// /run/cni/portmap of its cell, never the host's, and iptables' lock
/// /run/xtables.lock is the cell's too: every call of a cell shares them
/// (same `path`), no other cell or host process does. Mounts are made
/// private first, so nothing propagates back to the host; the namespace
/// ends with the plugin's processes.
pub fn isolate(cmd: &mut Command, path: &Path) -> std::io::Result<()> {
    let run = run_dir(path);
    let netns = run.join("netns");
    std::fs::create_dir_all(&netns)?;
    let run = CString::new(run.as_os_str().as_bytes())?;
    let netns = CString::new(netns.as_os_str().as_bytes())?;
    // SAFETY: between fork and exec the closure only makes syscalls
    // (unshare, mount) on strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || private_run(&run, &netns).map_err(std::io::Error::from));
    }
    Ok(())
}

fn private_run(run: &CStr, netns: &CStr) -> nix::Result<()> {
    const NONE: Option<&CStr> = None;
    unshare(CloneFlags::CLONE_NEWNS)?;
    // / is shared on systemd hosts: without this the binds below would
    // appear in the host's /run.
    mount(
        NONE,
        c"/",
        NONE,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        NONE,
    )?;
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(NETNS_DIR), netns, NONE, bind, NONE)?;
    mount(Some(run), c"/run", NONE, bind, NONE)
}

/// What the catalogue speaks unless negotiation says otherwise.
pub const DEFAULT_VERSION: &str = "1.0.0";
/// Versions the catalogue can run at, newest first (CHECK needs 0.4.0).
const CANDIDATES: [&str; 3] = ["1.1.0", "1.0.0", "0.4.0"];

/// The versions `binary` lists in its VERSION answer.
pub fn supported_versions(binary: &Path) -> Option<Vec<String>> {
    let mut cmd = Command::new(binary);
    cmd.env_clear().env("CNI_COMMAND", "VERSION");
    let out = run_with_input(cmd, br#"{"cniVersion":"0.4.0"}"#).ok()?;
    let answer = out.json()?;
    Some(
        answer["supportedVersions"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

/// The newest version every one of `binaries` supports (the plugin under
/// test, the reference, the chain's plugins): Debian 11's CNI 0.9.0
/// plugins stop at 0.4.0, Debian 12's 1.1.1 at 1.0.0.
pub fn negotiate(binaries: &[&Path]) -> Result<String, String> {
    let mut answers = Vec::new();
    for b in binaries {
        let versions = supported_versions(b)
            .ok_or_else(|| format!("{} gave no VERSION answer", b.display()))?;
        answers.push(versions);
    }
    CANDIDATES
        .iter()
        .find(|v| answers.iter().all(|a| a.iter().any(|x| x == *v)))
        .map(|v| v.to_string())
        .ok_or_else(|| {
            format!(
                "no CNI version from {CANDIDATES:?} is supported by all of {}",
                paths(binaries)
            )
        })
}

/// `a, b, c` for messages.
pub fn paths(binaries: &[&Path]) -> String {
    binaries
        .iter()
        .map(|b| b.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `plugin` lists CNI 1.1.0 among its VERSION answers: upstream
/// portmap gained its nftables backend (v1.5) with CNI 1.1 support.
pub fn speaks_cni_1_1(plugin: &Path) -> bool {
    supported_versions(plugin).is_some_and(|v| v.iter().any(|x| x == "1.1.0"))
}

/// A 1.0-shaped result as a client speaking `version` holds it: 0.3.x and
/// 0.4.0 results carry `version` on each IP.
pub fn result_in_version(prev: &Value, version: &str) -> Value {
    let mut out = prev.clone();
    out["cniVersion"] = serde_json::json!(version);
    if version.starts_with("0.") {
        if let Some(ips) = out["ips"].as_array_mut() {
            for ip in ips.iter_mut() {
                let v6 = ip["address"].as_str().is_some_and(|a| a.contains(':'));
                ip["version"] = serde_json::json!(if v6 { "6" } else { "4" });
            }
        }
    }
    out
}

/// A binary for reports: its path and what it says of its version (a Go
/// plugin prints `CNI portmap plugin v1.9.0` when run without
/// CNI_COMMAND), or, where it does not know ("version unknown", as
/// distribution builds say), the version of the Debian package holding it.
pub fn describe(plugin: &Path) -> String {
    let about = Command::new(plugin)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            )
        })
        .unwrap_or_default();
    let version = about
        .lines()
        .find_map(|l| l.strip_prefix("CNI portmap plugin "))
        .filter(|v| !v.contains("unknown"))
        .map(str::to_string)
        .or_else(|| debian_package_version(plugin));
    match version {
        Some(v) => format!("{} {v}", plugin.display()),
        None => plugin.display().to_string(),
    }
}

fn debian_package_version(path: &Path) -> Option<String> {
    let owner = Command::new("dpkg").arg("-S").arg(path).output().ok()?;
    let package = String::from_utf8_lossy(&owner.stdout)
        .split(':')
        .next()?
        .trim()
        .to_string();
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", &package])
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    (!package.is_empty() && !version.is_empty()).then(|| format!("({package} {version})"))
}

/// Where a plugin run with tool directory `path` keeps its state (our
/// journal, `PORTMAP_STATE_DIR`): inside that directory, so it goes when
/// the cell ends and nothing is written to the host's /run/cni/portmap
/// (a cell's plugins also get a /run of their own: [`isolate`]).
pub fn state_dir(path: &Path) -> std::path::PathBuf {
    path.join("portmap-state")
}

/// The plugin lock of a run with tool directory `path` (our plugin's
/// `PORTMAP_LOCK`): beside its state, so a portmap of another run or of
/// the host holding /run/portmap.lock cannot stall the cell. Every call of
/// a cell shares its firewall (the cell's namespaces) and so this lock.
pub fn lock_path(path: &Path) -> std::path::PathBuf {
    path.join("portmap.lock")
}

impl Call<'_> {
    /// Replaces `cmd`'s environment with this call's CNI variables.
    pub fn apply_env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PORTMAP_STATE_DIR", state_dir(self.path))
            .env("PORTMAP_LOCK", lock_path(self.path))
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", "/usr/lib/cni:/opt/cni/bin")
            .env("PATH", self.path)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
    }
}

/// Runs `cmd` with `input` on stdin and captures what it printed. Input
/// is written from its own thread (a plugin may exit without reading: its
/// exit code and output tell the story, not our broken pipe).
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> std::io::Result<Outcome> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(mut pipe) = stdin {
                let _ = pipe.write_all(input);
            }
        });
        child.wait_with_output()
    })?;
    Ok(Outcome {
        exit: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}
