//! containerd's CRI plugin (Debian's containerd 1.6), driven over its own
//! socket by a Rust CRI client as the kubelet drives it: RunPodSandbox
//! with hostPorts, PodSandboxStatus for the pod's network namespace,
//! StopPodSandbox, RemovePodSandbox. Its root, state, sockets and CNI
//! directories live under the test's scratch dir; it runs in the test's
//! runtime namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use portmap_conformance::netns::Netns;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use super::world::{Runtime, World, TCP, UDP};

const IMAGE: &str = "localhost/portmap-test/busybox:1";
const START_LIMIT: Duration = Duration::from_secs(30);

pub struct Containerd<'w> {
    world: &'w World,
    daemon: Child,
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl<'w> Containerd<'w> {
    /// Configures and starts containerd, imports the busybox image (also
    /// the sandbox image: its entrypoint sleeps) and connects.
    pub fn start(world: &'w World, backend: Option<&str>) -> Containerd<'w> {
        let dir = &world.dir;
        let net_d = world.write_net_d("crinet", "1.0.0", backend, "10-crinet.conflist");
        let bin = world.plugin_dir();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(dir, &socket, &bin, &net_d)).expect("config.toml");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let daemon = world
            .topo
            .host
            .command("containerd")
            .env("PORTMAP_STATE_DIR", dir.join("portmap-state"))
            .env("PORTMAP_LOCK", dir.join("portmap.lock"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let deadline = Instant::now() + START_LIMIT;
        let client = loop {
            match rt.block_on(connect(&socket)) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!(
                    "containerd did not answer on {} within {START_LIMIT:?}: {e}\n{}",
                    socket.display(),
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let c = Containerd {
            world,
            daemon,
            socket,
            rt,
            client,
        };
        let image = docker_archive(world);
        c.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            &image.display().to_string(),
        ]);
        c
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(out.status.success(), "ctr {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.world.dir.join("containerd.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Runtime for Containerd<'_> {
    /// RunPodSandbox publishing TCP and UDP; the pod's ID and namespace.
    fn run_pod(&mut self, name: &str) -> (String, Netns) {
        let mapping = |protocol: Protocol, (host, container): (u16, u16)| PortMapping {
            protocol: protocol as i32,
            container_port: i32::from(container),
            host_port: i32::from(host),
            host_ip: String::new(),
        };
        let logs = self.world.dir.join("logs").join(name);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: logs.display().to_string(),
            port_mappings: vec![mapping(Protocol::Tcp, TCP), mapping(Protocol::Udp, UDP)],
            ..Default::default()
        };
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let id = self
            .rt
            .block_on(self.client.run_pod_sandbox(request))
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", self.log()))
            .into_inner()
            .pod_sandbox_id;
        let status = self
            .rt
            .block_on(self.client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            }))
            .expect("PodSandboxStatus")
            .into_inner();
        let info: Value = serde_json::from_str(status.info.get("info").map_or("{}", |s| s))
            .expect("verbose info JSON");
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace in {info}"))
            .to_string();
        (id, Netns::open(Path::new(&netns)).expect("pod netns"))
    }

    /// StopPodSandbox (CNI DEL with the namespace), RemovePodSandbox
    /// (DEL again, without it).
    fn remove_pod(&mut self, _name: &str, id: &str) {
        let pod_sandbox_id = id.to_string();
        self.rt
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_sandbox_id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.log()));
        self.rt
            .block_on(
                self.client
                    .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id }),
            )
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.log()));
    }
}

async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

fn config_toml(dir: &Path, socket: &Path, bin: &Path, net_d: &Path) -> String {
    // restrict_oom_score_adj: the pause container asks for -998, which needs
    // CAP_SYS_RESOURCE that some hosts' root lacks; clamp to ours instead.
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{socket}.debug"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{net_d}"
    max_conf_num = 1
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        bin = bin.display(),
        net_d = net_d.display(),
    )
}

/// A docker-archive (what `docker save` writes, what `ctr images import`
/// reads) of the busybox root filesystem, entrypoint `sleep`.
fn docker_archive(world: &World) -> PathBuf {
    let layer = std::fs::read(world.rootfs_tar()).expect("rootfs tar");
    let layer_id = hex(&Sha256::digest(&layer));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "600"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_id}")]}
    })
    .to_string();
    let config_name = format!("{}.json", hex(&Sha256::digest(config.as_bytes())));
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [IMAGE], "Layers": [format!("{layer_id}/layer.tar")]
    }]);
    let image = world.dir.join("image");
    std::fs::create_dir_all(image.join(&layer_id)).expect("image dir");
    std::fs::write(image.join(&layer_id).join("layer.tar"), layer).expect("layer");
    std::fs::write(image.join(&config_name), config).expect("config");
    std::fs::write(image.join("manifest.json"), manifest.to_string()).expect("manifest");
    world.tar(&image, "image.tar")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Drop for Containerd<'_> {
    /// Removes every pod left by a failed test, then stops the daemon.
    fn drop(&mut self) {
        if let Ok(pods) = self.rt.block_on(
            self.client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        ) {
            for pod in pods.into_inner().items {
                let _ = self
                    .rt
                    .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: pod.id.clone(),
                    }));
                let _ = self
                    .rt
                    .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: pod.id,
                    }));
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
