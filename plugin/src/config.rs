//! The portmap network configuration: parsing with upstream's defaults and
//! error texts, plus the stricter checks upstream lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Map, Value};

use portmap_backends::select::Choice;
use portmap_backends::{
    ContainerKey, IptablesLayout, Layout, MasqMark, PortMapping, Protocol, Request,
};

use crate::cni::result::{self, container_addrs};
use crate::cni::{self, CniError, Code, Env};
use crate::gojson::{self, GoValue};

/// upstream's `PortMapConf` (with libcni's `types.NetConf`), decoded by
/// [`gojson`] as Go's `encoding/json` decodes it.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    snat: Option<bool>,
    #[serde(rename = "masqAll", default)]
    masq_all: Option<bool>,
    #[serde(rename = "markMasqBit", default)]
    mark_masq_bit: Option<i64>,
    #[serde(rename = "externalSetMarkChain", default)]
    external_set_mark_chain: Option<String>,
    #[serde(rename = "nftablesLayout", default)]
    nftables_layout: Option<String>,
    #[serde(rename = "iptablesLayout", default)]
    iptables_layout: Option<String>,
    #[serde(rename = "conditionsV4", default)]
    conditions_v4: Option<Vec<String>>,
    #[serde(rename = "conditionsV6", default)]
    conditions_v6: Option<Vec<String>>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
    /// GC's list of containers to keep, as libcni sends it.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<RawAttachment>>,
    /// The same list under the name CNI 1.1.0's spec text gives it (an
    /// erratum). libcni sends both keys since v1.2.3, only the first in
    /// v1.2.0-v1.2.2; a runtime written from the spec sends this one.
    #[serde(rename = "cni.dev/attachments", default)]
    attachments: Option<Vec<RawAttachment>>,
    // NetConf fields we do not use, decoded for their types alone: Go
    // refuses the whole config when one of them has the wrong type.
    #[serde(rename = "type", default)]
    _type: Option<String>,
    #[serde(rename = "capabilities", default)]
    _capabilities: Option<BTreeMap<String, bool>>,
    #[serde(rename = "ipam", default)]
    _ipam: Option<RawIpam>,
    #[serde(rename = "dns", default)]
    _dns: Option<RawDns>,
}

#[derive(Debug, Deserialize, Default)]
struct RawRuntimeConfig {
    #[serde(rename = "portMappings", default)]
    port_mappings: Option<Vec<RawMapping>>,
}

/// Missing ports are Go's zero value, refused by validation with
/// upstream's text (`Invalid host port number: 0`).
#[derive(Debug, Deserialize)]
struct RawMapping {
    #[serde(rename = "hostPort", default)]
    host_port: i64,
    #[serde(rename = "containerPort", default)]
    container_port: i64,
    /// Kubernetes and the runtimes default a missing protocol to tcp.
    #[serde(default)]
    protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    host_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID", default)]
    container_id: String,
    #[serde(rename = "ifname", default)]
    _ifname: String,
}

