//! The second way to get a prevResult: a real CNI chain. Containers are
//! attached by Debian's `bridge` plugin with `host-local` IPAM, run as
//! libcni runs a conflist: bridge ADD first, its result threaded into
//! portmap as `prevResult`; on teardown bridge DEL, after the scenario's
//! portmap DEL (reverse order).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::network::Network;
use crate::cni::{run_with_input, Call};
use crate::netns::Netns;

pub const BRIDGE_PLUGIN: &str = "/usr/lib/cni/bridge";
pub const HOST_LOCAL_PLUGIN: &str = "/usr/lib/cni/host-local";
/// The bridge plugin's PATH (it writes no firewall rules: ipMasq is off).
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The bridge network's name (host-local's lease directory).
pub fn network_name(network: Network) -> &'static str {
    match network {
        Network::Primary => "conformance-chain",
        Network::Secondary => "conformance-b-chain",
    }
}

/// The bridge network's config: the host bridge of `network`, hairpin on
/// (hairpin scenarios need it), no masquerade of its own, one fixed
/// address per family so scenarios know their container's IP;
/// `cni_version` as negotiated (bridge answers in that version's result
/// shape). Default routes only for a container's first interface: a
/// second network's chain adding another would fail (the route exists).
pub fn bridge_config(
    network: Network,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    ipam_dir: &Path,
    cni_version: &str,
    default_route: bool,
) -> Value {
    let (gw4, gw6) = (network.host_v4(), network.host_v6());
    let subnet4 = format!("{}/24", network.addresses(0).0);
    let subnet6 = format!("{}/64", network.addresses(0).1);
    let routes = if default_route {
        json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    } else {
        json!([])
    };
    json!({
        "cniVersion": cni_version,
        "name": network_name(network),
        "type": "bridge",
        "bridge": network.bridge(),
        "isGateway": true,
        "hairpinMode": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir.display().to_string(),
            "ranges": [
                [{"subnet": subnet4, "rangeStart": v4.to_string(),
                  "rangeEnd": v4.to_string(), "gateway": gw4.to_string()}],
                [{"subnet": subnet6, "rangeStart": v6.to_string(),
                  "rangeEnd": v6.to_string(), "gateway": gw6.to_string()}]
            ],
            "routes": routes
        }
    })
}

/// One container attached by the bridge plugin.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The host namespace's name (the plugin runs there, as a runtime's).
    host: String,
    container_id: String,
    netns: PathBuf,
    ifname: String,
    config: Value,
}

impl Attachment {
    /// Runs bridge ADD for interface `ifname` of the container in `ns`;
    /// returns the attachment and the plugin's result (the prevResult for
    /// portmap).
    pub fn add(
        host: &Netns,
        ns: &Netns,
        container_id: &str,
        ifname: &str,
        config: Value,
    ) -> Result<(Attachment, Value), String> {
        // No DAD in the container: the bridge plugin waits for IPv6
        // addresses to settle, which would cost seconds per container.
        for key in [
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            ns.sysctl(key, "0").map_err(|e| e.to_string())?;
        }
        let att = Attachment {
            host: host.name().to_string(),
            container_id: container_id.to_string(),
            netns: ns.path(),
            ifname: ifname.to_string(),
            config,
        };
        let stdout = att.run("ADD")?;
        let result = serde_json::from_str(&stdout)
            .map_err(|e| format!("bridge ADD printed no JSON ({e}): {stdout}"))?;
        Ok((att, result))
    }

    /// Runs bridge DEL (releases the address, removes the veth).
    pub fn del(&self) -> Result<(), String> {
        self.run("DEL").map(|_| ())
    }

    fn run(&self, command: &str) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host, BRIDGE_PLUGIN]);
        let call = Call::on(
            command,
            &self.container_id,
            self.netns.display().to_string(),
            &self.ifname,
            Path::new(PATH),
            &self.config,
        );
        call.apply_env(&mut cmd);
        let out = run_with_input(cmd, self.config.to_string().as_bytes())
            .map_err(|e| format!("cannot run {BRIDGE_PLUGIN}: {e}"))?;
        if out.ok() {
            Ok(out.stdout)
        } else {
            Err(format!("bridge {command} failed: {}", out.summary()))
        }
    }
}

/// A plugin result with only the addresses of the wanted families (a
/// scenario testing one family); interfaces, routes and dns stay as the
/// bridge plugin printed them.
pub fn with_families(result: &Value, v4: bool, v6: bool) -> Value {
    let mut r = result.clone();
    if let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut) {
        ips.retain(|ip| {
            let is_v6 = ip
                .get("address")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains(':'));
            if is_v6 {
                v6
            } else {
                v4
            }
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_filter_keeps_everything_but_unwanted_addresses() {
        let r = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "br0"}],
            "ips": [{"address": "10.88.0.5/24", "interface": 2},
                    {"address": "fd00:88::5/64", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
        let v4 = with_families(&r, true, false);
        assert_eq!(
            v4["ips"],
            json!([{"address": "10.88.0.5/24", "interface": 2}])
        );
        assert_eq!(v4["routes"], r["routes"]);
        assert_eq!(with_families(&r, true, true), r);
        assert_eq!(
            with_families(&r, false, true)["ips"][0]["address"],
            "fd00:88::5/64"
        );
    }
}
