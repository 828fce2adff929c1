//! What a scenario is ([`Scenario`]) and the context every scenario runs
//! in ([`Ctx`]): its own namespaces, its own tool PATH, the plugin under
//! test as a black box; with the helpers scenario bodies share.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cni::{invoke_isolated, result_in_version, Call, Outcome};
use crate::matrix::{Axis, CellSpec};
use crate::netns::Netns;
use crate::toolpath::{IptablesVariant, ToolDir, Tools};
use crate::topology::{Container, Interface, Network, Topology, IFNAME};
use crate::traffic::{tcp_ask, Answer};

/// Where a cell's rules are expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    Nftables,
    Iptables(IptablesVariant),
}

impl Firewall {
    /// The axis's backend; for auto, what the selection rules pick with
    /// the cell's tools: nftables when its `nft` completes a (checked,
    /// never applied) transaction in the host namespace, else the variant
    /// plain `iptables` is (`offered`: what the tool directory was made with).
    fn expected(axis: Axis, offered: Tools, tools: &ToolDir, host: &Netns) -> Firewall {
        match axis {
            Axis::Nftables | Axis::NftablesMaps => Firewall::Nftables,
            Axis::IptablesNft | Axis::IptablesNftTree => Firewall::Iptables(IptablesVariant::Nft),
            Axis::IptablesLegacy => Firewall::Iptables(IptablesVariant::Legacy),
            Axis::Auto => {
                let nft = tools.path().join("nft");
                let probe = ["-c", "add", "table", "ip", "cni_hostport_probe"];
                if host.exec(&nft.to_string_lossy(), &probe).is_ok() {
                    Firewall::Nftables
                } else {
                    Firewall::Iptables(offered.iptables.unwrap_or(IptablesVariant::Nft))
                }
            }
        }
    }

    /// The suffix of the iptables tools (`iptables-<suffix>-save`) that
    /// show this cell's rules; nftables cells read iptables-nft's view.
    pub fn iptables_suffix(self) -> &'static str {
        match self {
            Firewall::Nftables => IptablesVariant::Nft.as_str(),
            Firewall::Iptables(v) => v.as_str(),
        }
    }
}

pub type Body = fn(&Ctx) -> Result<(), String>;

pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    /// `Some(reason)` when the scenario does not apply to a cell.
    pub not_applicable: fn(&Ctx) -> Option<String>,
    pub body: Body,
}

pub fn always(_: &Ctx) -> Option<String> {
    None
}

/// One cell's world: a host namespace with a bridge, a tool PATH, and the
/// binaries. Dropped (namespaces and all) when the cell ends.
pub struct Ctx {
    pub plugin: PathBuf,
    /// Whose cell this is: `matrix::OURS` or `matrix::REFERENCE`.
    pub binary: String,
    pub reference: Option<PathBuf>,
    /// The CNI version every binary of the run speaks (negotiated).
    pub cni_version: String,
    pub axis: Axis,
    /// Where this cell's rules should be.
    pub firewall: Firewall,
    pub tools: ToolDir,
    pub topo: Topology,
}

pub const NET: &str = "conformance";
/// The second network's name (the topology's [`Network::Secondary`]).
///
/// [`Network::Secondary`]: crate::topology::Network::Secondary
pub const NET_B: &str = "conformance-b";
const OK_WAIT: Duration = Duration::from_secs(3);
const FAIL_WAIT: Duration = Duration::from_millis(700);

impl Ctx {
    pub fn new(spec: &CellSpec<'_>, axis: Axis) -> Result<Ctx, String> {
        let offered = axis.tools();
        let tools = ToolDir::new(offered).map_err(|e| format!("tool dir: {e}"))?;
        let topo = Topology::speaking(spec.setup, spec.cni_version)
            .map_err(|e| format!("topology: {e}"))?;
        Ok(Ctx {
            plugin: spec.plugin.to_path_buf(),
            binary: spec.binary.to_string(),
            reference: spec.reference.map(Path::to_path_buf),
            cni_version: spec.cni_version.to_string(),
            axis,
            firewall: Firewall::expected(axis, offered, &tools, &topo.host),
            tools,
            topo,
        })
    }

    pub fn host(&self) -> &Netns {
        &self.topo.host
    }