#[derive(Debug, Deserialize)]
struct RawIpam {
    #[serde(rename = "type", default)]
    _type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawDns {
    #[serde(rename = "nameservers", default)]
    _nameservers: Option<Vec<String>>,
    #[serde(rename = "domain", default)]
    _domain: Option<String>,
    #[serde(rename = "search", default)]
    _search: Option<Vec<String>>,
    #[serde(rename = "options", default)]
    _options: Option<Vec<String>>,
}

/// libcni's version decoder: `cniVersion` alone, read before the rest.
#[derive(Debug, Deserialize)]
struct RawVersion {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<Value>,
}

/// What DEL needs: the network name (with the container ID, the key of
/// every rule we made).
#[derive(Debug, Deserialize)]
struct RawName {
    #[serde(default)]
    name: String,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cni_version: String,
    pub name: String,
    pub backend: Option<Choice>,
    /// markMasqBit or externalSetMarkChain given: only iptables honours them.
    pub iptables_specific: bool,
    pub snat: bool,
    pub masq_all: bool,
    pub mark: MasqMark,
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    /// `nftablesLayout` (ours): `rules` (default, upstream's) or `maps`.
    pub layout: Layout,
    /// `iptablesLayout` (ours): `rules` (default, upstream's) or `tree`.
    pub iptables_layout: IptablesLayout,
    pub mappings: Vec<PortMapping>,
    /// Normalised to the 1.0 shape.
    pub prev_result: Option<Map<String, Value>>,
    /// GC: the container IDs to keep, from `cni.dev/valid-attachments` and
    /// `cni.dev/attachments` together; `None` when the config has neither
    /// key (or only `null`s), which GC takes as "remove nothing". An empty
    /// list is a list: every container of the network goes.
    pub valid_attachments: Option<BTreeSet<String>>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

/// The config's `cniVersion`, read before anything else so errors about the
/// rest can still be reported in the caller's version.
pub fn peek_version(stdin: &[u8]) -> String {
    gojson::from_slice::<RawVersion>(stdin)
        .ok()
        .and_then(|v| v.cni_version?.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn decode_error(e: gojson::Error) -> CniError {
    CniError::new(
        Code::DecodeFailure,
        format!("failed to parse network configuration: {e}"),
    )
}

/// The document, decoded as Go would, and its checked `cniVersion`.
fn decode(stdin: &[u8]) -> Result<(GoValue, String), CniError> {
    let doc: GoValue = gojson::from_slice(stdin).map_err(decode_error)?;
    let version = gojson::decode::<RawVersion>(doc.clone())
        .map_err(decode_error)?
        .cni_version;
    // Absent (or null) means 0.1.0 per the spec; another type is an error,
    // not a silent downgrade to the oldest version.
    let version = match &version {
        None => "",
        Some(Value::String(v)) => v.as_str(),
        Some(other) => {
            return Err(CniError::new(
                Code::DecodeFailure,
                "decoding version from network config".to_string(),
            )
            .with_details(format!("cniVersion must be a string, not {other}")))
        }
    };
    let cni_version = cni::check_version(version)?.to_string();
    Ok((doc, cni_version))
}

/// The container DEL removes, from a config decoded no further than that:
/// a DEL must not fail (and wedge the container in its runtime) over
/// mappings, options or a prevResult that ADD would have refused.
#[derive(Debug, Clone, PartialEq)]
pub struct DelConfig {
    pub cni_version: String,
    pub name: String,
}

impl DelConfig {
    pub fn key(&self, env: &Env) -> ContainerKey {
        container_key(&self.name, env)
    }
}

/// What every rule we make is keyed on: network name and container ID.
fn container_key(network: &str, env: &Env) -> ContainerKey {
    ContainerKey {
        network: network.to_string(),
        container_id: env.container_id.clone(),
    }
}

pub fn parse_del(stdin: &[u8]) -> Result<DelConfig, CniError> {
    let (doc, cni_version) = decode(stdin)?;
    let name = gojson::decode::<RawName>(doc).map_err(decode_error)?.name;
    Ok(DelConfig { cni_version, name })
}

pub fn parse(stdin: &[u8]) -> Result<Config, CniError> {
    let (doc, cni_version) = decode(stdin)?;
    let raw: RawConfig = gojson::decode(doc).map_err(decode_error)?;

    if !cni::valid_network_name(&raw.name) {
        return Err(invalid("invalid characters found in network name")
            .with_details(raw.name.escape_debug().to_string()));
    }
    let backend = match raw.backend.as_deref() {
        None | Some("") => None,
        Some(b) => {
            Some(Choice::parse(b).ok_or_else(|| invalid(format!("unrecognized backend {b:?}")))?)
        }
    };
    let mut iptables_options = Vec::new();
    if raw.external_set_mark_chain.is_some() {
        iptables_options.push("externalSetMarkChain");
    }
    if raw.mark_masq_bit.is_some() {
        iptables_options.push("markMasqBit");
    }
    let mark = match (raw.mark_masq_bit, raw.external_set_mark_chain) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "Cannot specify externalSetMarkChain and markMasqBit",
            ))
        }
        (Some(bit), None) => match u8::try_from(bit) {
            Ok(b) if b <= 31 => MasqMark::Bit(b),
            _ => return Err(invalid("MasqMarkBit must be between 0 and 31")),
        },
        (None, Some(chain)) => {
            if !valid_chain_name(&chain) {
                return Err(invalid(format!("Invalid externalSetMarkChain: {chain:?}")));
            }
            MasqMark::ExternalChain(chain)
        }
        (None, None) => MasqMark::Bit(MasqMark::DEFAULT_BIT),
    };
    if backend == Some(Choice::Nftables) && !iptables_options.is_empty() {
        return Err(invalid(format!(
            "nftables backend was requested but configuration contains iptables-specific options [{}]",
            iptables_options.join(" ")
        )));
    }
    let layout = match raw.nftables_layout.as_deref() {
        None => Layout::default(),
        Some(l) => Layout::parse(l).ok_or_else(|| {
            invalid(format!(
                "unrecognized nftablesLayout {l:?} (expected \"rules\" or \"maps\")"
            ))
        })?,
    };
    let iptables_layout = match raw.iptables_layout.as_deref() {
        None => IptablesLayout::default(),
        Some(l) => IptablesLayout::parse(l).ok_or_else(|| {
            invalid(format!(
                "unrecognized iptablesLayout {l:?} (expected \"rules\" or \"tree\")"
            ))
        })?,
    };
    let conditions_v4 = conditions("conditionsV4", raw.conditions_v4)?;
    let conditions_v6 = conditions("conditionsV6", raw.conditions_v6)?;
    let mappings = raw
        .runtime_config
        .unwrap_or_default()
        .port_mappings
        .unwrap_or_default()
        .into_iter()
        .map(mapping)
        .collect::<Result<Vec<_>, _>>()?;
    let prev_result = match raw.prev_result {
        None | Some(Value::Null) => None,
        Some(prev) => Some(result::normalize(&prev)?),
    };
    // Both keys: the union. libcni sends the same list under both; should
    // they ever differ, keeping a container that should have gone leaves
    // rules a later GC or DEL still removes, while dropping one that runs
    // breaks its ports, and nothing brings them back.
    let valid_attachments = match (raw.valid_attachments, raw.attachments) {
        (None, None) => None,
        (a, b) => Some(
            a.into_iter()
                .flatten()
                .chain(b.into_iter().flatten())
                .map(|a| a.container_id)
                .collect(),
        ),
    };
    Ok(Config {
        cni_version,
        name: raw.name,
        backend,
        iptables_specific: !iptables_options.is_empty(),
        snat: raw.snat.unwrap_or(true),
        masq_all: raw.masq_all.unwrap_or(false),
        mark,
        conditions_v4,
        conditions_v6,
        layout,
        iptables_layout,
        mappings,
        prev_result,
        valid_attachments,
    })
}

