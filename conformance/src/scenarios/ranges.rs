//! Port ranges (`podman run -p 20000-20999:20000-20999`): every port of a
//! run of consecutive mappings works, and the firewall holds a handful of
//! rules for it, not one per port.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

use super::ctx::{always, ensure, Ctx, Scenario};
use super::lifecycle::needs_reference;
use crate::topology::{Container, HOST_V4, HOST_V6};
use crate::traffic::{udp_ask, EchoServer};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "port-range",
            description:
                "1,000 consecutive TCP and UDP ports: first, middle, last answer; a few rules",
            not_applicable: always,
            body: port_range,
        },
        Scenario {
            name: "interop-port-range",
            description: "a 1,000-port range ADDed by the plugin, DELed by the reference binary",
            not_applicable: needs_reference,
            body: interop_port_range,
        },
    ]
}

const FIRST: u16 = 20000;
const PORTS: u16 = 1000;
/// DNAT lines the dump may show for one container's ranges: two per
/// family and protocol (iptables-nft rules show in nft's view too).
const DNAT_LINES_MAX: usize = 16;

/// `n` consecutive host ports from FIRST of `proto`, each to the same port.
fn range(proto: &str, n: u16) -> Vec<Value> {
    (FIRST..FIRST + n)
        .map(|p| json!({"hostPort": p, "containerPort": p, "protocol": proto}))
        .collect()
}

/// DNAT lines of the dump that lead to `a`.
fn dnat_lines(ctx: &Ctx, a: &Container) -> Vec<String> {
    let addrs = [a.addr(false).to_string(), a.addr(true).to_string()];
    ctx.rules_naming(&[&addrs[0], &addrs[1]])
        .into_iter()
        .filter(|l| l.to_ascii_lowercase().contains("dnat"))
        .collect()
}

fn few_rules(ctx: &Ctx, a: &Container, mappings: usize) -> Result<(), String> {
    let lines = dnat_lines(ctx, a);
    ensure(lines.len() <= DNAT_LINES_MAX, || {
        format!(
            "{mappings} consecutive mappings made {} DNAT rules (at most {DNAT_LINES_MAX} \
             expected: one range per family and protocol), first: {}",
            lines.len(),
            lines.first().cloned().unwrap_or_default()
        )
    })
}

/// 20 ports first: a binary writing one rule per port is told so here, in
/// seconds, rather than spending minutes (one process per rule) on 1,000.
fn probe(ctx: &Ctx, a: &Container) -> Result<(), String> {
    let probe = ctx.config(
        a.prev_result(true, true),
        Value::Array(range("tcp", 20)),
        json!({}),
    );
    ctx.ok("ADD", "ctr-a", Some(a), &probe)?;
    let probed = few_rules(ctx, a, 40);
    ctx.ok("DEL", "ctr-a", Some(a), &probe)?;
    probed
}

fn port_range(ctx: &Ctx) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let last = FIRST + PORTS - 1;
    let (middle, outside) = (FIRST + PORTS / 2, FIRST + PORTS);
    let _srv = [FIRST, middle, last, outside]
        .iter()
        .map(|p| EchoServer::start(&a.ns, "a", *p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    probe(ctx, &a)?;

    let mut mappings = range("tcp", PORTS);
    mappings.extend(range("udp", PORTS));
    let cfg = ctx.config(a.prev_result(true, true), Value::Array(mappings), json!({}));
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    let (h4, h6) = (IpAddr::V4(HOST_V4), IpAddr::V6(HOST_V6));
    for port in [FIRST, middle, last] {
        ctx.expect_answer(ctx.host(), h4, port, "a")?;
    }
    ctx.expect_answer(ctx.host(), h6, middle, "a")?;
    ctx.expect_silence(ctx.host(), h4, outside)?;
    let local = ctx.expect_answer(
        ctx.host(),
        "127.0.0.1".parse().map_err(|_| "ip")?,
        last,
        "a",
    )?;
    ensure(local.peer == h4, || {
        format!(
            "127.0.0.1:{last}: the container saw {}, not the masqueraded {h4}",
            local.peer
        )
    })?;
    ctx.expect_answer(&a.ns, h4, FIRST, "a")?;
    let udp = udp_ask(
        ctx.host(),
        SocketAddr::new(h4, middle),
        0,
        Duration::from_secs(3),
    )
    .map_err(|e| e.to_string())?;
    ensure(udp.as_ref().is_some_and(|u| u.tag == "a"), || {
        format!("udp {middle} answered {udp:?}")
    })?;
    few_rules(ctx, &a, 4 * usize::from(PORTS))?;
    ctx.ok("CHECK", "ctr-a", Some(&a), &cfg)?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg)?;
    ctx.expect_silence(ctx.host(), h4, middle)?;
    let left = ctx.rules_naming(&["ctr-a", &a.addr(false).to_string()]);
    ensure(left.is_empty(), || format!("DEL left: {left:?}"))
}

/// Upstream's DEL (entry rules by their jump, the container chain by name;
/// nft rules by comment) takes a range container down as any other.
fn interop_port_range(ctx: &Ctx) -> Result<(), String> {
    let reference = ctx.reference.clone().ok_or("no reference")?;
    let a = ctx.container("a", 5)?;
    let middle = FIRST + PORTS / 2;
    let _srv = EchoServer::start(&a.ns, "a", middle).map_err(|e| e.to_string())?;
    probe(ctx, &a)?;
    let cfg = ctx.config(
        a.prev_result(true, true),
        Value::Array(range("tcp", PORTS)),
        json!({}),
    );
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    let h4 = IpAddr::V4(HOST_V4);
    ctx.expect_answer(ctx.host(), h4, middle, "a")?;
    ctx.ok_with(&reference, "DEL", "ctr-a", Some(&a), &cfg)?;
    ctx.expect_silence(ctx.host(), h4, middle)?;
    let rules = crate::firewall::without_guard(&ctx.ruleset());
    ensure(
        !rules.contains("ctr-a") && !rules.contains("CNI-DN-"),
        || format!("{} left the container's rules", reference.display()),
    )
}
