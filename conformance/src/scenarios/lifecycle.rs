//! Container lifecycles: re-ADD, reused IPs, DEL idempotence, CHECK after
//! damage, stale conntrack, the fib guard, GC, parallel ADDs, interop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;

use super::ctx::{always, ensure, maps, Ctx, Firewall, Scenario, NET};
use super::reach::with_container;
use crate::matrix::Axis;
use crate::topology::{HOST_V4, REMOTE_V4};
use crate::traffic::{udp_ask, EchoServer};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario { name: "re-add", description: "ADD twice: no duplicate rule, traffic works", not_applicable: always, body: re_add },
        Scenario { name: "reused-ip-overlap", description: "ADD A (IP X), ADD B (IP X, same port), late DEL A: B keeps working", not_applicable: always, body: reused_overlap },
        Scenario { name: "reused-ip-disjoint", description: "ADD A (IP X), ADD B (IP X, other port), late DEL A: B keeps working, A's port closes", not_applicable: always, body: reused_disjoint },
        Scenario { name: "del-idempotent", description: "DEL without ADD, twice, and after the container namespace is gone", not_applicable: always, body: del_idempotent },
        Scenario { name: "check-detects-damage", description: "CHECK fails after an external rule flush and passes after re-ADD", not_applicable: always, body: check_detects_damage },
        Scenario { name: "stale-udp-conntrack", description: "a UDP flow to a hostPort follows the switch from container A to B (ours also: 1,000 ports, flows to first/middle/last)", not_applicable: always, body: stale_udp },
        Scenario { name: "fib-guard", description: "traffic forwarded through the host to a non-local address is not DNATed", not_applicable: always, body: fib_guard },
        Scenario { name: "gc", description: "GC removes every container not in cni.dev/valid-attachments, keeps the rest", not_applicable: always, body: gc },
        Scenario { name: "parallel-add", description: "10 containers ADDed at once all work", not_applicable: always, body: parallel_add },
        Scenario { name: "interop-ours-then-reference", description: "ADD by the plugin, DEL by the reference binary", not_applicable: needs_reference, body: interop_ours_first },
        Scenario { name: "interop-reference-then-ours", description: "ADD by the reference binary, CHECK and DEL by the plugin", not_applicable: needs_reference, body: interop_reference_first },
    ]
}

fn h4() -> IpAddr {
    IpAddr::V4(HOST_V4)
}

/// Interop needs a reference, and one that can have written the rules:
/// a binary speaking only CNI <= 1.0.0 predates portmap's nftables
/// backend (upstream v1.5), so it is compared on iptables cells only.
pub(super) fn needs_reference(ctx: &Ctx) -> Option<String> {
    let Some(reference) = &ctx.reference else {
        return Some("no --reference binary given".to_string());
    };
    if ctx.axis == Axis::NftablesMaps {
        return Some(
            "upstream's binary cannot delete map elements (portmap migrate --layout rules first)"
                .to_string(),
        );
    }
    if ctx.axis == Axis::IptablesNftTree {
        return Some(
            "upstream's DEL fails on a chain a tree leaf jumps to (portmap migrate --layout rules first)"
                .to_string(),
        );
    }
    if ctx.firewall != Firewall::Nftables {
        return None;
    }
    let speaks_1_1 = crate::cni::speaks_cni_1_1(reference);
    (!speaks_1_1).then(|| "reference predates nftables support (no CNI 1.1.0)".to_string())
}

fn re_add(ctx: &Ctx) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let _srv = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let cfg = ctx.config(
        a.prev_result(true, true),
        maps("tcp", [8080, 8081]),
        json!({}),
    );
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    let once = ctx.ruleset();
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    let twice = ctx.ruleset();
    ensure(once == twice, || {
        "the second ADD changed the ruleset (duplicates?)".to_string()
    })?;
    ctx.expect_answer(ctx.host(), h4(), 8081, "a")?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg).map(|_| ())
}