fn mapping(raw: RawMapping) -> Result<PortMapping, CniError> {
    let port = |n: i64, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("Invalid {what} port number: {n}")))
    };
    let container_port = port(raw.container_port, "container")?;
    let host_port = port(raw.host_port, "host")?;
    let proto_text = raw.protocol.unwrap_or_else(|| "tcp".to_string());
    let protocol = Protocol::parse(&proto_text)
        .ok_or_else(|| invalid(format!("Invalid protocol: {proto_text:?}")))?;
    let host_ip = match raw.host_ip.as_deref() {
        None | Some("") => None,
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| invalid(format!("Invalid host IP: {ip:?}")))?,
        ),
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    })
}

/// Conditions end up inside iptables-restore lines and nft rules: a quote,
/// newline, `;` or `#` there would change what the batch means.
fn conditions(key: &str, raw: Option<Vec<String>>) -> Result<Vec<String>, CniError> {
    let list = raw.unwrap_or_default();
    for c in &list {
        if c.chars()
            .any(|ch| matches!(ch, '"' | '\'' | ';' | '#' | '\\') || ch.is_control())
        {
            return Err(invalid(format!(
                "Invalid {key} entry {c:?}: quotes, backslashes, newlines, ';' and '#' are not allowed"
            )));
        }
    }
    Ok(list)
}

