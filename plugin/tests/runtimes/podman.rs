//! podman 4 with its CNI network backend, isolated from the host's podman:
//! its own containers.conf, storage, run and CNI directories under the
//! test's scratch dir, running inside the test's runtime namespace.

use std::path::PathBuf;
use std::process::{Command, Output};

use portmap_conformance::netns::Netns;

use super::world::{Runtime, World, TCP, UDP};

pub struct Podman<'w> {
    world: &'w World,
    conf: PathBuf,
    storage: PathBuf,
}

const IMAGE: &str = "localhost/portmap-test/busybox:1";

impl<'w> Podman<'w> {
    /// Writes the configuration (conflist with `backend` in portmap's
    /// entry) and imports the busybox image.
    pub fn new(world: &'w World, backend: Option<&str>) -> Podman<'w> {
        let dir = &world.dir;
        let net_d = world.write_net_d("pmtest", "0.4.0", backend, "pmtest.conflist");
        let bin = world.plugin_dir();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{events}\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{net_d}\"\n\
                 cni_plugin_dirs = [\"{bin}\"]\ndefault_network = \"pmtest\"\n",
                events = dir.join("events.log").display(),
                net_d = net_d.display(),
                bin = bin.display(),
            ),
        )
        .expect("containers.conf");
        let storage = dir.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("storage").display(),
                dir.join("run").display()
            ),
        )
        .expect("storage.conf");
        let podman = Podman {
            world,
            conf,
            storage,
        };
        let tar = world.rootfs_tar();
        podman.ok(&["import", &tar.display().to_string(), IMAGE]);
        podman
    }

    fn command(&self, args: &[&str]) -> Command {
        let dir = &self.world.dir;
        std::fs::create_dir_all(dir.join("tmp")).expect("tmp dir");
        let mut cmd = self.world.topo.host.command("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("PORTMAP_STATE_DIR", dir.join("portmap-state"))
            .env("CONTAINERS_STORAGE_CONF", &self.storage)
            .env("TMPDIR", dir.join("tmp"))
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--network-backend", "cni"])
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Runtime for Podman<'_> {
    /// `podman run -d -p …`. runc, not crun: crun refuses hybrid cgroup
    /// hosts. The ulimits are the ones conmon runs with: podman's defaults
    /// would raise them, which needs CAP_SYS_RESOURCE that some hosts'
    /// root (this VM's among them) lacks.
    fn run_pod(&mut self, name: &str) -> (String, Netns) {
        let nofile = super::own_limit("Max open files");
        let tcp = format!("{}:{}", TCP.0, TCP.1);
        let udp = format!("{}:{}/udp", UDP.0, UDP.1);
        let id = self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--runtime",
            "runc",
            "--ulimit",
            &format!("nofile={nofile}:{nofile}"),
            "--ulimit",
            "nproc=32768:32768",
            "-p",
            &tcp,
            "-p",
            &udp,
            IMAGE,
            "/bin/sleep",
            "600",
        ]);
        let sandbox = self.ok(&[
            "inspect",
            name,
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
        ]);
        let ns = Netns::open(std::path::Path::new(&sandbox)).expect("pod netns");
        (id, ns)
    }

    /// `podman stop` then `podman rm` (CNI DEL runs at stop; rm is a no-op
    /// for the network): both must leave nothing.
    fn remove_pod(&mut self, name: &str, _id: &str) {
        self.ok(&["stop", "-t", "0", name]);
        self.ok(&["rm", name]);
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["rmi", "-af"]);
    }
}