fn reused(ctx: &Ctx, overlap: bool) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let cfg_a = ctx.config(a.prev_result(true, false), maps("tcp", [8080]), json!({}));
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg_a)?;
    drop(a); // A dies without a DEL
    let b = ctx.container("b", 5)?;
    let _srv = EchoServer::start(&b.ns, "b", 80).map_err(|e| e.to_string())?;
    let ports: Vec<u16> = if overlap {
        vec![8080, 8081]
    } else {
        vec![8081]
    };
    let cfg_b = ctx.config(b.prev_result(true, false), maps("tcp", ports), json!({}));
    ctx.ok("ADD", "ctr-b", Some(&b), &cfg_b)?;
    ctx.ok("DEL", "ctr-a", None, &cfg_a)?; // the late DEL
    ctx.expect_answer(ctx.host(), h4(), 8081, "b")?;
    if overlap {
        ctx.expect_answer(ctx.host(), h4(), 8080, "b")?;
    } else {
        ctx.expect_silence(ctx.host(), h4(), 8080)?;
    }
    ctx.ok("CHECK", "ctr-b", Some(&b), &cfg_b)?;
    ctx.ok("DEL", "ctr-b", Some(&b), &cfg_b).map(|_| ())
}

fn reused_overlap(ctx: &Ctx) -> Result<(), String> {
    reused(ctx, true)
}

fn reused_disjoint(ctx: &Ctx) -> Result<(), String> {
    reused(ctx, false)
}

fn del_idempotent(ctx: &Ctx) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let cfg = ctx.config(a.prev_result(true, true), maps("tcp", [8080]), json!({}));
    ctx.ok("DEL", "never-added", None, &cfg)?;
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg)?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg)?;
    let gone = a.ns.path().display().to_string();
    drop(a);
    let out = ctx.run_with(&ctx.plugin, "DEL", "ctr-a", gone, &cfg)?;
    ensure(out.ok(), || {
        format!("DEL after the namespace is gone failed: {}", out.summary())
    })?;
    let after = ctx.ruleset();
    ensure(
        !after.contains("ctr-a") && !after.contains("CNI-DN-"),
        || "DEL left the container's rules".to_string(),
    )
}

/// Flushes the container's rules behind the plugin's back, as a firewall
/// reload does.
fn damage(ctx: &Ctx) -> Result<(), String> {
    let h = ctx.host();
    if ctx.firewall == Firewall::Nftables
        && h.exec("nft", &["list", "table", "ip", "cni_hostport"])
            .is_ok()
    {
        return h
            .exec(
                "nft",
                &["flush", "chain", "ip", "cni_hostport", "hostports"],
            )
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let v = ctx.firewall.iptables_suffix();
    let save = h
        .exec(&format!("iptables-{v}-save"), &["-t", "nat"])
        .map_err(|e| e.to_string())?;
    let chain = save
        .lines()
        .find_map(|l| l.strip_prefix(':').filter(|c| c.starts_with("CNI-DN-")))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("no CNI-DN- chain to damage")?;
    h.exec(&format!("iptables-{v}"), &["-t", "nat", "-F", chain])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn check_detects_damage(ctx: &Ctx) -> Result<(), String> {
    let a = ctx.container("a", 5)?;
    let _srv = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let cfg = ctx.config(a.prev_result(true, false), maps("tcp", [8080]), json!({}));
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    damage(ctx)?;
    let out = ctx.run_with(
        &ctx.plugin,
        "CHECK",
        "ctr-a",
        a.ns.path().display().to_string(),
        &cfg,
    )?;
    ensure(!out.ok(), || {
        "CHECK passed after the rules were flushed".to_string()
    })?;
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg)?;
    ctx.ok("CHECK", "ctr-a", Some(&a), &cfg)?;
    ctx.expect_answer(ctx.host(), h4(), 8080, "a")?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg).map(|_| ())
}

