//! Runs a firewall tool with optional stdin and a deadline, capturing its
//! output. Every tool runs under the plugin-wide lock: one that hangs must
//! end in an error, not stop every CNI call on the host.
//!
//! `PORTMAP_TOOL_TIMEOUT_MS`, when set, replaces every timeout below. It
//! exists for tests (a hanging tool is then killed in milliseconds) and
//! is not meant for production hosts.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};

/// `--version` and the `nft -c` probe: they answer at once or not at all.
pub const PROBE: Duration = Duration::from_secs(5);
/// A read (`iptables-save -t nat`, `iptables -S`, `nft -j list table`):
/// a host with kube-proxy's nat table (tens of thousands of rules) takes
/// seconds to dump it.
pub const READ: Duration = Duration::from_secs(10);
/// `nft -j -f -`: takes no lock, sends one batch; nft reads what the batch
/// touches first, as long as a read.
pub const NFT_APPLY: Duration = Duration::from_secs(10);
/// `iptables-restore -w 10`: up to 10 s waiting for the xtables lock, then
/// a read of the table and the commit; so the lock wait plus a read.
pub const RESTORE: Duration = Duration::from_secs(20);
/// The UDP conntrack flush of one family (over netlink, no process): a
/// dump of the kernel's table and the deletes, best effort.
pub const CONNTRACK: Duration = Duration::from_secs(5);

/// Overrides every timeout (milliseconds); for tests.
pub const TIMEOUT_ENV: &str = "PORTMAP_TOOL_TIMEOUT_MS";

/// After a kill, how long to wait for the kernel to reap the child.
const REAP_AFTER_KILL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {program} failed: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Killed, with its process group, at the deadline.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
}

/// `base`, unless [`TIMEOUT_ENV`] says otherwise.
pub fn timeout(base: Duration) -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(base, Duration::from_millis)
}

/// Runs `program` with `input` on stdin (`None`: /dev/null), killing it
/// when `base` (or the override, see [`timeout`]) has passed. One poll loop writes stdin and reads
/// stdout and stderr, so a large batch cannot deadlock against a tool that
/// writes before it has read everything, and nothing blocks past the
/// deadline, not even a grandchild holding a pipe. A tool that exits
/// without reading (a failing one) is judged by its status and stderr,
/// not by our broken pipe. The child leads its own process group, and a
/// timeout kills the group: a wrapper script's children die with it.
pub fn run(
    program: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    base: Duration,
) -> Result<Output, ExecError> {
    let limit = timeout(base);
    let name = || program.display().to_string();
    let mut command = Command::new(program);
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // getppid, _exit) run, and nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            // Its own process group (for the timeout) would let the tool
            // outlive a plugin the runtime killed, and commit after it: the
            // tool dies with the plugin instead, before its commit or after.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(137);
            }
            Ok(())
        });
    }
    let mut child = command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: name(),
            source,
        })?;
    let deadline = Instant::now() + limit;
    match communicate(&mut child, input.unwrap_or_default(), deadline) {
        Ok(Some(output)) => Ok(output),
        Ok(None) => {
            kill_group(&mut child);
            Err(ExecError::Timeout {
                program: name(),
                timeout: limit,
            })
        }
        Err(source) => {
            kill_group(&mut child);
            Err(ExecError::Io {
                program: name(),
                source,
            })
        }
    }
}

/// Feeds `input` and collects output until both pipes close and the child
/// exits; `None` at the deadline.
fn communicate(
    child: &mut Child,
    input: &[u8],
    deadline: Instant,
) -> std::io::Result<Option<Output>> {
    let mut stdin = child.stdin.take();
    if let Some(pipe) = &stdin {
        set_nonblocking(pipe)?;
    }
    // As files, so both pipes are one type.
    let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
    let mut out = (child.stdout.take().map(|p| file(p.into())), Vec::new());
    let mut err = (child.stderr.take().map(|p| file(p.into())), Vec::new());
    let mut written = 0;
    if input.is_empty() {
        stdin = None;
    }
    while stdin.is_some() || out.0.is_some() || err.0.is_some() {
        let Some(wait) = poll_wait(deadline) else {
            return Ok(None);
        };
        let ready = {
            let wanted = [
                (stdin.as_ref().map(|p| p.as_fd()), PollFlags::POLLOUT),
                (out.0.as_ref().map(|p| p.as_fd()), PollFlags::POLLIN),
                (err.0.as_ref().map(|p| p.as_fd()), PollFlags::POLLIN),
            ];
            let mut fds: Vec<PollFd<'_>> = wanted
                .iter()
                .filter_map(|(fd, flags)| fd.map(|fd| PollFd::new(fd, *flags)))
                .collect();
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            // fds holds the open pipes in `wanted`'s order.
            let mut fired = fds.iter().map(|fd| fd.any().unwrap_or(true));
            wanted.map(|(fd, _)| fd.is_some() && fired.next().unwrap_or(false))
        };
        if ready[0] {
            if let Some(pipe) = stdin.as_mut() {
                match pipe.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::BrokenPipe => written = input.len(),
                    Err(e) if retry(&e) => {}
                    Err(e) => return Err(e),
                }
                if written == input.len() {
                    stdin = None;
                }
            }
        }
        for (fired, (pipe, buf)) in [(ready[1], &mut out), (ready[2], &mut err)] {
            if let (true, Some(p)) = (fired, pipe.as_mut()) {
                if drain(p, buf)? {
                    *pipe = None;
                }
            }
        }
    }
    Ok(wait_until(child, deadline)?.map(|status| Output {
        status,
        stdout: out.1,
        stderr: err.1,
    }))
}

