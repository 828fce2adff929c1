//! Each client's own input (fixtures of what containerd, CRI-O, podman,
//! cnitool and Multus send), replayed as the client would: ADD, CHECK where
//! it sends one, traffic, and its DELs. The client-shape dimension of the
//! matrix.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;

use super::ctx::{always, ensure, Ctx, Scenario};
use crate::clients::{Client, MULTUS_POD_TCP, TCP, UDP};
use crate::cni::Call;
use crate::topology::{Container, Network, HOST_V4, IFNAME};
use crate::traffic::{udp_ask, EchoServer};

pub fn scenarios() -> Vec<Scenario> {
    Client::ALL
        .into_iter()
        .map(|client| Scenario {
            name: match client {
                Client::Containerd => "client-containerd",
                Client::Crio => "client-cri-o",
                Client::Podman => "client-podman",
                Client::Cnitool => "client-cnitool",
                Client::Multus => "client-multus",
            },
            description: match client {
                Client::Containerd => {
                    "containerd/nerdctl input (HostPort… keys), DEL with and without netns"
                }
                Client::Crio => "CRI-O (ocicni) input with hostIP \"\" and K8S CNI_ARGS",
                Client::Podman => "podman 4 CNI input, cniVersion 0.4.0",
                Client::Cnitool => "cnitool/libcni input from CAP_ARGS",
                Client::Multus => {
                    "Multus delegate input on net1 (its own network name, 0.3.1, doubled CNI_ARGS) beside eth0"
                }
            },
            not_applicable: always,
            body: match client {
                Client::Containerd => |ctx| lifecycle(ctx, Client::Containerd),
                Client::Crio => |ctx| lifecycle(ctx, Client::Crio),
                Client::Podman => |ctx| lifecycle(ctx, Client::Podman),
                Client::Cnitool => |ctx| lifecycle(ctx, Client::Cnitool),
                Client::Multus => multus,
            },
        })
        .collect()
}

const ID: &str = "ctr-pod";

/// One invocation as `client` makes it (on `eth0`).
fn send(
    ctx: &Ctx,
    client: Client,
    command: &str,
    cfg: &serde_json::Value,
    netns: Option<&Container>,
) -> Result<(), String> {
    send_at(ctx, client, command, IFNAME, cfg, netns)
}

fn send_at(
    ctx: &Ctx,
    client: Client,
    command: &str,
    ifname: &str,
    cfg: &serde_json::Value,
    netns: Option<&Container>,
) -> Result<(), String> {
    let mut call = Call::new(command, ID, netns, ctx.tools.path(), cfg);
    call.ifname = ifname;
    call.env = client.env(ID);
    ctx.ok_call(&ctx.plugin, &call).map(|_| ())
}

fn lifecycle(ctx: &Ctx, client: Client) -> Result<(), String> {
    let pod = ctx.container("pod", 20)?;
    let _tcp = EchoServer::start(&pod.ns, "pod", TCP.1).map_err(|e| e.to_string())?;
    let _udp = EchoServer::start(&pod.ns, "pod", UDP.1).map_err(|e| e.to_string())?;
    let backend = ctx.axis.backend_key();
    let add = ctx
        .axis
        .keyed(client.add_config(&pod.prev_result(true, false), backend));
    let call = |command, cfg: &_, netns| send(ctx, client, command, cfg, netns);
    call("ADD", &add, Some(&pod))?;
    if client.sends_check() {
        call("CHECK", &add, Some(&pod))?;
    }
    let host = IpAddr::V4(HOST_V4);
    ctx.expect_answer(ctx.host(), host, TCP.0, "pod")?;
    let got = udp_ask(
        ctx.host(),
        SocketAddr::new(host, UDP.0),
        0,
        Duration::from_secs(3),
    )
    .map_err(|e| e.to_string())?;
    ensure(got.as_ref().is_some_and(|a| a.tag == "pod"), || {
        format!("udp {}: answered {got:?}, expected pod", UDP.0)
    })?;
    for del in client.dels(&add, backend) {
        call("DEL", &del.config, del.with_netns.then_some(&pod))?;
    }
    ctx.expect_silence(ctx.host(), host, TCP.0)?;
    let rules = ctx.ruleset();
    ensure(!rules.contains(ID) && !rules.contains("CNI-DN-"), || {
        format!(
            "{ID}'s rules are still there after {}'s DELs",
            client.name()
        )
    })
}

