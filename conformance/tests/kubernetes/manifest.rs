//! contrib/kubernetes read as the kubelet would (YAML through the tools
//! venv's PyYAML, which kubernetes-validate brings), its containers turned
//! into `docker run` arguments, the Docker client, scratch directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{image_missing, unavailable};

/// The image scripts/build-test-images.sh tags.
pub fn image() -> String {
    format!("portmap-rs/portmap:{}", env!("CARGO_PKG_VERSION"))
}

pub fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/kubernetes")
}

/// Every manifest in contrib/kubernetes.
pub fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(contrib())
        .expect("contrib/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The tools venv's `bin/NAME` (scripts/paths.sh's PORTMAP_TOOLS_VENV).
pub fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("PORTMAP_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/portmap-tools/venv"));
    venv.join("bin").join(name)
}

/// Whether `path` exists; a failure under CI.
pub fn have(path: &Path, why: &str) -> bool {
    if path.exists() {
        return true;
    }
    unavailable(&format!("{} missing ({why})", path.display()));
    false
}

/// Every document of `file`, as JSON.
pub fn load(file: &Path) -> Vec<Value> {
    let out = Command::new(venv_tool("python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .expect("venv python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

/// The DaemonSet of contrib/kubernetes's manifests.
pub fn daemonset() -> Value {
    manifests()
        .iter()
        .flat_map(|f| load(f))
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in contrib/kubernetes")
}

/// The pod spec's (init)container called `name`.
pub fn container(ds: &Value, name: &str) -> Value {
    let spec = &ds["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// `docker run` arguments for `name` as the kubelet would run it: its
/// capabilities, read-only root, no privilege escalation, and its volume
/// mounts with each hostPath passed through `host` (the test's stand-ins
/// for node state it must not touch); then the image and its args.
/// Host networking is the caller's (`--network`): never the test host's.
pub fn docker_args(ds: &Value, name: &str, host: &dyn Fn(&str) -> String) -> Vec<String> {
    let c = container(ds, name);
    let sc = &c["securityContext"];
    let mut args: Vec<String> = Vec::new();
    if sc["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        args.push(format!("--cap-drop={}", cap.as_str().expect("cap")));
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        args.push(format!("--cap-add={}", cap.as_str().expect("cap")));
    }
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        let path = v["hostPath"]["path"]
            .as_str()
            .expect("hostPath volumes only");
        let mut opts = vec![if m["readOnly"] == true { "ro" } else { "rw" }];
        match m["mountPropagation"].as_str() {
            None | Some("None") => {}
            Some("HostToContainer") => opts.push("rslave"),
            Some(other) => panic!("mountPropagation {other} in a test of the manifest"),
        }
        let mount = m["mountPath"].as_str().expect("mountPath");
        args.extend([
            "-v".into(),
            format!("{}:{mount}:{}", host(path), opts.join(",")),
        ]);
    }
    args.push(c["image"].as_str().expect("image").into());
    for a in c["args"].as_array().into_iter().flatten() {
        args.push(a.as_str().expect("arg").into());
    }
    args
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker client")
}

/// Whether the engine answers and has the image; a failure under CI.
pub fn image_available() -> bool {
    let image = image();
    let Some(why) = image_missing(&image) else {
        return true;
    };
    unavailable(&format!(
        "image {image} unavailable ({why}); start an engine with \
         `eval \"$(scripts/docker-engine.sh start)\"`, run scripts/release.sh and \
         scripts/build-test-images.sh"
    ));
    false
}

/// A container of ours, removed on drop (also when a test panics).
pub struct Named(pub String);

impl Drop for Named {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// A scratch directory of the test's, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pmk8s-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
