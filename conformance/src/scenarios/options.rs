//! Config options: snat, masqAll, markMasqBit, conditions.

use std::net::IpAddr;

use serde_json::json;

use super::ctx::{always, ensure, maps, Ctx, Firewall, Scenario};
use super::reach::with_container;
use crate::topology::HOST_V4;
use crate::traffic::EchoServer;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "snat-false",
            description: "snat=false: DNAT works, no masquerade rule is installed",
            not_applicable: always,
            body: snat_false,
        },
        Scenario {
            name: "masq-all",
            description: "masqAll: traffic from another container is masqueraded too",
            not_applicable: always,
            body: masq_all,
        },
        Scenario {
            name: "mark-masq-bit",
            description: "markMasqBit 5 marks with 0x20 and hairpin still works",
            not_applicable: iptables_only,
            body: mark_masq_bit,
        },
        Scenario {
            name: "conditions",
            description:
                "conditionsV4 that exclude the client stop the DNAT; matching ones allow it",
            not_applicable: always,
            body: conditions,
        },
    ]
}

fn iptables_only(ctx: &Ctx) -> Option<String> {
    (ctx.firewall == Firewall::Nftables)
        .then(|| "markMasqBit is an iptables option (nftables masquerades by address)".to_string())
}

fn h4() -> IpAddr {
    IpAddr::V4(HOST_V4)
}

fn snat_false(ctx: &Ctx) -> Result<(), String> {
    with_container(
        ctx,
        true,
        false,
        maps("tcp", [8080]),
        json!({"snat": false}),
        |_| {
            ctx.expect_answer(ctx.host(), h4(), 8080, "a")?;
            let rules = ctx.ruleset();
            ensure(
                !rules.contains("masquerade") && !rules.contains("MASQUERADE"),
                || "a masquerade rule was installed with snat=false".to_string(),
            )
        },
    )
}

fn masq_all(ctx: &Ctx) -> Result<(), String> {
    let b = ctx.container("b", 6)?;
    with_container(
        ctx,
        true,
        false,
        maps("tcp", [8080]),
        json!({"masqAll": true}),
        |_| {
            let got = ctx.expect_answer(&b.ns, h4(), 8080, "a")?;
            ensure(got.peer == h4(), || {
                format!("container a saw {} (not masqueraded)", got.peer)
            })
        },
    )
}

fn mark_masq_bit(ctx: &Ctx) -> Result<(), String> {
    with_container(
        ctx,
        true,
        false,
        maps("tcp", [8080]),
        json!({"markMasqBit": 5}),
        |a| {
            ctx.expect_answer(&a.ns, h4(), 8080, "a")?;
            let rules = ctx.ruleset()
                + &ctx
                    .host()
                    .exec(
                        &format!("iptables-{}-save", ctx.firewall.iptables_suffix()),
                        &["-t", "nat"],
                    )
                    .unwrap_or_default();
            ensure(rules.contains("--set-xmark 0x20/0x20"), || {
                "no 0x20 mark rule".to_string()
            })
        },
    )
}

fn source_condition(ctx: &Ctx, subnet: &str) -> serde_json::Value {
    if ctx.firewall == Firewall::Nftables {
        json!([format!("ip saddr {subnet}")])
    } else {
        json!(["-s", subnet])
    }
}

fn conditions(ctx: &Ctx) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let _srv = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let elsewhere = ctx.config(
        a.prev_result(true, false),
        maps("tcp", [8080]),
        json!({"conditionsV4": source_condition(ctx, "10.77.0.0/16")}),
    );
    ctx.ok("ADD", "ctr-a", Some(&a), &elsewhere)?;
    ctx.expect_silence(ctx.host(), h4(), 8080)?;
    let here = ctx.config(
        a.prev_result(true, false),
        maps("tcp", [8080]),
        json!({"conditionsV4": source_condition(ctx, "10.88.0.0/24")}),
    );
    ctx.ok("ADD", "ctr-a", Some(&a), &here)?;
    ctx.expect_answer(ctx.host(), h4(), 8080, "a")?;
    ctx.ok("DEL", "ctr-a", Some(&a), &here).map(|_| ())
}
