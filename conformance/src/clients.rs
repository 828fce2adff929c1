//! The runtimes that call portmap, and what each of them sends: the
//! fixtures in `fixtures/clients/` (containerd's captured, the others
//! written from the clients' own structs; see the README there) plus how
//! each invokes the plugin (`CNI_ARGS`, inherited `CAP_ARGS`, the
//! interface, how many DELs and with which namespace). A portmap that decodes only the keys we
//! write ourselves fails these cells.

use serde_json::{json, Value};

/// What every fixture publishes: TCP 18080→80 and UDP 15353→5353.
pub const TCP: (u16, u16) = (18080, 80);
pub const UDP: (u16, u16) = (15353, 5353);
/// The pod's own hostPort (its spec's `ports`), which Multus hands to the
/// pod's first network (`eth0`) and, on DEL, to every delegate.
pub const MULTUS_POD_TCP: (u16, u16) = (28080, 80);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// containerd 1.6 (CRI) and nerdctl: go-cni, capitalised mapping keys.
    Containerd,
    /// CRI-O: ocicni, lowercase keys with `hostIP: ""`.
    Crio,
    /// podman 4 with the CNI network backend: cniVersion 0.4.0.
    Podman,
    /// cnitool / libcni with `CAP_ARGS`.
    Cnitool,
    /// Multus (thin plugin, under containerd) calling a delegate network's
    /// chain for the pod's second interface, `net1`.
    Multus,
}

/// A DEL as the client sends it.
pub struct Del {
    pub config: Value,
    /// `CNI_NETNS` set (false: empty, the sandbox is gone).
    pub with_netns: bool,
}