/// Milliseconds until `deadline` (rounded up, so poll never spins), or
/// `None` when it has passed.
fn poll_wait(deadline: Instant) -> Option<u16> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX))
}

fn retry(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Reads what one readable pipe holds; true at end of file.
fn drain(pipe: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    match pipe.read(&mut chunk) {
        Ok(0) => Ok(true),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(false)
        }
        Err(e) if retry(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn set_nonblocking(pipe: &impl AsRawFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = pipe.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The child's exit status once it has one, `None` at `deadline`. It has
/// closed its pipes, so it is normally exiting: the first polls are short.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(50);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Ok(None);
        };
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// SIGKILL to the child's process group (it leads one), then reaps the
/// child so no zombie stays; the rest of the group is reparented and
/// reaped by init.
fn kill_group(child: &mut Child) {
    use nix::sys::signal::{killpg, Signal};
    let killed = i32::try_from(child.id())
        .ok()
        .map(nix::unistd::Pid::from_raw)
        .is_some_and(|pgid| killpg(pgid, Signal::SIGKILL).is_ok());
    if !killed {
        let _ = child.kill();
    }
    // A child in uninterruptible sleep cannot be reaped yet: the error
    // matters more, and our exit hands it to init.
    let _ = wait_until(child, Instant::now() + REAP_AFTER_KILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, input: Option<&[u8]>, limit: Duration) -> Result<Output, ExecError> {
        run(Path::new("/bin/sh"), &["-c", script], input, limit)
    }

    #[test]
    fn a_tool_that_exits_without_reading_is_judged_by_its_status() {
        let big = "x".repeat(1 << 20);
        let out = sh(
            "echo refused >&2; exit 3",
            Some(big.as_bytes()),
            Duration::from_secs(10),
        )
        .expect("ran");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "refused");
    }

    #[test]
    fn large_input_and_output_do_not_deadlock() {
        let big = "y\n".repeat(1 << 19);
        let out = run(
            Path::new("/bin/cat"),
            &[],
            Some(big.as_bytes()),
            Duration::from_secs(10),
        )
        .expect("ran");
        assert_eq!(out.stdout.len(), big.len());
    }

    #[test]
    fn large_stderr_before_reading_stdin_does_not_deadlock() {
        // 1 MiB to stderr first, then stdin echoed to stdout.
        let big = "z".repeat(1 << 20);
        let out = sh(
            "head -c 1048576 /dev/zero >&2; cat",
            Some(big.as_bytes()),
            Duration::from_secs(10),
        )
        .expect("ran");
        assert_eq!((out.stderr.len(), out.stdout.len()), (1 << 20, big.len()));
    }

    #[test]
    fn no_input_is_dev_null() {
        let out = sh("cat; echo done", None, Duration::from_secs(10)).expect("ran");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    }

    fn gone(pid: i32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Gone, or a zombie (`pid (comm) Z ...`).
    fn dead(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        gone(pid)
            || stat
                .rsplit_once(')')
                .is_some_and(|(_, s)| s.trim_start().starts_with('Z'))
    }

    #[test]
    fn a_hung_tool_is_killed_at_its_timeout_and_reaped() {
        // The shell reports its pid and forks its sleep (not exec): the
        // whole group must die, and nothing stay a zombie.
        let dir = std::env::temp_dir().join(format!("portmap-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pids = dir.join("pids");
        let script = format!(
            "echo $$ > {p}; sleep 30 & echo $! >> {p}; wait",
            p = pids.display()
        );
        let start = Instant::now();
        let e = sh(&script, Some(b"input"), Duration::from_millis(200)).expect_err("timeout");
        let took = start.elapsed();
        assert!(
            matches!(e, ExecError::Timeout { timeout, .. } if timeout == Duration::from_millis(200)),
            "{e}"
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
        let text = std::fs::read_to_string(&pids).expect("pids");
        let pids: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(pids.len(), 2, "{text:?}");
        // The shell was ours: reaped, so no /proc entry (not even a zombie).
        assert!(gone(pids[0]), "shell {} left", pids[0]);
        // Its sleep was reparented to init, which reaps it (a zombie
        // until then: dead all the same).
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dead(pids[1]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dead(pids[1]), "sleep {} still runs", pids[1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tool_that_closes_its_pipes_and_hangs_times_out() {
        let start = Instant::now();
        let e =
            sh("exec >&- 2>&-; sleep 30", None, Duration::from_millis(200)).expect_err("timeout");
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let e = run(
            Path::new("/nonexistent/tool"),
            &[],
            None,
            Duration::from_secs(1),
        )
        .expect_err("missing");
        assert!(matches!(e, ExecError::Spawn { .. }), "{e}");
    }
}