    pub fn container(&self, label: &str, last: u8) -> Result<Container, String> {
        self.topo
            .container(label, last)
            .map_err(|e| format!("container {label}: {e}"))
    }

    /// A container whose only interface, `eth0`, is on `network`.
    pub fn container_on(
        &self,
        label: &str,
        last: u8,
        network: Network,
    ) -> Result<Container, String> {
        self.topo
            .container_on(label, last, network)
            .map_err(|e| format!("container {label}: {e}"))
    }

    /// A further interface `ifname` of `c` on `network`.
    pub fn attach(
        &self,
        c: &Container,
        network: Network,
        ifname: &str,
        last: u8,
    ) -> Result<Interface, String> {
        self.topo
            .attach(c, network, ifname, last)
            .map_err(|e| format!("interface {ifname} of {}: {e}", c.ns.name()))
    }

    /// A config for this cell's backend with the given mappings and extra
    /// keys, in the run's CNI version (prevResult in that version's shape).
    pub fn config(&self, prev: Value, mappings: Value, extra: Value) -> Value {
        self.config_named(NET, prev, mappings, extra)
    }

    /// [`Ctx::config`] of the network called `name`.
    pub fn config_named(&self, name: &str, prev: Value, mappings: Value, extra: Value) -> Value {
        let mut cfg = self.axis.keyed(json!({
            "cniVersion": self.cni_version, "name": name, "type": "portmap",
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": result_in_version(&prev, &self.cni_version)
        }));
        if let (Some(o), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        cfg
    }

    pub fn run_with(
        &self,
        plugin: &Path,
        command: &str,
        id: &str,
        netns: String,
        cfg: &Value,
    ) -> Result<Outcome, String> {
        let call = Call {
            command,
            container_id: id,
            netns,
            ifname: IFNAME,
            path: self.tools.path(),
            config: cfg,
            env: Vec::new(),
        };
        invoke_isolated(plugin, self.host(), &call)
            .map_err(|e| format!("could not run {}: {e}", plugin.display()))
    }

    /// Runs the plugin under test and requires success.
    pub fn ok(
        &self,
        command: &str,
        id: &str,
        c: Option<&Container>,
        cfg: &Value,
    ) -> Result<Outcome, String> {
        self.ok_with(&self.plugin, command, id, c, cfg)
    }

    pub fn ok_with(
        &self,
        plugin: &Path,
        command: &str,
        id: &str,
        c: Option<&Container>,
        cfg: &Value,
    ) -> Result<Outcome, String> {
        self.ok_call(plugin, &Call::new(command, id, c, self.tools.path(), cfg))
    }

    /// Runs the plugin under test on interface `ifname` (an attachment
    /// other than `eth0`) and requires success.
    pub fn ok_at(
        &self,
        command: &str,
        id: &str,
        ifname: &str,
        c: Option<&Container>,
        cfg: &Value,
    ) -> Result<Outcome, String> {
        let mut call = Call::new(command, id, c, self.tools.path(), cfg);
        call.ifname = ifname;
        self.ok_call(&self.plugin, &call)
    }

    /// A GC config (CNI 1.1.0) of network `name` in this cell's backend,
    /// keeping the `(containerID, ifname)` attachments of `valid`.
    pub fn gc_config(&self, name: &str, valid: &[(&str, &str)]) -> Value {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        let mut cfg = json!({"cniVersion": "1.1.0", "name": name, "type": "portmap",
                             "cni.dev/valid-attachments": valid});
        if let Some(b) = self.axis.backend_key() {
            cfg["backend"] = json!(b);
        }
        cfg
    }

    /// The lines of the firewall dump (the localnet guard left out: it
    /// outlives containers) that name any of `needles` (container IDs,
    /// addresses) as a whole word: `10.88.0.5` is not found in `10.88.0.50`.
    pub fn rules_naming(&self, needles: &[&str]) -> Vec<String> {
        crate::firewall::without_guard(&self.ruleset())
            .lines()
            .filter(|l| needles.iter().any(|n| names(l, n)))
            .map(str::to_string)
            .collect()
    }

    /// Runs `plugin` as `call` says and requires success. A successful ADD
    /// with mappings must show in the firewall dump (the container ID in a
    /// comment, or a container chain): otherwise the harness cannot see
    /// this backend's rules, and every "unchanged" comparison after it
    /// would pass without checking anything.
    pub fn ok_call(&self, plugin: &Path, call: &Call<'_>) -> Result<Outcome, String> {
        let out = invoke_isolated(plugin, self.host(), call)
            .map_err(|e| format!("could not run {}: {e}", plugin.display()))?;
        if out.ok() {
            if call.command == "ADD" && has_mappings(call.config) {
                let rules = self.ruleset();
                if !rules.contains(call.container_id) && !rules.contains("CNI-DN-") {
                    return Err(format!(
                        "ADD {} succeeded but the firewall dump shows no rule of it: the harness \
                         cannot read this backend's rules (nft, iptables-nft-save or \
                         iptables-legacy-save missing?)",
                        call.container_id
                    ));
                }
            }
            Ok(out)
        } else {
            Err(format!(
                "{} {} failed: {}",
                call.command,
                call.container_id,
                one_line(&out.stdout, &out.stderr)
            ))
        }
    }

    pub fn ask(
        &self,
        from: &Netns,
        ip: IpAddr,
        port: u16,
        wait: Duration,
    ) -> Result<Option<Answer>, String> {
        tcp_ask(from, SocketAddr::new(ip, port), wait).map_err(|e| e.to_string())
    }

    pub fn expect_answer(
        &self,
        from: &Netns,
        ip: IpAddr,
        port: u16,
        tag: &str,
    ) -> Result<Answer, String> {
        match self.ask(from, ip, port, OK_WAIT)? {
            Some(a) if a.tag == tag => Ok(a),
            Some(a) => Err(format!(
                "tcp {}: answered by {}, expected {tag}",
                SocketAddr::new(ip, port),
                a.tag
            )),
            None => Err(format!(
                "tcp {}: no answer, expected {tag}",
                SocketAddr::new(ip, port)
            )),
        }
    }

    pub fn expect_silence(&self, from: &Netns, ip: IpAddr, port: u16) -> Result<(), String> {
        match self.ask(from, ip, port, FAIL_WAIT)? {
            None => Ok(()),
            Some(a) => Err(format!(
                "tcp {}: answered by {}, expected nothing",
                SocketAddr::new(ip, port),
                a.tag
            )),
        }
    }

    /// Every firewall's view of the host namespace (for rule-level checks
    /// and failure reports).
    pub fn ruleset(&self) -> String {
        crate::firewall::dump(self.host())
    }
}

/// Whether a config asks for any mapping (keys as any client spells them).
fn has_mappings(cfg: &Value) -> bool {
    let Some(runtime) = cfg.as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("runtimeConfig"))
            .map(|(_, v)| v)
    }) else {
        return false;
    };
    runtime.as_object().is_some_and(|r| {
        r.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("portMappings") && v.as_array().is_some_and(|a| !a.is_empty())
        })
    })
}