impl Client {
    pub const ALL: [Client; 5] = [
        Client::Containerd,
        Client::Crio,
        Client::Podman,
        Client::Cnitool,
        Client::Multus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Client::Containerd => "containerd",
            Client::Crio => "cri-o",
            Client::Podman => "podman",
            Client::Cnitool => "cnitool",
            Client::Multus => "multus",
        }
    }

    /// `CNI_IFNAME` of the client's call: Multus names a delegate's
    /// interface by its place in the pod's list of networks.
    pub fn ifname(self) -> &'static str {
        match self {
            Client::Multus => "net1",
            _ => crate::topology::IFNAME,
        }
    }

    /// The captured or source-derived ADD stdin.
    pub fn add_fixture(self) -> &'static str {
        match self {
            Client::Containerd => {
                include_str!("../fixtures/clients/containerd-1.6.20-ADD.stdin.json")
            }
            Client::Crio => include_str!("../fixtures/clients/crio-1.28-ADD.stdin.json"),
            Client::Podman => include_str!("../fixtures/clients/podman-4.3-ADD.stdin.json"),
            Client::Cnitool => include_str!("../fixtures/clients/cnitool-1.1-ADD.stdin.json"),
            Client::Multus => include_str!("../fixtures/clients/multus-4-net1-ADD.stdin.json"),
        }
    }

    fn del_fixture(self) -> Option<&'static str> {
        match self {
            Client::Containerd => Some(include_str!(
                "../fixtures/clients/containerd-1.6.20-DEL.stdin.json"
            )),
            Client::Multus => Some(include_str!(
                "../fixtures/clients/multus-4-net1-DEL.stdin.json"
            )),
            _ => None,
        }
    }

    /// Whether the client ever sends CHECK (containerd, CRI-O and podman
    /// do not).
    pub fn sends_check(self) -> bool {
        self == Client::Cnitool
    }

    /// The variables the client adds to the `CNI_*` ones for `container_id`.
    pub fn env(self, container_id: &str) -> Vec<(&'static str, String)> {
        let pod = format!("pod-{container_id}");
        let uid = "6f2c5b4e-1d3a-4c8e-9b7f-0a1b2c3d4e5f";
        match self {
            Client::Containerd => vec![(
                "CNI_ARGS",
                format!("K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid};IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )],
            Client::Crio => vec![(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"),
            )],
            Client::Podman => vec![(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={pod};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id}"),
            )],
            Client::Cnitool => {
                let fixture = parse(self.add_fixture());
                vec![("CAP_ARGS", fixture["runtimeConfig"].to_string())]
            }
            // Multus's own five arguments, then containerd's CNI_ARGS (its
            // environment) appended key by key: a key already set to a
            // non-empty value is appended again, not replaced.
            Client::Multus => vec![(
                "CNI_ARGS",
                format!("IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid};\
                         K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid};IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )],
        }
    }

    /// The ADD (and CHECK) stdin: the fixture with `prev` (a 1.0-shaped
    /// result of the cell's container) in the fixture's version, and the
    /// cell's `backend` key if any.
    pub fn add_config(self, prev: &Value, backend: Option<&str>) -> Value {
        let mut cfg = parse(self.add_fixture());
        let version = cfg["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
        cfg["prevResult"] = crate::cni::result_in_version(prev, &version);
        with_backend(cfg, backend)
    }

    /// The DELs the client sends after `add` (the ADD config). Multus
    /// sends one, with the DEL file's config: no prevResult (libcni caches
    /// none below 0.4.0) and the pod's own mappings, since the delegate's
    /// requested ones are not in Multus's cache.
    pub fn dels(self, add: &Value, backend: Option<&str>) -> Vec<Del> {
        match self.del_fixture() {
            Some(text) if self == Client::Multus => vec![Del {
                config: with_backend(parse(text), backend),
                with_netns: true,
            }],
            Some(text) => {
                let config = with_backend(parse(text), backend);
                vec![
                    Del {
                        config: config.clone(),
                        with_netns: true,
                    },
                    Del {
                        config,
                        with_netns: false,
                    },
                ]
            }
            None => vec![Del {
                config: add.clone(),
                with_netns: true,
            }],
        }
    }
}

fn parse(text: &str) -> Value {
    // The fixtures are part of this crate; a unit test parses each one.
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn with_backend(mut cfg: Value, backend: Option<&str>) -> Value {
    if let Some(b) = backend {
        cfg["backend"] = json!(b);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_parse_and_publish_the_same_ports() {
        for client in Client::ALL {
            let cfg: Value = serde_json::from_str(client.add_fixture()).expect("fixture JSON");
            let maps = cfg["runtimeConfig"]["portMappings"]
                .as_array()
                .expect("mappings");
            let port = |m: &Value, lower: &str| {
                let upper = format!("{}{}", lower[..1].to_uppercase(), &lower[1..]);
                m.get(lower).or_else(|| m.get(&upper)).cloned()
            };
            assert_eq!(port(&maps[0], "hostPort"), Some(json!(TCP.0)), "{client:?}");
            assert_eq!(port(&maps[0], "containerPort"), Some(json!(TCP.1)));
            assert_eq!(port(&maps[1], "hostPort"), Some(json!(UDP.0)), "{client:?}");
            assert_eq!(port(&maps[1], "protocol"), Some(json!("udp")));
            assert_eq!(cfg["capabilities"], json!({"portMappings": true}));
        }
        assert!(Client::Containerd.del_fixture().is_some());
    }

    #[test]
    fn multus_calls_net1_with_its_own_name_and_deletes_with_the_pods_ports() {
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.87.0.20/24"}]});
        let add = Client::Multus.add_config(&prev, Some("nftables"));
        assert_eq!(Client::Multus.ifname(), "net1");
        assert_eq!(add["name"], "web-net");
        assert_eq!(add["prevResult"]["ips"][0]["version"], "4");
        let dels = Client::Multus.dels(&add, None);
        assert_eq!(dels.len(), 1);
        assert!(dels[0].with_netns);
        assert!(dels[0].config.get("prevResult").is_none());
        assert_eq!(dels[0].config["name"], "web-net");
        assert_eq!(
            dels[0].config["runtimeConfig"]["portMappings"][0]["hostPort"],
            json!(MULTUS_POD_TCP.0)
        );
        let args = &Client::Multus.env("c1")[0].1;
        assert!(args.starts_with("IgnoreUnknown=true;K8S_POD_NAMESPACE=default;"));
        assert_eq!(args.matches("K8S_POD_INFRA_CONTAINER_ID=c1").count(), 2);
        assert!(!args.contains(' '));
    }

    #[test]
    fn containerd_sends_capitalised_keys_and_two_dels() {
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.5/24"}]});
        let add = Client::Containerd.add_config(&prev, Some("nftables"));
        let first = &add["runtimeConfig"]["portMappings"][0];
        assert_eq!(first["HostPort"], json!(18080));
        assert!(first.get("hostPort").is_none());
        assert_eq!(add["prevResult"]["ips"][0]["address"], "10.88.0.5/24");
        assert_eq!(add["backend"], "nftables");
        let dels = Client::Containerd.dels(&add, Some("nftables"));
        assert_eq!(
            dels.iter().map(|d| d.with_netns).collect::<Vec<_>>(),
            [true, false]
        );
        assert!(dels[0].config.get("prevResult").is_none());
    }

    #[test]
    fn podman_prev_result_gets_the_0_4_0_shape() {
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}]});
        let add = Client::Podman.add_config(&prev, None);
        assert_eq!(add["prevResult"]["cniVersion"], "0.4.0");
        assert_eq!(add["prevResult"]["ips"][0]["version"], "6");
        assert!(add.get("backend").is_none());
    }

    #[test]
    fn cnitool_passes_cap_args_and_others_cni_args() {
        let env = Client::Cnitool.env("c1");
        assert_eq!(env[0].0, "CAP_ARGS");
        let cap: Value = serde_json::from_str(&env[0].1).expect("CAP_ARGS JSON");
        assert_eq!(cap["portMappings"][0]["hostPort"], json!(18080));
        for client in [
            Client::Containerd,
            Client::Crio,
            Client::Podman,
            Client::Multus,
        ] {
            let env = client.env("c1");
            assert_eq!(env[0].0, "CNI_ARGS");
            assert!(env[0].1.contains("K8S_POD_INFRA_CONTAINER_ID=c1"));
        }
    }
}
