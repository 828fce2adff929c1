//! Each client's own input (fixtures of what containerd, CRI-O, podman and
//! cnitool send), replayed as the client would: ADD, CHECK where it sends
//! one, traffic, and its DELs. The client-shape dimension of the matrix.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{always, ensure, Ctx, Scenario};
use crate::clients::{Client, TCP, UDP};
use crate::cni::Call;
use crate::topology::{Container, HOST_V4};
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
            },
            description: match client {
                Client::Containerd => {
                    "containerd/nerdctl input (HostPort… keys), DEL with and without netns"
                }
                Client::Crio => "CRI-O (ocicni) input with hostIP \"\" and K8S CNI_ARGS",
                Client::Podman => "podman 4 CNI input, cniVersion 0.4.0",
                Client::Cnitool => "cnitool/libcni input from CAP_ARGS",
            },
            not_applicable: always,
            body: match client {
                Client::Containerd => |ctx| lifecycle(ctx, Client::Containerd),
                Client::Crio => |ctx| lifecycle(ctx, Client::Crio),
                Client::Podman => |ctx| lifecycle(ctx, Client::Podman),
                Client::Cnitool => |ctx| lifecycle(ctx, Client::Cnitool),
            },
        })
        .collect()
}

const ID: &str = "ctr-pod";

/// One invocation as `client` makes it.
fn send(
    ctx: &Ctx,
    client: Client,
    command: &str,
    cfg: &serde_json::Value,
    netns: Option<&Container>,
) -> Result<(), String> {
    let mut call = Call::new(command, ID, netns, ctx.tools.path(), cfg);
    call.env = client.env(ID);
    ctx.ok_call(&ctx.plugin, &call).map(|_| ())
}

fn lifecycle(ctx: &Ctx, client: Client) -> Result<(), String> {
    let pod = ctx.container("pod", 20)?;
    let _tcp = EchoServer::start(&pod.ns, "pod", TCP.1).map_err(|e| e.to_string())?;
    let _udp = EchoServer::start(&pod.ns, "pod", UDP.1).map_err(|e| e.to_string())?;
    let backend = ctx.axis.backend_key();
    let add = client.add_config(&pod.prev_result(true, false), backend);
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
