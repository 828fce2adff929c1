//! What every runtime test stands on: the runtime's own network namespace
//! (a topology "host": the runtime and the CNI plugins it runs live there),
//! a client namespace routed to it, a CNI plugin directory with our
//! portmap, a busybox-static root filesystem, and the checks a published
//! port must pass.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use portmap_conformance::firewall;
use portmap_conformance::netns::Netns;
use portmap_conformance::topology::Topology;
use portmap_conformance::traffic::{tcp_ask, udp_ask, EchoServer};
use serde_json::{json, Value};

use crate::common::ours;

/// Every pod publishes TCP 18080→80 and UDP 15353→5353.
pub const TCP: (u16, u16) = (18080, 80);
pub const UDP: (u16, u16) = (15353, 5353);
/// The runtime namespace's address on the client's link.
pub const RUNTIME_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The pods' bridge subnet (the topology's own bridge uses 10.88.0.0/24).
pub const POD_SUBNET: &str = "10.89.0.0/24";

/// A pod network of a runtime test: conflist name, bridge, subnet.
#[derive(Debug, Clone, Copy)]
pub struct PodNet<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub subnet: &'a str,
}

/// Every runtime's network.
pub const PMTEST: PodNet<'static> = PodNet {
    name: "pmtest",
    bridge: "cni-pmt0",
    subnet: POD_SUBNET,
};
/// A second network, for pods on two (`podman run --network a,b`).
pub const PMTEST_B: PodNet<'static> = PodNet {
    name: "pmtest-b",
    bridge: "cni-pmt1",
    subnet: "10.90.0.0/24",
};
const WAIT: Duration = Duration::from_secs(3);

pub struct World {
    pub topo: Topology,
    pub client: Netns,
    /// Scratch directory: plugin dir, configs, runtime state. Removed on drop.
    pub dir: PathBuf,
    /// /run/netns before the runtime ran: what appears later is its pods'.
    netns_before: BTreeSet<String>,
    /// One runtime at a time, so that every new pod namespace is ours.
    _serial: MutexGuard<'static, ()>,
}

static SERIAL: Mutex<()> = Mutex::new(());

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

impl World {
    pub fn new(label: &str) -> World {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let topo = Topology::new().expect("runtime namespace");
        let client = topo.remote().expect("client namespace");
        let dir = std::env::temp_dir().join(format!("portmap-{label}-{}", topo.host.name()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        World {
            topo,
            client,
            dir,
            netns_before: netns_names(),
            _serial: serial,
        }
    }

    /// `dir/bin`: our portmap plus Debian's bridge, host-local, loopback,
    /// firewall and tuning plugins (what the runtimes' conflists chain).
    pub fn plugin_dir(&self) -> PathBuf {
        let bin = self.dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::copy(ours(), bin.join("portmap")).expect("copy portmap");
        for p in ["bridge", "host-local", "loopback", "firewall", "tuning"] {
            let _ = std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p));
        }
        bin
    }

    /// A root filesystem with only busybox (static): `sleep` keeps a pod
    /// alive; the test serves the pod's ports from its network namespace.
    pub fn rootfs_tar(&self) -> PathBuf {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("rootfs");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for applet in ["sh", "sleep"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        self.tar(&root, "rootfs.tar")
    }

    /// `dir`'s contents as the tar file `name` in the scratch dir.
    pub fn tar(&self, dir: &Path, name: &str) -> PathBuf {
        let tar = self.dir.join(name);
        let out = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {out:?}");
        tar
    }

    /// Writes the conflist of network `name` as `<dir>/net.d/<file>` and
    /// returns that directory, the runtime's CNI config dir.
    pub fn write_net_d(
        &self,
        name: &str,
        cni_version: &str,
        backend: Option<&str>,
        file: &str,
    ) -> PathBuf {
        let net = PodNet { name, ..PMTEST };
        self.write_net_d_for(&net, cni_version, backend, file)
    }

    /// [`World::write_net_d`] for network `net` (its name, bridge, subnet).
    pub fn write_net_d_for(
        &self,
        net: &PodNet<'_>,
        cni_version: &str,
        backend: Option<&str>,
        file: &str,
    ) -> PathBuf {
        let net_d = self.dir.join("net.d");
        std::fs::create_dir_all(&net_d).expect("net.d");
        let conflist = self.conflist(net, cni_version, backend);
        std::fs::write(net_d.join(file), conflist.to_string()).expect("conflist");
        net_d
    }

    /// bridge (hairpin, masquerade) + portmap, as runtimes configure them;
    /// `backend` goes into portmap's entry.
    fn conflist(&self, net: &PodNet<'_>, cni_version: &str, backend: Option<&str>) -> Value {
        let mut portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        if let Some(b) = backend {
            portmap["backend"] = json!(b);
        }
        json!({
            "cniVersion": cni_version,
            "name": net.name,
            "plugins": [
                {"type": "bridge", "bridge": net.bridge, "isGateway": true, "ipMasq": true,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "dataDir": self.dir.join("ipam").display().to_string(),
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "ranges": [[{"subnet": net.subnet}]]}},
                portmap
            ]
        })
    }

