//! podman 4 with its CNI network backend, isolated from the host's podman:
//! its own containers.conf, storage, run and CNI directories under the
//! test's scratch dir, running inside the test's runtime namespace.

use std::path::PathBuf;
use std::process::{Command, Output};

use portmap_conformance::netns::Netns;

use portmap_conformance::firewall;
use portmap_conformance::traffic::EchoServer;

use super::world::{PodNet, Runtime, World, PMTEST, PMTEST_B, TCP, UDP};

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
        Podman::with_networks(world, backend, &[PMTEST])
    }

    /// [`Podman::new`] with a conflist for each of `networks` (the first
    /// is podman's default network).
    pub fn with_networks(
        world: &'w World,
        backend: Option<&str>,
        networks: &[PodNet<'_>],
    ) -> Podman<'w> {
        let dir = &world.dir;
        let mut net_d = world.dir.join("net.d");
        for net in networks {
            let file = format!("{}.conflist", net.name);
            net_d = world.write_net_d_for(net, "0.4.0", backend, &file);
        }
        let default = networks.first().map_or(PMTEST.name, |n| n.name);
        let bin = world.plugin_dir();
        let conf = dir.join("containers.conf");
        // engine.env: the DEL of `podman container cleanup`, which conmon
        // starts, does not inherit this command's environment, and must
        // not use the host's portmap lock and journal either.
        std::fs::write(
            &conf,
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{events}\"\n\
                 env = [\"PORTMAP_STATE_DIR={state}\", \"PORTMAP_LOCK={lock}\"]\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{net_d}\"\n\
                 cni_plugin_dirs = [\"{bin}\"]\ndefault_network = \"{default}\"\n",
                events = dir.join("events.log").display(),
                state = dir.join("portmap-state").display(),
                lock = dir.join("portmap.lock").display(),
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
            .env("PORTMAP_LOCK", dir.join("portmap.lock"))
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

impl Podman<'_> {
    /// `podman run -d [--network a,b] -p … sleep`; the container's ID and
    /// network namespace. runc, not crun: crun refuses hybrid cgroup
    /// hosts. The ulimits are the ones conmon runs with: podman's defaults
    /// would raise them, which needs CAP_SYS_RESOURCE that some hosts'
    /// root (this VM's among them) lacks.
    pub fn run_on(&self, name: &str, networks: &[&str], publish: &[&str]) -> (String, Netns) {
        let nofile = super::own_limit("Max open files");
        let nofile = format!("nofile={nofile}:{nofile}");
        let mut args = vec!["run", "-d", "--name", name, "--runtime", "runc"];
        args.extend(["--ulimit", &nofile, "--ulimit", "nproc=32768:32768"]);
        let networks = networks.join(",");
        if !networks.is_empty() {
            args.extend(["--network", &networks]);
        }
        for p in publish {
            args.extend(["-p", p]);
        }
        args.extend([IMAGE, "/bin/sleep", "600"]);
        let id = self.ok(&args);
        let sandbox = self.ok(&[
            "inspect",
            name,
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
        ]);
        let ns = Netns::open(std::path::Path::new(&sandbox)).expect("pod netns");
        (id, ns)
    }

    /// The container's IPv4 address on each of its networks, by name.
    pub fn addresses(&self, name: &str) -> Vec<(String, String)> {
        let format = "{{range $n, $s := .NetworkSettings.Networks}}{{$n}}={{$s.IPAddress}} {{end}}";
        self.ok(&["inspect", name, "--format", format])
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(n, ip)| (n.to_string(), ip.to_string()))
            .collect()
    }
}

impl Runtime for Podman<'_> {
    fn run_pod(&mut self, name: &str) -> (String, Netns) {
        let tcp = format!("{}:{}", TCP.0, TCP.1);
        let udp = format!("{}:{}/udp", UDP.0, UDP.1);
        self.run_on(name, &[], &[&tcp, &udp])
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

/// A container on two CNI networks with one published port. What podman
/// 4.3 (CNI backend) does, observed: it calls each network's chain with the
/// same `portMappings`, so portmap is asked to publish the host port once
/// per network (two attachments: same container ID, other network name,
/// `eth0`/`eth1` in the order podman picks); and `podman network
/// disconnect` sends DEL for that network alone. So: a DNAT to the
/// container's address on each network, the port answering, after a
/// disconnect the other network's DNAT kept, and after `podman rm -f` no
/// rule of the container at all (the localnet guard excepted).
pub fn two_networks(world: &World, podman: &Podman<'_>) {
    let publish = format!("{}:{}", TCP.0, TCP.1);
    let (id, pod) = podman.run_on("two", &[PMTEST.name, PMTEST_B.name], &[&publish]);
    let _srv = EchoServer::start(&pod, "two", TCP.1).expect("echo in the pod");
    let ips = podman.addresses("two");
    assert_eq!(ips.len(), 2, "podman inspect: {ips:?}");
    for (net, ip) in &ips {
        assert!(
            dnat_to(world, ip),
            "podman published {port} on both networks (portmap ADD for each), but no DNAT to \
             {net}'s {ip}:{to} is in the ruleset: the other network's ADD removed it\n{rules}",
            port = TCP.0,
            to = TCP.1,
            rules = world.ruleset()
        );
    }
    world
        .expect_published_tcp(&pod, "two")
        .unwrap_or_else(|e| panic!("on two networks: {e}\n{}", world.ruleset()));

    // DEL of one attachment: the other network's mapping stays.
    let (gone, kept) = (&ips[1], &ips[0]);
    podman.ok(&["network", "disconnect", &gone.0, "two"]);
    assert!(
        !dnat_to(world, &gone.1),
        "after `podman network disconnect {}`, its DNAT to {}:{} is left\n{}",
        gone.0,
        gone.1,
        TCP.1,
        world.ruleset()
    );
    assert!(
        dnat_to(world, &kept.1),
        "after `podman network disconnect {}` (DEL of that network only), {}'s DNAT to {}:{} \
         is gone too\n{}",
        gone.0,
        kept.0,
        kept.1,
        TCP.1,
        world.ruleset()
    );
    world.expect_published_tcp(&pod, "two").unwrap_or_else(|e| {
        panic!(
            "after `podman network disconnect {}`, {} no longer publishes {}: {e}\n{}",
            gone.0,
            kept.0,
            TCP.0,
            world.ruleset()
        )
    });

    podman.ok(&["rm", "-f", "-t", "0", "two"]);
    world.expect_unpublished().expect("port closed after rm -f");
    let rules = firewall::without_guard(&world.ruleset());
    let left: Vec<&str> = rules
        .lines()
        .filter(|l| {
            l.contains(&id)
                || l.contains("CNI-DN-")
                || ips.iter().any(|(_, ip)| l.contains(&format!("{ip}:")))
        })
        .collect();
    assert!(
        left.is_empty(),
        "after podman rm -f, rules of the container are left:\n{}\n\nruleset:\n{rules}",
        left.join("\n")
    );
}

/// Whether the runtime namespace's ruleset DNATs to `ip` on the container port.
fn dnat_to(world: &World, ip: &str) -> bool {
    let target = format!("{ip}:{}", TCP.1);
    world
        .ruleset()
        .lines()
        .any(|l| l.contains(&target) && (l.contains("dnat") || l.contains("DNAT")))
}
