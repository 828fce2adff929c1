//! Attachments, not containers: one container on two networks, containers
//! of two networks side by side, and a re-ADD after the plugin's own state
//! was lost. An attachment (container ID, network name, ifname) is what a
//! runtime adds and deletes (Multus delegates, `podman run --network a,b`);
//! a portmap must keep each apart from every other (issue #22). Failures
//! name the attachment that broke and what it was doing then.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use super::ctx::{ensure, maps, Ctx, Scenario, NET, NET_B};
use crate::netns::Netns;
use crate::topology::{Container, Network, IFNAME};
use crate::traffic::EchoServer;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "two-networks",
            description: "one container on two networks (eth0, net1), each with its own host port: ADD, CHECK and DEL of one leave the other",
            not_applicable: super::ctx::always,
            body: two_networks,
        },
        Scenario {
            name: "gc-other-network",
            description: "GC of network A removes only A's invalid attachments, never network B's containers",
            not_applicable: needs_gc,
            body: gc_other_network,
        },
        Scenario {
            name: "lost-journal",
            description: "ADD, plugin state directory wiped, re-ADD with another port, DEL: neither port answers, no rule left",
            not_applicable: super::ctx::always,
            body: lost_journal,
        },
    ]
}

/// GC is CNI 1.1.0: a binary that does not speak it has no GC to test
/// (upstream portmap before v1.5), so the scenario cannot run there.
fn needs_gc(ctx: &Ctx) -> Option<String> {
    (!crate::cni::speaks_cni_1_1(&ctx.plugin))
        .then(|| "the plugin does not speak CNI 1.1.0 (no GC)".to_string())
}

/// One attachment of a scenario, as the runtime calls portmap for it.
/// Its prevResult is dual-stack (upstream's CHECK before v1.5 fails on an
/// IPv4-only one, which would hide what it does with attachments); the
/// traffic is IPv4.
struct Att<'a> {
    /// How failures name it (`net-a`, `c2 of conformance-b`); also the tag
    /// its echo server answers with (no spaces).
    label: &'a str,
    id: &'a str,
    ifname: &'a str,
    container: &'a Container,
    /// Where its host port is asked: the host's address on its network
    /// (the container's replies then go back the way they came).
    host: IpAddr,
    port: u16,
    cfg: Value,
}

impl Att<'_> {
    fn call(&self, ctx: &Ctx, command: &str, when: &str) -> Result<(), String> {
        ctx.ok_at(
            command,
            self.id,
            self.ifname,
            Some(self.container),
            &self.cfg,
        )
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{when}: {command} of {} ({}) failed: {e}",
                self.label, self.ifname
            )
        })
    }

    fn answers(&self, ctx: &Ctx, when: &str) -> Result<(), String> {
        ctx.expect_answer(ctx.host(), self.host, self.port, self.label)
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{when}, {}'s {} no longer answers ({e})",
                    self.label, self.port
                )
            })
    }

    fn silent(&self, ctx: &Ctx, when: &str) -> Result<(), String> {
        ctx.expect_silence(ctx.host(), self.host, self.port)
            .map_err(|e| format!("{when}, {}'s {} still answers ({e})", self.label, self.port))
    }
}

/// An echo server answering `tag` on port 80 of `addr` only.
fn serve(ns: &Netns, tag: &str, addr: IpAddr) -> Result<EchoServer, String> {
    EchoServer::start_on(ns, tag, SocketAddr::new(addr, 80)).map_err(|e| e.to_string())
}

/// Fails with the lines of the dump that name any of `needles`.
fn nothing_names(ctx: &Ctx, needles: &[&str], when: &str) -> Result<(), String> {
    let left = ctx.rules_naming(needles);
    ensure(left.is_empty(), || {
        format!(
            "{when}, rules naming {needles:?} are left:\n{}",
            left.join("\n")
        )
    })
}

/// No iptables per-container chain is left (the nftables tables name the
/// container; [`nothing_names`] finds those).
fn no_container_chain(ctx: &Ctx, when: &str) -> Result<(), String> {
    let dump = crate::firewall::without_guard(&ctx.ruleset());
    let left: Vec<&str> = dump.lines().filter(|l| l.contains("CNI-DN-")).collect();
    ensure(left.is_empty(), || {
        format!("{when}, container chains are left:\n{}", left.join("\n"))
    })
}

const TWO_NET_ID: &str = "ctr-2net";

fn two_networks(ctx: &Ctx) -> Result<(), String> {
    let c = ctx.container("c", 5)?;
    let net1 = ctx.attach(&c, Network::Secondary, "net1", 5)?;
    let _srv_a = serve(&c.ns, "net-a", c.addr(false))?;
    let _srv_b = serve(&c.ns, "net-b", net1.addr(false))?;
    let a = Att {
        label: "net-a",
        id: TWO_NET_ID,
        ifname: IFNAME,
        container: &c,
        host: Network::Primary.host(false),
        port: 8080,
        cfg: ctx.config_named(
            NET,
            c.prev_result(true, true),
            maps("tcp", [8080]),
            json!({}),
        ),
    };
    let b = Att {
        label: "net-b",
        id: TWO_NET_ID,
        ifname: net1.ifname(),
        container: &c,
        host: Network::Secondary.host(false),
        port: 9090,
        cfg: ctx.config_named(
            NET_B,
            net1.prev_result(true, true),
            maps("tcp", [9090]),
            json!({}),
        ),
    };
    a.call(ctx, "ADD", "first ADD")?;
    a.answers(ctx, "after ADD of net-a")?;
    b.call(ctx, "ADD", "after ADD of net-a")?;
    b.answers(ctx, "after ADD of net-b")?;
    a.answers(ctx, "after ADD of net-b")?;
    a.call(ctx, "CHECK", "after both ADDs")?;
    b.call(ctx, "CHECK", "after both ADDs")?;

    a.call(ctx, "DEL", "after both ADDs")?;
    b.answers(ctx, "after DEL of net-a")?;
    a.silent(ctx, "after DEL of net-a")?;
    b.call(ctx, "CHECK", "after DEL of net-a")?;
    let (a4, a6) = (c.v4.to_string(), c.v6.to_string());
    nothing_names(ctx, &[&a4, &a6], "after DEL of net-a (eth0)")?;

    b.call(ctx, "DEL", "after DEL of net-a")?;
    b.silent(ctx, "after DEL of both")?;
    let (b4, b6) = (net1.v4.to_string(), net1.v6.to_string());
    let all = [TWO_NET_ID, &a4, &a6, &b4, &b6];
    nothing_names(ctx, &all, "after DEL of both")?;
    no_container_chain(ctx, "after DEL of both")
}

