//! A real firewalld (Debian's package) and a private dbus-daemon, in a
//! test's "host" network namespace plus a private mount namespace of
//! their own: /run is a tmpfs there (with /run/netns bound back in, so
//! CNI_NETNS paths still resolve, and /run/xtables.lock, so firewalld's
//! iptables and ours take one lock), /etc/firewalld a copy with the wanted
//! FirewallBackend=, /sys a fresh sysfs of that namespace, and
//! modprobe/rmmod stubs (`--complete-reload` unloads netfilter modules,
//! which the whole machine shares). The bus socket lives in the test's
//! temp directory, so the plugin (outside that mount namespace) reaches it
//! through DBUS_SYSTEM_BUS_ADDRESS. Drop kills both by PID; the mount
//! namespace goes with its last process, the directory is removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use portmap_conformance::netns::Netns;

/// The mount namespace, set up by a shell that then becomes dbus-daemon.
const SETUP: &str = r#"set -eu
D=$1; BACKEND=$2; LEGACY=$3
mkdir -p "$D/keep"
mount --rbind /run/netns "$D/keep"
# The xtables lock too: firewalld's iptables-restore and ours must take the
# same one, as on a host (two legacy writers apart fail each other's commit).
touch /run/xtables.lock "$D/xtables.lock"
mount --bind /run/xtables.lock "$D/xtables.lock"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns
mount --rbind "$D/keep" /run/netns
umount -l "$D/keep"
touch /run/xtables.lock
mount --bind "$D/xtables.lock" /run/xtables.lock
umount -l "$D/xtables.lock"
cp -a /etc/firewalld "$D/etc"
sed -i "s/^FirewallBackend=.*/FirewallBackend=$BACKEND/" "$D/etc/firewalld.conf"
mount --bind "$D/etc" /etc/firewalld
mount -t sysfs sysfs /sys
printf '#!/bin/sh\nexit 0\n' > "$D/stub"
chmod 0755 "$D/stub"
mount --bind "$D/stub" /usr/sbin/modprobe
mount --bind "$D/stub" /usr/sbin/rmmod
if [ "$LEGACY" = 1 ]; then
  # firewalld runs /usr/sbin/iptables*: the alternatives point at legacy here.
  cp -a /etc/alternatives "$D/alternatives"
  for t in iptables ip6tables; do
    for s in "" -save -restore; do
      ln -sfn "/usr/sbin/$t-legacy$s" "$D/alternatives/$t$s"
    done
  done
  mount --bind "$D/alternatives" /etc/alternatives
fi
exec dbus-daemon --config-file="$D/bus.conf" --nofork --nosyslog
"#;

pub struct Daemon {
    dir: PathBuf,
    bus: Child,
    firewalld: Option<Child>,
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

impl Daemon {
    /// The bus and the mount namespace; firewalld is started by
    /// [`Daemon::start_firewalld`]. `legacy`: its iptables are legacy.
    pub fn new(host: &Netns, backend: &'static str, legacy: bool) -> Daemon {
        let dir = std::env::temp_dir().join(format!(
            "portmap-firewalld-{}-{}",
            std::process::id(),
            host.name()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("bus");
        std::fs::write(
            dir.join("bus.conf"),
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("bus.conf");
        std::fs::write(dir.join("setup.sh"), SETUP).expect("setup.sh");
        let bus = host
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(dir.join("setup.sh"))
            .arg(&dir)
            .arg(backend)
            .arg(if legacy { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dbus.log")).expect("dbus.log"))
            .spawn()
            .expect("start the mount namespace and dbus-daemon");
        let mut d = Daemon {
            dir,
            bus,
            firewalld: None,
        };
        let socket_up = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
        let start = Instant::now();
        while !socket_up() {
            if let Ok(Some(status)) = d.bus.try_wait() {
                panic!("dbus-daemon exited ({status}): {}", d.log("dbus.log"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no bus: {}",
                d.log("dbus.log")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.join("bus").display())
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// `program` inside the mount and network namespaces, on the bus.
    pub fn enter(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.bus.id()))
            .args(["--mount", "--net", "--", "env", "-i"])
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(format!("DBUS_SYSTEM_BUS_ADDRESS={}", self.bus_address()))
            .arg(program);
        cmd
    }

    fn connection(&self) -> zbus::blocking::Connection {
        zbus::blocking::connection::Builder::address(self.bus_address().as_str())
            .expect("bus address")
            .method_timeout(Duration::from_secs(30))
            .build()
            .expect("connect to the test's bus")
    }

    /// Starts firewalld and waits until its start-up is over (its
    /// `state` property says RUNNING, what `firewall-cmd --state` asks).
    pub fn start_firewalld(&mut self) -> Duration {
        let started = Instant::now();
        self.spawn_firewalld();
        self.wait_running();
        started.elapsed()
    }

    /// Returns once firewalld's start or reload (SIGHUP) is over: its main
    /// loop answers the `state` query only then (the signal's source has
    /// the higher priority).
    pub fn wait_running(&self) {
        let state = portmap::firewalld::state(&self.connection()).expect("firewalld state");
        assert_eq!(state, "RUNNING", "{}", self.log("firewalld.log"));
    }

    /// Starts firewalld and returns once its bus name appears: when
    /// systemd deems a Type=dbus unit started, before its start-up flush.
    pub fn spawn_firewalld(&mut self) {
        assert!(self.firewalld.is_none(), "firewalld already runs");
        let child = self
            .enter("firewalld")
            .args(["--nofork", "--nopid", "--log-target", "file", "--log-file"])
            .arg(self.dir.join("firewalld.log"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("firewalld.err")).expect("err"))
            .spawn()
            .expect("start firewalld");
        self.firewalld = Some(child);
        let bus = self.connection();
        wait_until("firewalld's bus name", Duration::from_secs(30), || {
            assert!(
                !self.exited(),
                "firewalld exited: {}{}",
                self.log("firewalld.err"),
                self.log("firewalld.log")
            );
            portmap::firewalld::on_bus(&bus).unwrap_or(false)
        });
    }

    /// What `systemctl reload firewalld` does (its ExecReload=kill -HUP).
    pub fn sighup(&self) {
        let pid = self.firewalld_pid().expect("firewalld runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP firewalld");
    }

    fn exited(&mut self) -> bool {
        self.firewalld
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    pub fn firewalld_pid(&self) -> Option<u32> {
        self.firewalld.as_ref().map(Child::id)
    }

    /// SIGTERM (firewalld flushes on exit: CleanupOnExit=yes), then waits.
    pub fn stop_firewalld(&mut self) {
        if let Some(mut child) = self.firewalld.take() {
            stop(&mut child, "firewalld");
        }
    }

    /// `firewall-cmd ARGS`: its output and how long it took to return.
    pub fn firewall_cmd(&self, args: &[&str]) -> (Output, Duration) {
        let start = Instant::now();
        let out = self
            .enter("firewall-cmd")
            .args(args)
            .output()
            .expect("firewall-cmd");
        (out, start.elapsed())
    }

    /// The directory the test may keep its own files in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// SIGTERM, then SIGKILL after 10 s; reaped either way.
fn stop(child: &mut Child, what: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{what} ignored SIGTERM for 10 s: SIGKILL");
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_firewalld();
        // Its mount namespace ends with it (the last process in it).
        stop(&mut self.bus, "dbus-daemon");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