fn stale_udp(ctx: &Ctx) -> Result<(), String> {
    let to = SocketAddr::new(h4(), 5353);
    let ask = |want: &str| -> Result<(), String> {
        let got =
            udp_ask(ctx.host(), to, 40000, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        ensure(got.as_ref().is_some_and(|g| g.tag == want), || {
            format!("udp flow answered by {got:?}, expected {want}")
        })
    };
    let a = ctx.container("a", 5)?;
    let srv_a = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let cfg_a = ctx.config(a.prev_result(true, false), maps("udp", [5353]), json!({}));
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg_a)?;
    ask("a")?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg_a)?;
    drop(srv_a);
    let b = ctx.container("b", 6)?;
    let _srv_b = EchoServer::start(&b.ns, "b", 80).map_err(|e| e.to_string())?;
    let cfg_b = ctx.config(b.prev_result(true, false), maps("udp", [5353]), json!({}));
    ctx.ok("ADD", "ctr-b", Some(&b), &cfg_b)?;
    ask("b")?; // same source port: same conntrack tuple as before
    ctx.ok("DEL", "ctr-b", Some(&b), &cfg_b)?;
    drop((b, _srv_b));
    // Upstream's one process per rule makes 1,000 mappings outlast the
    // cell's time limit (v1.1.1: about 130 s for one iptables ADD).
    if ctx.binary == crate::matrix::OURS {
        stale_udp_many(ctx)?;
    }
    Ok(())
}