/// A pod with two networks under Multus: `eth0` on the cluster network
/// (Multus's first delegate: the CNI-given ifname, the pod's own hostPort
/// from the runtime's runtimeConfig) and `net1` on the delegate network of
/// the fixture (its own name, the ports its annotation requests). Multus
/// sends no CHECK and deletes its delegates last first.
fn multus(ctx: &Ctx) -> Result<(), String> {
    let client = Client::Multus;
    let pod = ctx.container("pod", 20)?;
    let net1 = ctx.attach(&pod, Network::Secondary, client.ifname(), 20)?;
    let at = |ip, port| SocketAddr::new(ip, port);
    let serve =
        |tag, ip, port| EchoServer::start_on(&pod.ns, tag, at(ip, port)).map_err(|e| e.to_string());
    let _eth0 = serve("eth0", pod.addr(false), MULTUS_POD_TCP.1)?;
    let _net1_tcp = serve("net1", net1.addr(false), TCP.1)?;
    let _net1_udp = serve("net1", net1.addr(false), UDP.1)?;
    let backend = ctx.axis.backend_key();
    let pod_ports = json!([{"hostPort": MULTUS_POD_TCP.0, "containerPort": MULTUS_POD_TCP.1,
                            "protocol": "tcp"}]);
    let eth0_cfg = ctx.config(
        pod.prev_result(true, false),
        pod_ports,
        json!({"capabilities": {"portMappings": true}}),
    );
    let net1_cfg = ctx
        .axis
        .keyed(client.add_config(&net1.prev_result(true, false), backend));
    let (host_a, host_b) = (Network::Primary.host(false), Network::Secondary.host(false));
    let eth0_answers = |when: &str| {
        ctx.expect_answer(ctx.host(), host_a, MULTUS_POD_TCP.0, "eth0")
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{when}, eth0's {} no longer answers ({e})",
                    MULTUS_POD_TCP.0
                )
            })
    };
    send(ctx, client, "ADD", &eth0_cfg, Some(&pod))
        .map_err(|e| format!("Multus's ADD of eth0 (cluster network): {e}"))?;
    eth0_answers("after Multus's ADD of eth0")?;
    send_at(ctx, client, "ADD", client.ifname(), &net1_cfg, Some(&pod))
        .map_err(|e| format!("Multus's ADD of net1 (delegate web-net): {e}"))?;
    eth0_answers("after Multus's ADD of net1")?;
    ctx.expect_answer(ctx.host(), host_b, TCP.0, "net1")
        .map_err(|e| format!("after Multus's ADD of net1, net1's {}: {e}", TCP.0))?;
    let got = udp_ask(ctx.host(), at(host_b, UDP.0), 0, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    ensure(got.as_ref().is_some_and(|a| a.tag == "net1"), || {
        format!("udp {}: answered {got:?}, expected net1", at(host_b, UDP.0))
    })?;
    for del in client.dels(&net1_cfg, backend) {
        let netns = del.with_netns.then_some(&pod);
        send_at(ctx, client, "DEL", client.ifname(), &del.config, netns)
            .map_err(|e| format!("Multus's DEL of net1: {e}"))?;
    }
    ctx.expect_silence(ctx.host(), host_b, TCP.0)
        .map_err(|e| format!("after Multus's DEL of net1, {e}"))?;
    eth0_answers("after Multus's DEL of net1")?;
    send(ctx, client, "DEL", &eth0_cfg, Some(&pod))
        .map_err(|e| format!("Multus's DEL of eth0: {e}"))?;
    ctx.expect_silence(ctx.host(), host_a, MULTUS_POD_TCP.0)
        .map_err(|e| format!("after Multus's DEL of eth0, {e}"))?;
    let (a, b) = (pod.v4.to_string(), net1.v4.to_string());
    let left = ctx.rules_naming(&[ID, &a, &b]);
    let chains = crate::firewall::without_guard(&ctx.ruleset()).contains("CNI-DN-");
    ensure(left.is_empty() && !chains, || {
        format!(
            "{ID}'s rules are still there after Multus's DELs:\n{}",
            left.join("\n")
        )
    })
}
