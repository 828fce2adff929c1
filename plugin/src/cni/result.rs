//! prevResult in every spec shape, container address selection, and
//! conversion to the config's cniVersion. Results stay JSON values so a
//! field a newer runtime adds passes through unchanged where the target
//! shape can hold it.

use serde_json::{json, Map, Value};

use portmap_backends::ContainerAddr;

use super::{CniError, Code};
use crate::gojson::{fold_keys, Fields};

/// The result types' fields in every spec version (libcni decodes
/// prevResult into them, so their keys fold as in any Go struct).
static RESULT: Fields = Fields {
    names: &[
        "cniVersion",
        "interfaces",
        "ips",
        "routes",
        "dns",
        "ip4",
        "ip6",
    ],
    nested: &[
        ("interfaces", &INTERFACE),
        ("ips", &IP_CONFIG),
        ("routes", &ROUTE),
        ("dns", &DNS),
        ("ip4", &IP_V02),
        ("ip6", &IP_V02),
    ],
};
static INTERFACE: Fields = Fields {
    names: &["name", "mac", "mtu", "sandbox", "socketPath", "pciID"],
    nested: &[],
};
static IP_CONFIG: Fields = Fields {
    names: &["interface", "address", "gateway", "version"],
    nested: &[],
};
static ROUTE: Fields = Fields {
    names: &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"],
    nested: &[],
};
static DNS: Fields = Fields {
    names: &["nameservers", "domain", "search", "options"],
    nested: &[],
};
/// 0.1.0/0.2.0 `ip4`/`ip6`.
static IP_V02: Fields = Fields {
    names: &["ip", "gateway", "routes"],
    nested: &[("routes", &ROUTE)],
};

/// The three wire shapes results have had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// 0.1.0, 0.2.0: `ip4`/`ip6` objects.
    V02,
    /// 0.3.0 … 0.4.0: `interfaces` + `ips` with `version`.
    V04,
    /// 1.0.0, 1.1.0: like 0.4.0 without `version`.
    V1,
}

impl Shape {
    pub fn of_version(v: &str) -> Shape {
        match v {
            "0.1.0" | "0.2.0" => Shape::V02,
            "0.3.0" | "0.3.1" | "0.4.0" => Shape::V04,
            _ => Shape::V1,
        }
    }
}

fn decode_error(msg: impl std::fmt::Display) -> CniError {
    CniError::new(
        Code::DecodeFailure,
        format!("could not parse prevResult: {msg}"),
    )
}

/// Brings any shape to the 1.0 shape (an object with `ips`, `routes`…).
pub fn normalize(prev: &Value) -> Result<Map<String, Value>, CniError> {
    let mut prev = prev.clone();
    fold_keys(&mut prev, &RESULT);
    let obj = prev
        .as_object()
        .ok_or_else(|| decode_error("not a JSON object"))?;
    let mut out = obj.clone();
    if obj.contains_key("ip4") || obj.contains_key("ip6") {
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        for key in ["ip4", "ip6"] {
            let Some(cfg) = out.remove(key) else {
                continue;
            };
            let cfg = cfg
                .as_object()
                .ok_or_else(|| decode_error(format!("{key} is not an object")))?;
            let mut ip = Map::new();
            if let Some(addr) = cfg.get("ip") {
                ip.insert("address".into(), addr.clone());
            }
            if let Some(gw) = cfg.get("gateway") {
                ip.insert("gateway".into(), gw.clone());
            }
            ips.push(Value::Object(ip));
            if let Some(r) = cfg.get("routes").and_then(Value::as_array) {
                routes.extend(r.iter().cloned());
            }
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
    }
    if let Some(ips) = out.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips.iter_mut() {
            let o = ip
                .as_object_mut()
                .ok_or_else(|| decode_error("ips entry is not an object"))?;
            o.remove("version");
            let addr = o.get("address").and_then(Value::as_str).unwrap_or_default();
            parse_cidr(addr).ok_or_else(|| decode_error(format!("invalid address {addr:?}")))?;
        }
    } else if out.get("ips").is_some_and(|v| !v.is_null()) {
        return Err(decode_error("ips is not a list"));
    }
    if let Some(ifs) = out.get("interfaces") {
        if !ifs.is_null() && !ifs.is_array() {
            return Err(decode_error("interfaces is not a list"));
        }
    }
    Ok(out)
}

/// Converts a (normalised) result to the wire shape of `to`.
pub fn convert(normal: &Map<String, Value>, to: &str) -> Value {
    let mut out = normal.clone();
    out.insert("cniVersion".into(), Value::String(to.to_string()));
    match Shape::of_version(to) {
        Shape::V1 => {}
        Shape::V04 => {
            if let Some(ips) = out.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                    let v6 = ip
                        .get("address")
                        .and_then(Value::as_str)
                        .is_some_and(|a| a.contains(':'));
                    ip.insert("version".into(), json!(if v6 { "6" } else { "4" }));
                }
            }
        }
        Shape::V02 => {
            let ips = out
                .remove("ips")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            let routes = out
                .remove("routes")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            out.remove("interfaces");
            for (key, v6) in [("ip4", false), ("ip6", true)] {
                let is_family = |a: &str| a.contains(':') == v6;
                let Some(ip) = ips.iter().filter_map(Value::as_object).find(|ip| {
                    ip.get("address")
                        .and_then(Value::as_str)
                        .is_some_and(is_family)
                }) else {
                    continue;
                };
                let mut cfg = Map::new();
                cfg.insert(
                    "ip".into(),
                    ip.get("address").cloned().unwrap_or(Value::Null),
                );
                if let Some(gw) = ip.get("gateway") {
                    cfg.insert("gateway".into(), gw.clone());
                }
                let fam_routes: Vec<Value> = routes
                    .iter()
                    .filter(|r| r.get("dst").and_then(Value::as_str).is_some_and(is_family))
                    .cloned()
                    .collect();
                if !fam_routes.is_empty() {
                    cfg.insert("routes".into(), Value::Array(fam_routes));
                }
                out.insert(key.into(), Value::Object(cfg));
            }
        }
    }
    Value::Object(out)
}