fn valid_chain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 28
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Config {
    pub fn key(&self, env: &Env) -> ContainerKey {
        container_key(&self.name, env)
    }

    /// The backend request for this container; addresses from prevResult.
    pub fn request(&self, env: &Env) -> Request {
        let (v4, v6) = self
            .prev_result
            .as_ref()
            .map(|p| container_addrs(p, &env.ifname))
            .unwrap_or((None, None));
        Request {
            key: self.key(env),
            v4,
            v6,
            mappings: self.mappings.clone(),
            snat: self.snat,
            masq_all: self.masq_all,
            mark: self.mark.clone(),
            conditions_v4: self.conditions_v4.clone(),
            conditions_v6: self.conditions_v6.clone(),
            layout: self.layout,
            iptables_layout: self.iptables_layout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "net", "type": "portmap",
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
        })
    }

    fn with(patch: Value) -> Vec<u8> {
        let mut v = base();
        if let (Some(o), Some(p)) = (v.as_object_mut(), patch.as_object()) {
            for (k, val) in p {
                o.insert(k.clone(), val.clone());
            }
        }
        serde_json::to_vec(&v).expect("json")
    }

    fn mapping_cfg(m: Value) -> Vec<u8> {
        with(json!({"runtimeConfig": {"portMappings": [m]}}))
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = parse(&with(json!({}))).expect("valid");
        assert!(c.snat);
        assert!(!c.masq_all);
        assert_eq!(c.mark, MasqMark::Bit(13));
        assert_eq!(c.backend, None);
        assert_eq!(c.layout, Layout::Rules);
        assert!(!c.iptables_specific);
        assert_eq!(c.mappings[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn the_maps_layout_reaches_the_request() {
        let c = parse(&with(json!({"nftablesLayout": "maps"}))).expect("valid");
        assert_eq!(c.layout, Layout::Maps);
        let env = Env {
            container_id: "c".into(),
            ..Env::default()
        };
        assert_eq!(c.request(&env).layout, Layout::Maps);
    }

    #[test]
    fn the_tree_layout_reaches_the_request_and_a_typo_is_refused() {
        let c = parse(&with(json!({"iptablesLayout": "tree"}))).expect("valid");
        assert_eq!(c.iptables_layout, IptablesLayout::Tree);
        let env = Env {
            container_id: "c".into(),
            ..Env::default()
        };
        assert_eq!(c.request(&env).iptables_layout, IptablesLayout::Tree);
        assert_eq!(
            parse(&with(json!({}))).expect("valid").iptables_layout,
            IptablesLayout::Rules
        );
        let err = parse(&with(json!({"iptablesLayout": "trie"}))).expect_err("refused");
        assert!(
            format!("{err:?}").contains("unrecognized iptablesLayout"),
            "{err:?}"
        );
    }

    #[rstest]
    #[case::mark_bit_32(json!({"markMasqBit": 32}), "MasqMarkBit must be between 0 and 31")]
    #[case::mark_bit_negative(json!({"markMasqBit": -1}), "MasqMarkBit must be between 0 and 31")]
    #[case::mark_and_external(json!({"markMasqBit": 5, "externalSetMarkChain": "KUBE-MARK-MASQ"}), "Cannot specify externalSetMarkChain and markMasqBit")]
    #[case::unknown_backend(json!({"backend": "pf"}), "unrecognized backend \"pf\"")]
    #[case::nft_with_external_chain(json!({"backend": "nftables", "externalSetMarkChain": "X"}), "nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain]")]
    #[case::condition_with_quote(json!({"conditionsV4": ["-m", "comment", "--comment", "\"x\""]}), "Invalid conditionsV4 entry \"\\\"x\\\"\": quotes, backslashes, newlines, ';' and '#' are not allowed")]
    #[case::condition_with_newline(json!({"conditionsV6": ["-s ::1\n-A X"]}), "Invalid conditionsV6 entry \"-s ::1\\n-A X\": quotes, backslashes, newlines, ';' and '#' are not allowed")]
    #[case::condition_with_semicolon(json!({"conditionsV4": ["ip saddr 1.2.3.4; flush ruleset"]}), "Invalid conditionsV4 entry \"ip saddr 1.2.3.4; flush ruleset\": quotes, backslashes, newlines, ';' and '#' are not allowed")]
    #[case::bad_network_name(json!({"name": "a b"}), "invalid characters found in network name")]
    #[case::bad_external_chain(json!({"externalSetMarkChain": "A B"}), "Invalid externalSetMarkChain: \"A B\"")]
    fn invalid_configs(#[case] patch: Value, #[case] msg: &str) {
        let e = parse(&with(patch)).expect_err("rejected");
        assert_eq!(e.msg, msg);
        assert_eq!(e.code, Code::InvalidConfig);
    }

    #[rstest]
    #[case::host_port_zero(json!({"hostPort": 0, "containerPort": 80}), "Invalid host port number: 0")]
    #[case::host_port_too_big(json!({"hostPort": 70000, "containerPort": 80}), "Invalid host port number: 70000")]
    #[case::container_port_negative(json!({"hostPort": 80, "containerPort": -5}), "Invalid container port number: -5")]
    #[case::protocol_icmp(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}), "Invalid protocol: \"icmp\"")]
    #[case::protocol_empty(json!({"hostPort": 80, "containerPort": 80, "protocol": ""}), "Invalid protocol: \"\"")]
    #[case::host_ip_garbage(json!({"hostPort": 80, "containerPort": 80, "hostIP": "not-an-ip"}), "Invalid host IP: \"not-an-ip\"")]
    fn invalid_mappings(#[case] m: Value, #[case] msg: &str) {
        let e = parse(&mapping_cfg(m)).expect_err("rejected");
        assert_eq!(e.msg, msg);
    }

    #[test]
    fn protocol_is_case_insensitive_and_stored_lowercase() {
        let c = parse(&mapping_cfg(
            json!({"hostPort": 53, "containerPort": 53, "protocol": "UDP"}),
        ))
        .expect("valid");
        assert_eq!(c.mappings[0].protocol, Protocol::Udp);
        assert_eq!(c.mappings[0].protocol.as_str(), "udp");
    }

    #[rstest]
    #[case::not_json(b"{".to_vec(), Code::DecodeFailure, "failed to parse network configuration: ")]
    #[case::wrong_type(br#"{"cniVersion":"1.0.0","name":"n","snat":"yes"}"#.to_vec(), Code::DecodeFailure, "failed to parse network configuration: ")]
    #[case::port_as_string(br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":"80","containerPort":80}]}}"#.to_vec(), Code::DecodeFailure, "failed to parse network configuration: ")]
    #[case::version_not_a_string(br#"{"cniVersion":1,"name":"n"}"#.to_vec(), Code::DecodeFailure, "decoding version from network config")]
    #[case::unsupported_version(br#"{"cniVersion":"9.0.0","name":"n"}"#.to_vec(), Code::IncompatibleVersion, "incompatible CNI versions")]
    #[case::bad_prev_result(br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"x"}]}}"#.to_vec(), Code::DecodeFailure, "could not parse prevResult: ")]
    fn decode_errors(#[case] input: Vec<u8>, #[case] code: Code, #[case] prefix: &str) {
        let e = parse(&input).expect_err("rejected");
        assert_eq!(e.code, code);
        assert!(e.msg.starts_with(prefix), "{}", e.msg);
    }

    #[test]
    fn iptables_options_are_noticed_and_unknown_keys_ignored() {
        let c = parse(&with(json!({"markMasqBit": 5, "somethingNew": [1, 2]}))).expect("valid");
        assert!(c.iptables_specific);
        assert_eq!(c.mark, MasqMark::Bit(5));
    }

    #[test]
    fn request_takes_addresses_from_prev_result() {
        let c = parse(&with(json!({"snat": false, "masqAll": true}))).expect("valid");
        let env = Env {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ..Env::default()
        };
        let r = c.request(&env);
        assert_eq!(r.v4.map(|a| a.addr.to_string()), Some("10.0.0.2".into()));
        assert_eq!(r.v6, None);
        assert!(!r.snat && r.masq_all);
        assert_eq!(r.key.container_id, "c1");
        assert_eq!(r.key.network, "net");
    }

    const CONTAINERD_ADD: &str =
        include_str!("../../conformance/fixtures/clients/containerd-1.6.20-ADD.stdin.json");

    #[test]
    fn containerd_capitalised_mapping_keys_decode_like_go() {
        let c = parse(CONTAINERD_ADD.as_bytes()).expect("containerd's ADD decodes");
        let got: Vec<(u16, u16, &str, Option<IpAddr>)> = c
            .mappings
            .iter()
            .map(|m| {
                (
                    m.host_port,
                    m.container_port,
                    m.protocol.as_str(),
                    m.host_ip,
                )
            })
            .collect();
        assert_eq!(got, [(18080, 80, "tcp", None), (15353, 5353, "udp", None)]);
        assert_eq!(c.name, "crinet");
    }

    #[test]
    fn every_object_we_read_folds_its_keys() {
        let stdin = br#"{"CNIVERSION":"0.4.0","Name":"n","SNAT":false,"MasqAll":true,"Backend":"iptables",
            "RuntimeConfig":{"PortMappings":[{"HOSTPORT":8080,"containerport":80,"PROTOCOL":"UDP","HostIp":"10.1.2.3"}]},
            "PrevResult":{"CNIVersion":"0.4.0","Interfaces":[{"Name":"eth0","Sandbox":"/x"}],
                          "IPs":[{"Version":"4","Address":"10.0.0.2/24","Interface":0}]},
            "Capabilities":{"portMappings":true}}"#;
        let c = parse(stdin).expect("valid");
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(peek_version(stdin), "0.4.0");
        assert!(!c.snat && c.masq_all);
        assert_eq!(c.backend, Some(Choice::Iptables));
        let m = &c.mappings[0];
        assert_eq!((m.host_port, m.container_port), (8080, 80));
        assert_eq!(m.protocol, Protocol::Udp);
        assert_eq!(m.host_ip, Some("10.1.2.3".parse().expect("ip")));
        let env = Env {
            container_id: "c".into(),
            ifname: "eth0".into(),
            ..Env::default()
        };
        let r = c.request(&env);
        assert_eq!(r.v4.map(|a| a.addr.to_string()), Some("10.0.0.2".into()));
        let out = result::convert(c.prev_result.as_ref().expect("prev"), "1.0.0");
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
        assert!(out.get("IPs").is_none(), "{out}");
    }

    #[rstest]
    #[case::fraction(json!(8080.5), "runtimeConfig.portMappings[0].hostPort: invalid type: floating point `8080.5`, expected i64")]
    #[case::string(json!("8080"), "runtimeConfig.portMappings[0].hostPort: invalid type: string \"8080\", expected i64")]
    fn numbers_go_refuses_are_decode_errors(#[case] port: Value, #[case] msg: &str) {
        let e = parse(&mapping_cfg(json!({"HostPort": port, "ContainerPort": 80})))
            .expect_err("refused");
        assert_eq!(e.code, Code::DecodeFailure);
        assert_eq!(
            e.msg,
            format!("failed to parse network configuration: {msg}")
        );
    }

    #[rstest]
    #[case::missing_host_port(json!({"containerPort": 80}), "Invalid host port number: 0")]
    #[case::null_container_port(json!({"hostPort": 80, "containerPort": null}), "Invalid container port number: 0")]
    fn missing_ports_are_gos_zero(#[case] m: Value, #[case] msg: &str) {
        let e = parse(&mapping_cfg(m)).expect_err("rejected");
        assert_eq!((e.code, e.msg.as_str()), (Code::InvalidConfig, msg));
    }

    #[rstest]
    #[case::capabilities(json!({"capabilities": {"portMappings": "yes"}}), "capabilities.portMappings")]
    #[case::ipam(json!({"ipam": {"type": 5}}), "ipam.type")]
    #[case::dns(json!({"dns": {"nameservers": "8.8.8.8"}}), "dns.nameservers")]
    #[case::type_key(json!({"type": ["portmap"]}), "type")]
    fn netconf_fields_have_gos_types(#[case] patch: Value, #[case] path: &str) {
        let e = parse(&with(patch)).expect_err("refused");
        assert_eq!(e.code, Code::DecodeFailure);
        assert!(
            e.msg
                .starts_with(&format!("failed to parse network configuration: {path}: ")),
            "{}",
            e.msg
        );
    }

    /// Whatever ADD would refuse beyond the document itself, DEL accepts:
    /// it needs only the network name and the container ID.
    #[rstest]
    #[case::bad_port(json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}))]
    #[case::port_as_string(json!({"runtimeConfig": {"portMappings": [{"hostPort": "80"}]}}))]
    #[case::unknown_protocol(json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "icmp"}]}}))]
    #[case::refused_condition(json!({"conditionsV4": ["a;b"]}))]
    #[case::bad_mark(json!({"markMasqBit": 99, "externalSetMarkChain": "X"}))]
    #[case::bad_prev_result(json!({"prevResult": {"ips": [{"address": "x"}]}}))]
    #[case::bad_backend(json!({"backend": "pf"}))]
    #[case::name_with_space(json!({"name": "a b"}))]
    fn del_decodes_only_what_identifies_the_container(#[case] patch: Value) {
        let stdin = with(patch);
        let d = parse_del(&stdin).expect("DEL accepts it");
        assert_eq!(d.cni_version, "1.0.0");
        assert!(parse(&stdin).is_err(), "ADD refuses it");
    }

    #[rstest]
    #[case::not_json(b"{".to_vec(), Code::DecodeFailure)]
    #[case::name_not_a_string(br#"{"cniVersion":"1.0.0","name":5}"#.to_vec(), Code::DecodeFailure)]
    #[case::unsupported_version(br#"{"cniVersion":"9.0.0","name":"n"}"#.to_vec(), Code::IncompatibleVersion)]
    fn del_still_refuses_what_names_no_container(#[case] stdin: Vec<u8>, #[case] code: Code) {
        assert_eq!(parse_del(&stdin).expect_err("refused").code, code);
    }

    fn attachments(ids: &[&str]) -> Value {
        ids.iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect()
    }

    fn kept(patch: Value) -> Option<Vec<String>> {
        parse(&with(patch))
            .expect("valid")
            .valid_attachments
            .map(|ids| ids.into_iter().collect())
    }

    #[rstest]
    #[case::valid_attachments(json!({"cni.dev/valid-attachments": attachments(&["a", "b"])}), Some(vec!["a", "b"]))]
    #[case::spec_text_attachments(json!({"cni.dev/attachments": attachments(&["a"])}), Some(vec!["a"]))]
    #[case::both_keys_union(json!({"cni.dev/valid-attachments": attachments(&["a", "b"]), "cni.dev/attachments": attachments(&["b", "c"])}), Some(vec!["a", "b", "c"]))]
    #[case::both_keys_one_empty(json!({"cni.dev/valid-attachments": [], "cni.dev/attachments": attachments(&["c"])}), Some(vec!["c"]))]
    #[case::empty_list_is_a_list(json!({"cni.dev/attachments": []}), Some(vec![]))]
    #[case::neither_key(json!({}), None)]
    #[case::nulls_are_unset(json!({"cni.dev/valid-attachments": null, "cni.dev/attachments": null}), None)]
    #[case::null_and_a_list(json!({"cni.dev/valid-attachments": null, "cni.dev/attachments": attachments(&["a"])}), Some(vec!["a"]))]
    #[case::keys_fold_like_go(json!({"CNI.dev/Valid-Attachments": attachments(&["a"]), "cni.DEV/ATTACHMENTS": attachments(&["b"])}), Some(vec!["a", "b"]))]
    fn gc_attachments_from_either_key(#[case] patch: Value, #[case] want: Option<Vec<&str>>) {
        let want = want.map(|ids| ids.into_iter().map(str::to_string).collect());
        assert_eq!(kept(patch), want);
    }

    #[test]
    fn attachments_of_the_wrong_shape_are_decode_errors() {
        let e = parse(&with(json!({"cni.dev/attachments": {"containerID": "a"}})))
            .expect_err("refused");
        assert_eq!(e.code, Code::DecodeFailure);
        assert!(
            e.msg
                .starts_with("failed to parse network configuration: cni.dev/attachments: "),
            "{}",
            e.msg
        );
    }
}
