//! A nat table the plugin's save tool cannot read: DEL must fail or leave
//! nothing of the container, never succeed with its rules left.

use std::path::PathBuf;

use serde_json::json;

use super::ctx::{ensure, maps, Ctx, Firewall, Scenario};
use crate::toolpath::IptablesVariant;

pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "unreadable-nat",
        description: "DEL while the nat table cannot be read fails or leaves nothing; once readable, DEL cleans up",
        not_applicable: iptables_only,
        body: unreadable_nat,
    }]
}

fn iptables_only(ctx: &Ctx) -> Option<String> {
    (ctx.firewall == Firewall::Nftables)
        .then(|| "the nftables backend reads no iptables table".to_string())
}

/// The save tools of a variant a cell's PATH may offer.
fn saves(variant: IptablesVariant) -> [String; 4] {
    let v = variant.as_str();
    [
        "iptables-save".to_string(),
        "ip6tables-save".to_string(),
        format!("iptables-{v}-save"),
        format!("ip6tables-{v}-save"),
    ]
}

/// How the nat table was made unreadable, to undo it.
#[derive(Default)]
struct Broken {
    /// Families (`ip`, `ip6`) whose nat table has a chain `foreign` with
    /// a rule iptables-nft-save cannot translate.
    foreign: Vec<&'static str>,
    /// Save tools replaced by failing ones: (name, what it was).
    tools: Vec<(String, PathBuf)>,
}

/// iptables-nft: a rule made with nft in `ip nat` and `ip6 nat` that the
/// save tool cannot translate (it exits non-zero). Legacy, or an
/// iptables-nft old enough to print such a rule somehow: failing save
/// tools in the cell's PATH.
fn break_reads(ctx: &Ctx) -> Result<Broken, String> {
    let mut broken = Broken::default();
    let Firewall::Iptables(variant) = ctx.firewall else {
        return Ok(broken);
    };
    if variant == IptablesVariant::Nft {
        for family in ["ip", "ip6"] {
            for args in [
                vec!["add", "table", family, "nat"],
                vec!["add", "chain", family, "nat", "foreign"],
                vec![
                    "add", "rule", family, "nat", "foreign", "meta", "mark", "set", "1",
                ],
            ] {
                ctx.host().exec("nft", &args).map_err(|e| e.to_string())?;
            }
            broken.foreign.push(family);
        }
        let still_reads = ["iptables-nft-save", "ip6tables-nft-save"].iter().any(|t| {
            let tool = ctx.tools.path().join(t);
            ctx.host()
                .exec(&tool.to_string_lossy(), &["-t", "nat"])
                .is_ok()
        });
        if !still_reads {
            return Ok(broken);
        }
    }
    for tool in saves(variant) {
        if let Some(was) = ctx.tools.break_tool(&tool).map_err(|e| e.to_string())? {
            broken.tools.push((tool, was));
        }
    }
    Ok(broken)
}

fn repair(ctx: &Ctx, broken: Broken) -> Result<(), String> {
    for (tool, was) in broken.tools {
        ctx.tools.put_back(&tool, &was).map_err(|e| e.to_string())?;
    }
    for family in broken.foreign {
        for verb in ["flush", "delete"] {
            ctx.host()
                .exec("nft", &[verb, "chain", family, "nat", "foreign"])
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn has_rules_of_a(rules: &str) -> bool {
    rules.contains("ctr-a") || rules.contains("CNI-DN-")
}

fn unreadable_nat(ctx: &Ctx) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let cfg = ctx.config(a.prev_result(true, true), maps("tcp", [8080]), json!({}));
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    let broken = break_reads(ctx)?;
    let del = ctx.run_with(
        &ctx.plugin,
        "DEL",
        "ctr-a",
        a.ns.path().display().to_string(),
        &cfg,
    )?;
    // The dump reads through nft and the system's own tools: it sees what
    // the plugin could not.
    let left = ctx.ruleset();
    ensure(!del.ok() || !has_rules_of_a(&left), || {
        "DEL exited 0 while the nat table could not be read, and left the container's rules"
            .to_string()
    })?;
    repair(ctx, broken)?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg)?;
    ensure(!has_rules_of_a(&ctx.ruleset()), || {
        "DEL after the table was readable again left the container's rules".to_string()
    })
}
