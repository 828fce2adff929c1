//! Does traffic reach the container? Protocols, families, addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

use super::ctx::{always, ensure, maps, Ctx, Scenario};
use crate::topology::{EXTRA_V4, EXTRA_V6, HOST_V4, HOST_V6};
use crate::traffic::{udp_ask, EchoServer};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "tcp",
            description: "TCP to hostIP:hostPort reaches the container",
            not_applicable: always,
            body: tcp,
        },
        Scenario {
            name: "udp",
            description: "UDP to hostIP:hostPort reaches the container",
            not_applicable: always,
            body: udp,
        },
        Scenario {
            name: "sctp",
            description: "SCTP mapping installed (rules level: the harness has no SCTP client)",
            not_applicable: always,
            body: sctp,
        },
        Scenario {
            name: "ipv6",
            description: "IPv6-only container answers on the host's IPv6 address",
            not_applicable: always,
            body: ipv6,
        },
        Scenario {
            name: "dual-stack",
            description: "one mapping answers on IPv4 and IPv6",
            not_applicable: always,
            body: dual_stack,
        },
        Scenario {
            name: "localhost",
            description: "127.0.0.1:hostPort works and is masqueraded",
            not_applicable: always,
            body: localhost,
        },
        Scenario {
            name: "hairpin",
            description: "a container reaches itself through its host port",
            not_applicable: always,
            body: hairpin,
        },
        Scenario {
            name: "many-mappings",
            description: "40 mappings in one ADD (three iptables multiport groups) all work",
            not_applicable: always,
            body: many,
        },
        Scenario {
            name: "host-ip-v4",
            description: "an IPv4 hostIP mapping answers only on that address",
            not_applicable: always,
            body: host_ip_v4,
        },
        Scenario {
            name: "host-ip-v6",
            description: "an IPv6 hostIP mapping answers only on that address",
            not_applicable: always,
            body: host_ip_v6,
        },
    ]
}

fn h4() -> IpAddr {
    IpAddr::V4(HOST_V4)
}

fn h6() -> IpAddr {
    IpAddr::V6(HOST_V6)
}

/// One container "a" (10.88.0.5) with an echo server, ADDed with `mappings`.
pub(super) fn with_container<T>(
    ctx: &Ctx,
    v4: bool,
    v6: bool,
    mappings: Value,
    extra: Value,
    then: impl FnOnce(&crate::topology::Container) -> Result<T, String>,
) -> Result<T, String> {
    let a = ctx.container("a", 5)?;
    let _srv = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let cfg = ctx.config(a.prev_result(v4, v6), mappings, extra);
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    let result = then(&a)?;
    ctx.ok("CHECK", "ctr-a", Some(&a), &cfg)?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg)?;
    Ok(result)
}

fn tcp(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, true, false, maps("tcp", [8080]), json!({}), |_| {
        ctx.expect_answer(ctx.host(), h4(), 8080, "a").map(|_| ())
    })?;
    ctx.expect_silence(ctx.host(), h4(), 8080)
}

fn udp(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, true, false, maps("udp", [5353]), json!({}), |_| {
        let got = udp_ask(
            ctx.host(),
            SocketAddr::new(h4(), 5353),
            0,
            Duration::from_secs(3),
        )
        .map_err(|e| e.to_string())?;
        ensure(got.as_ref().is_some_and(|a| a.tag == "a"), || {
            format!("udp 5353 answered {got:?}")
        })
    })
}

fn sctp(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, true, false, maps("sctp", [3868]), json!({}), |_| {
        let rules = ctx.ruleset();
        ensure(
            rules.contains("sctp dport 3868")
                || rules.contains("-p sctp -m sctp --dport 3868")
                || rules.contains("sctp . 3868 comment"),
            || "no SCTP rule for port 3868 in the ruleset".to_string(),
        )
    })
}

fn ipv6(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, false, true, maps("tcp", [8080]), json!({}), |_| {
        ctx.expect_answer(ctx.host(), h6(), 8080, "a")?;
        ctx.expect_silence(ctx.host(), h4(), 8080)
    })
}

fn dual_stack(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, true, true, maps("tcp", [8080]), json!({}), |_| {
        ctx.expect_answer(ctx.host(), h4(), 8080, "a")?;
        ctx.expect_answer(ctx.host(), h6(), 8080, "a").map(|_| ())
    })
}

fn localhost(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, true, false, maps("tcp", [8080]), json!({}), |_| {
        let got = ctx.expect_answer(
            ctx.host(),
            "127.0.0.1".parse().map_err(|_| "ip")?,
            8080,
            "a",
        )?;
        ensure(got.peer == h4(), || {
            format!(
                "container saw {} instead of the masqueraded {}",
                got.peer,
                h4()
            )
        })
    })
}

fn hairpin(ctx: &Ctx) -> Result<(), String> {
    with_container(ctx, true, false, maps("tcp", [8080]), json!({}), |a| {
        ctx.expect_answer(&a.ns, h4(), 8080, "a").map(|_| ())
    })
}

fn many(ctx: &Ctx) -> Result<(), String> {
    // Every other port: consecutive ones would be one range (ranges.rs).
    let ports = (0..40).map(|i| 9000 + 2 * i);
    with_container(ctx, true, false, maps("tcp", ports), json!({}), |_| {
        for port in [9000, 9030, 9060, 9078] {
            ctx.expect_answer(ctx.host(), h4(), port, "a")?;
        }
        Ok(())
    })
}

fn host_ip(ctx: &Ctx, v6: bool) -> Result<(), String> {
    let (good, other, plain) = if v6 {
        (IpAddr::V6(EXTRA_V6[0]), IpAddr::V6(EXTRA_V6[1]), h6())
    } else {
        (IpAddr::V4(EXTRA_V4[0]), IpAddr::V4(EXTRA_V4[1]), h4())
    };
    let m = json!([{"hostPort": 9090, "containerPort": 80, "protocol": "tcp", "hostIP": good.to_string()}]);
    with_container(ctx, !v6, v6, m, json!({}), |_| {
        ctx.expect_answer(ctx.host(), good, 9090, "a")?;
        ctx.expect_silence(ctx.host(), other, 9090)?;
        ctx.expect_silence(ctx.host(), plain, 9090)
    })
}

fn host_ip_v4(ctx: &Ctx) -> Result<(), String> {
    host_ip(ctx, false)
}

fn host_ip_v6(ctx: &Ctx) -> Result<(), String> {
    host_ip(ctx, true)
}