/// 1,000 UDP hostPorts: flows to the first, middle and last one go to A;
/// B is ADDed on the same ports while A's rules still stand (the newest
/// container wins): the conntrack entries leading to A are stale, and
/// B's ADD must remove them, or A (still listening) keeps answering.
fn stale_udp_many(ctx: &Ctx) -> Result<(), String> {
    const FIRST: u16 = 6000;
    const COUNT: u16 = 1000;
    let probes = [FIRST, FIRST + COUNT / 2, FIRST + COUNT - 1];
    let ask = |want: &str| -> Result<(), String> {
        for (k, port) in probes.iter().enumerate() {
            let to = SocketAddr::new(h4(), *port);
            let from = 41000 + k as u16;
            let got =
                udp_ask(ctx.host(), to, from, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            ensure(got.as_ref().is_some_and(|g| g.tag == want), || {
                format!("udp flow {from} -> {to} of 1,000 mapped ports answered by {got:?}, expected {want}")
            })?;
        }
        Ok(())
    };
    let ports = || FIRST..FIRST + COUNT;
    let a = ctx.container("many-a", 7)?;
    let _srv_a = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let cfg_a = ctx.config(a.prev_result(true, false), maps("udp", ports()), json!({}));
    ctx.ok("ADD", "ctr-many-a", Some(&a), &cfg_a)?;
    ask("a")?;
    let to_a = |want: bool| -> Result<(), String> {
        for k in 0..probes.len() {
            let sport = (41000 + k).to_string();
            let listed = ctx
                .host()
                .exec("conntrack", &["-L", "-p", "udp", "--sport", &sport])
                .map_err(|e| e.to_string())?;
            let found = listed.contains(&format!("src={} ", a.v4));
            ensure(found == want, || {
                format!("conntrack entry of source port {sport} to A present: {found}, expected {want}:\n{listed}")
            })?;
        }
        Ok(())
    };
    to_a(true)?;
    let b = ctx.container("many-b", 8)?;
    let _srv_b = EchoServer::start(&b.ns, "b", 80).map_err(|e| e.to_string())?;
    let cfg_b = ctx.config(b.prev_result(true, false), maps("udp", ports()), json!({}));
    ctx.ok("ADD", "ctr-many-b", Some(&b), &cfg_b)?;
    to_a(false)?;
    ask("b")?;
    ctx.ok("DEL", "ctr-many-a", Some(&a), &cfg_a)?;
    ask("b")?; // A's DEL leaves B's rules and flows alone
    ctx.ok("DEL", "ctr-many-b", Some(&b), &cfg_b).map(|_| ())
}

fn fib_guard(ctx: &Ctx) -> Result<(), String> {
    let remote = ctx.topo.remote().map_err(|e| e.to_string())?;
    let _remote_srv = EchoServer::start(&remote, "remote", 8080).map_err(|e| e.to_string())?;
    let b = ctx.container("b", 6)?;
    with_container(ctx, true, false, maps("tcp", [8080]), json!({}), |_| {
        // b → 10.77.0.2:8080 passes through the host's PREROUTING.
        ctx.expect_answer(&b.ns, IpAddr::V4(REMOTE_V4), 8080, "remote")
            .map(|_| ())
    })
}

fn gc(ctx: &Ctx) -> Result<(), String> {
    let cs = (0..3)
        .map(|i| ctx.container(&format!("c{i}"), 10 + i))
        .collect::<Result<Vec<_>, _>>()?;
    let _srv = EchoServer::start(&cs[1].ns, "keep", 80).map_err(|e| e.to_string())?;
    for (i, c) in cs.iter().enumerate() {
        let cfg = ctx.config(
            c.prev_result(true, false),
            maps("tcp", [8000 + i as u16]),
            json!({}),
        );
        ctx.ok("ADD", &format!("ctr-{i}"), Some(c), &cfg)?;
    }
    // In the cell's backend, as the runtime's conflist would say it.
    let gc = ctx.gc_config(NET, &[("ctr-1", "eth0")]);
    ctx.ok("GC", "", None, &gc)?;
    ctx.expect_answer(ctx.host(), h4(), 8001, "keep")?;
    let rules = ctx.ruleset();
    ensure(!rules.contains("ctr-0") && !rules.contains("ctr-2"), || {
        "GC kept an invalid attachment".to_string()
    })?;
    ctx.ok("GC", "", None, &gc).map(|_| ())
}

fn parallel_add(ctx: &Ctx) -> Result<(), String> {
    let cs = (0..10)
        .map(|i| ctx.container(&format!("p{i}"), 20 + i))
        .collect::<Result<Vec<_>, _>>()?;
    let servers = cs
        .iter()
        .enumerate()
        .map(|(i, c)| EchoServer::start(&c.ns, &format!("p{i}"), 80))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = cs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || {
                    let cfg = ctx.config(
                        c.prev_result(true, false),
                        maps("tcp", [8100 + i as u16]),
                        json!({}),
                    );
                    ctx.ok("ADD", &format!("par-{i}"), Some(c), &cfg)
                        .map(|_| ())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("ADD thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    for i in 0..10u16 {
        ctx.expect_answer(ctx.host(), h4(), 8100 + i, &format!("p{i}"))?;
    }
    drop(servers);
    for (i, c) in cs.iter().enumerate() {
        let cfg = ctx.config(
            c.prev_result(true, false),
            maps("tcp", [8100 + i as u16]),
            json!({}),
        );
        ctx.ok("DEL", &format!("par-{i}"), Some(c), &cfg)?;
    }
    Ok(())
}

fn interop(ctx: &Ctx, ours_first: bool) -> Result<(), String> {
    let reference = ctx.reference.clone().ok_or("no reference")?;
    let (adder, deleter) = if ours_first {
        (ctx.plugin.clone(), reference)
    } else {
        (reference, ctx.plugin.clone())
    };
    let a = ctx.container("a", 5)?;
    let _srv = EchoServer::start(&a.ns, "a", 80).map_err(|e| e.to_string())?;
    let cfg = ctx.config(a.prev_result(true, false), maps("tcp", [8080]), json!({}));
    ctx.ok_with(&adder, "ADD", "ctr-a", Some(&a), &cfg)?;
    ctx.expect_answer(ctx.host(), h4(), 8080, "a")?;
    if !ours_first {
        ctx.ok("CHECK", "ctr-a", Some(&a), &cfg)?;
    }
    ctx.ok_with(&deleter, "DEL", "ctr-a", Some(&a), &cfg)?;
    ctx.expect_silence(ctx.host(), h4(), 8080)?;
    let rules = ctx.ruleset();
    ensure(
        !rules.contains("ctr-a") && !rules.contains("CNI-DN-"),
        || format!("{} left the container's rules", deleter.display()),
    )
}

fn interop_ours_first(ctx: &Ctx) -> Result<(), String> {
    interop(ctx, true)
}

fn interop_reference_first(ctx: &Ctx) -> Result<(), String> {
    interop(ctx, false)
}