/// The `eth0` attachment of `c` to network `name`, publishing `port`.
fn only_eth0<'a>(
    ctx: &Ctx,
    label: &'a str,
    id: &'a str,
    c: &'a Container,
    name: &str,
    port: u16,
) -> Att<'a> {
    Att {
        label,
        id,
        ifname: IFNAME,
        container: c,
        host: c.network().host(false),
        port,
        cfg: ctx.config_named(
            name,
            c.prev_result(true, true),
            maps("tcp", [port]),
            json!({}),
        ),
    }
}

fn gc_other_network(ctx: &Ctx) -> Result<(), String> {
    let c1 = ctx.container_on("c1", 11, Network::Primary)?;
    let c2 = ctx.container_on("c2", 12, Network::Secondary)?;
    let _srv1 = EchoServer::start(&c1.ns, "c1", 80).map_err(|e| e.to_string())?;
    let _srv2 = EchoServer::start(&c2.ns, "c2", 80).map_err(|e| e.to_string())?;
    let a1 = only_eth0(ctx, "c1", "ctr-gc-c1", &c1, NET, 8001);
    let b2 = only_eth0(ctx, "c2", "ctr-gc-c2", &c2, NET_B, 8002);
    a1.call(ctx, "ADD", "first ADD")?;
    b2.call(ctx, "ADD", "after ADD of c1 on conformance")?;
    a1.answers(ctx, "after both ADDs")?;
    b2.answers(ctx, "after both ADDs")?;

    let keep_c1 = ctx.gc_config(NET, &[(a1.id, IFNAME)]);
    ctx.ok("GC", "", None, &keep_c1)
        .map_err(|e| format!("GC of {NET} keeping c1: {e}"))?;
    let when = "after GC of conformance keeping c1 (c2 is on conformance-b)";
    a1.answers(ctx, when)?;
    b2.answers(ctx, when)?;

    let keep_none = ctx.gc_config(NET, &[]);
    ctx.ok("GC", "", None, &keep_none)
        .map_err(|e| format!("GC of {NET} with an empty list: {e}"))?;
    let when = "after GC of conformance with an empty list";
    a1.silent(ctx, when)?;
    let (c1_v4, c1_v6) = (c1.v4.to_string(), c1.v6.to_string());
    nothing_names(ctx, &[a1.id, &c1_v4, &c1_v6], when)?;
    b2.answers(ctx, when)?;
    b2.call(ctx, "CHECK", when)?;

    b2.call(ctx, "DEL", "at the end")?;
    a1.call(ctx, "DEL", "at the end (after GC removed it)")?;
    nothing_names(ctx, &[a1.id, b2.id], "after DEL of both")
}

/// The plugin's state directory for this cell (the harness gives each
/// cell its own `PORTMAP_STATE_DIR`), removed as a reboot clears /run.
fn wipe_state(ctx: &Ctx) -> Result<(), String> {
    let dir = crate::cni::state_dir(ctx.tools.path());
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot wipe {}: {e}", dir.display())),
    }
}

const LOST_ID: &str = "ctr-lost";

fn lost_journal(ctx: &Ctx) -> Result<(), String> {
    let c = ctx.container("c", 5)?;
    let _srv = EchoServer::start(&c.ns, "c", 80).map_err(|e| e.to_string())?;
    let att = |port| Att {
        label: "c",
        id: LOST_ID,
        ifname: IFNAME,
        container: &c,
        host: Network::Primary.host(false),
        port,
        cfg: ctx.config(c.prev_result(true, true), maps("tcp", [port]), json!({})),
    };
    let (first, second) = (att(8080), att(9090));
    first.call(ctx, "ADD", "first ADD (8080)")?;
    first.answers(ctx, "after the first ADD")?;
    wipe_state(ctx)?;
    let when = "after the state directory was wiped";
    second.call(ctx, "ADD", when)?;
    second.answers(ctx, "after the re-ADD with 9090 (state wiped)")?;
    second.call(ctx, "DEL", "after the re-ADD with 9090 (state wiped)")?;
    let when = "after DEL following a re-ADD without state";
    first.silent(
        ctx,
        &format!("{when} (8080 was the first ADD's, its state lost)"),
    )?;
    second.silent(ctx, when)?;
    let (v4, v6) = (c.v4.to_string(), c.v6.to_string());
    nothing_names(ctx, &[LOST_ID, &v4, &v6], when)?;
    no_container_chain(ctx, when)
}