/// `10.88.0.5/16` → address and prefix length.
pub fn parse_cidr(s: &str) -> Option<ContainerAddr> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let prefix_len: u8 = len.parse().ok()?;
    let max = portmap_backends::Family::of(&addr).max_prefix();
    (prefix_len <= max).then_some(ContainerAddr { addr, prefix_len })
}

/// The first IPv4 and first IPv6 of the container: an `ips` entry counts
/// when it names no interface, or one called `ifname` with a sandbox.
pub fn container_addrs(
    normal: &Map<String, Value>,
    ifname: &str,
) -> (Option<ContainerAddr>, Option<ContainerAddr>) {
    let empty = Vec::new();
    let interfaces = normal
        .get("interfaces")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let ips = normal
        .get("ips")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let in_sandbox = |ip: &Value| match ip.get("interface").and_then(Value::as_u64) {
        None => true,
        Some(i) => usize::try_from(i)
            .ok()
            .and_then(|i| interfaces.get(i))
            .is_some_and(|intf| {
                intf.get("name").and_then(Value::as_str) == Some(ifname)
                    && intf
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
            }),
    };
    let addrs: Vec<ContainerAddr> = ips
        .iter()
        .filter(|ip| in_sandbox(ip))
        .filter_map(|ip| parse_cidr(ip.get("address")?.as_str()?))
        .collect();
    let first = |v6: bool| addrs.iter().find(|a| a.addr.is_ipv6() == v6).copied();
    (first(false), first(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn v04() -> Value {
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1},
                {"version": "6", "address": "fd00:88::5/64", "interface": 1}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "dns": {"nameservers": ["10.88.0.1"]},
            "x-newer-runtime-field": {"kept": true}
        })
    }

    #[test]
    fn v04_to_v1_drops_version_and_keeps_unknown_fields() {
        let out = convert(&normalize(&v04()).expect("parses"), "1.0.0");
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(
            out["ips"][0],
            json!({"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1})
        );
        assert_eq!(out["x-newer-runtime-field"], json!({"kept": true}));
        assert_eq!(out["dns"], v04()["dns"]);
    }

    #[test]
    fn v1_to_v04_adds_version() {
        let v1 = convert(&normalize(&v04()).expect("parses"), "1.1.0");
        let back = convert(&normalize(&v1).expect("parses"), "0.4.0");
        assert_eq!(back, v04());
    }

    #[test]
    fn v1_to_v02_and_back() {
        let v02 = convert(&normalize(&v04()).expect("parses"), "0.2.0");
        assert_eq!(
            v02,
            json!({
                "cniVersion": "0.2.0",
                "dns": {"nameservers": ["10.88.0.1"]},
                "x-newer-runtime-field": {"kept": true},
                "ip4": {"ip": "10.88.0.5/16", "gateway": "10.88.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
                "ip6": {"ip": "fd00:88::5/64", "routes": [{"dst": "::/0"}]}
            })
        );
        let normal = normalize(&v02).expect("parses");
        let (v4, v6) = container_addrs(&normal, "eth0");
        assert_eq!(v4, parse_cidr("10.88.0.5/16"));
        assert_eq!(v6, parse_cidr("fd00:88::5/64"));
    }

    #[rstest]
    #[case::host_side_interface_does_not_count(json!({"interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}), None)]
    #[case::other_ifname_does_not_count(json!({"interfaces":[{"name":"net1","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}), None)]
    #[case::no_interface_index_counts(json!({"ips":[{"address":"10.0.0.2/24"}]}), Some("10.0.0.2/24"))]
    #[case::first_v4_wins(json!({"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0},{"address":"10.0.0.3/24","interface":0}]}), Some("10.0.0.2/24"))]
    #[case::index_out_of_range(json!({"interfaces":[],"ips":[{"address":"10.0.0.2/24","interface":3}]}), None)]
    fn container_ip_selection(#[case] prev: Value, #[case] want: Option<&str>) {
        let normal = normalize(&prev).expect("parses");
        assert_eq!(
            container_addrs(&normal, "eth0").0,
            want.and_then(parse_cidr)
        );
    }

    #[rstest]
    #[case::not_object(json!([1]))]
    #[case::bad_address(json!({"ips":[{"address":"nope"}]}))]
    #[case::prefix_too_long(json!({"ips":[{"address":"10.0.0.1/33"}]}))]
    #[case::ips_not_list(json!({"ips":{"a":1}}))]
    fn bad_prev_results(#[case] prev: Value) {
        let e = normalize(&prev).expect_err("rejected");
        assert_eq!(e.code, Code::DecodeFailure);
        assert!(
            e.msg.starts_with("could not parse prevResult: "),
            "{}",
            e.msg
        );
    }
}