    /// The pod answers on its published ports: TCP and UDP from the client
    /// namespace, TCP from 127.0.0.1 in the runtime's namespace, and TCP
    /// from the pod itself through the host port (hairpin).
    pub fn expect_published(&self, pod: &Netns, tag: &str) -> Result<(), String> {
        self.expect_published_tcp(pod, tag)?;
        let runtime = IpAddr::V4(RUNTIME_V4);
        let got = udp_ask(&self.client, SocketAddr::new(runtime, UDP.0), 0, WAIT)
            .map_err(|e| e.to_string())?;
        if got.as_ref().map(|a| a.tag.as_str()) != Some(tag) {
            return Err(format!(
                "udp {runtime}:{} from client: {got:?}, expected {tag}",
                UDP.0
            ));
        }
        Ok(())
    }

    /// TCP only (see [`World::expect_published`]).
    pub fn expect_published_tcp(&self, pod: &Netns, tag: &str) -> Result<(), String> {
        let runtime = IpAddr::V4(RUNTIME_V4);
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for (who, from, to) in [
            ("client", &self.client, runtime),
            ("127.0.0.1", &self.topo.host, loopback),
            ("hairpin", pod, runtime),
        ] {
            let got = tcp_ask(from, SocketAddr::new(to, TCP.0), WAIT).map_err(|e| e.to_string())?;
            if got.as_ref().map(|a| a.tag.as_str()) != Some(tag) {
                return Err(format!(
                    "tcp {to}:{} from {who}: {got:?}, expected {tag}",
                    TCP.0
                ));
            }
        }
        Ok(())
    }

    /// Nothing answers on the host port any more.
    pub fn expect_unpublished(&self) -> Result<(), String> {
        let to = SocketAddr::new(IpAddr::V4(RUNTIME_V4), TCP.0);
        match tcp_ask(&self.client, to, Duration::from_millis(700)).map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(a) => Err(format!(
                "tcp {to}: answered by {} after the pod went",
                a.tag
            )),
        }
    }

    /// The runtime namespace's firewall (every backend's view).
    pub fn ruleset(&self) -> String {
        firewall::dump(&self.topo.host)
    }

    /// Our rules for the pod subnet are gone (DNAT and masquerade).
    pub fn expect_no_rules(&self, what: &str) {
        let rules = self.ruleset();
        let ours = rules
            .lines()
            .filter(|l| {
                l.contains("10.89.0.")
                    && (l.contains("dnat") || l.contains("DNAT") || l.contains("masquerade"))
                    || l.contains("CNI-DN-")
            })
            .collect::<Vec<_>>();
        assert!(
            ours.is_empty(),
            "{what}: rules left:\n{}\n\nruleset:\n{rules}",
            ours.join("\n")
        );
    }
}

/// What the tests ask of a container runtime.
pub trait Runtime {
    /// Starts a pod publishing TCP and UDP; its ID and network namespace.
    fn run_pod(&mut self, name: &str) -> (String, Netns);
    /// Stops and removes it, with whatever CNI DELs the runtime sends.
    fn remove_pod(&mut self, name: &str, id: &str);
}

/// One pod: its ports answer every way, then stop and remove leave no rule.
pub fn publish_then_remove(world: &World, runtime: &mut impl Runtime) {
    let (id, pod) = runtime.run_pod("web");
    let servers = serve(&pod, "web");
    world
        .expect_published(&pod, "web")
        .unwrap_or_else(|e| panic!("{e}\n{}", world.ruleset()));
    let rules = world.ruleset();
    assert!(rules.contains(&id) || rules.contains("CNI-DN-"), "{rules}");
    drop(servers);
    runtime.remove_pod("web", &id);
    world.expect_unpublished().expect("port closed");
    world.expect_no_rules("after stop + remove");
}

/// Ten create/remove rounds on the same host port.
pub fn ten_rounds(world: &World, runtime: &mut impl Runtime) {
    for round in 0..10 {
        let name = format!("round{round}");
        let (id, pod) = runtime.run_pod(&name);
        let servers = serve(&pod, &name);
        world
            .expect_published(&pod, &name)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", world.ruleset()));
        drop(servers);
        runtime.remove_pod(&name, &id);
        world
            .expect_unpublished()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    world.expect_no_rules("after ten rounds");
}

/// Echo servers answering `tag` on the pod's container ports, inside the
/// pod's network namespace (the runtime made it).
pub fn serve(pod: &Netns, tag: &str) -> (EchoServer, EchoServer) {
    (
        EchoServer::start(pod, tag, TCP.1).expect("tcp echo in the pod"),
        EchoServer::start(pod, tag, UDP.1).expect("udp echo in the pod"),
    )
}

impl Drop for World {
    fn drop(&mut self) {
        // Only what a runtime made and left (podman: netns-<uuid>,
        // containerd: cni-<uuid>): other tests' namespaces come and go
        // meanwhile, on this machine too.
        let ours = [self.topo.host.name(), self.client.name()];
        let by_a_runtime = |n: &str| n.starts_with("netns-") || n.starts_with("cni-");
        for name in netns_names().difference(&self.netns_before) {
            if !ours.contains(&name.as_str()) && by_a_runtime(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