/// Whether `line` contains `word` not as part of a longer name or number
/// (`10.88.0.5` is not in `10.88.0.50`, `ctr-1` not in `ctr-10`).
fn names(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

fn one_line(stdout: &str, stderr: &str) -> String {
    let s = format!("{} {}", stdout.trim(), stderr.trim());
    s.trim().replace('\n', " ")
}

/// `[{hostPort, containerPort: 80, protocol}]` for the given ports.
pub fn maps(proto: &str, ports: impl IntoIterator<Item = u16>) -> Value {
    Value::Array(
        ports
            .into_iter()
            .map(|p| json!({"hostPort": p, "containerPort": 80, "protocol": proto}))
            .collect(),
    )
}

pub fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_finds_whole_words_only() {
        use super::names;
        assert!(names("ip daddr 10.88.0.5 dnat", "10.88.0.5"));
        assert!(names("dnat to 10.88.0.5:80", "10.88.0.5"));
        assert!(names("-s 10.88.0.5/32 -j MASQ", "10.88.0.5"));
        assert!(!names("dnat to 10.88.0.50:80", "10.88.0.5"));
        assert!(!names("dnat to 110.88.0.5:80", "10.88.0.5"));
        assert!(names(r#"comment "ctr-1""#, "ctr-1"));
        assert!(!names(r#"comment "ctr-10""#, "ctr-1"));
    }
}
