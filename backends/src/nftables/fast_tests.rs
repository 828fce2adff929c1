//! The restore pass's netlink fast path (decode.rs, check.rs `Fast`):
//! it proves installed plans whole, never a damaged one, and leaves what
//! it cannot decode to `nft -j`, whose verdicts `check_all` keeps.

use super::*;
use crate::plan::tests::{golden_request, neighbour, ranged_request};
use crate::Request;
use portmap_conformance::netns::{prerequisites, Netns};

/// Whether the fast path alone proves every family of `plan` whole.
fn proven(nft: &Nftables, plan: &Plan) -> bool {
    plan.families
        .iter()
        .filter(|f| !f.dnats.is_empty())
        .all(|fam| {
            nft.fast_read(fam.family)
                .is_some_and(|fast| fast.proves(plan, fam))
        })
}

fn variants() -> Vec<Request> {
    let golden = golden_request();
    vec![
        golden.clone(),
        Request {
            masq_all: true,
            ..golden.clone()
        },
        Request {
            snat: false,
            ..golden.clone()
        },
        Request {
            key: ContainerKey {
                container_id: "ranged-1".into(),
                ..golden.key.clone()
            },
            ..ranged_request()
        },
        // The maps layout: host-IP rules, elements and masquerade set.
        Request {
            layout: crate::Layout::Maps,
            ..golden.clone()
        },
    ]
}

#[test]
fn installed_plans_are_proven_whole_over_netlink() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let nft = Nftables::from_path().expect("nft");
    for req in variants() {
        let plan = Plan::new(&req);
        let second = neighbour("second", 6);
        let ns = Netns::new("nft-fast-whole").expect("netns");
        let (proofs, verdicts) = ns
            .run(|| {
                nft.add(&second).expect("add second");
                nft.add(&plan).expect("add");
                let proofs = [proven(&nft, &plan), proven(&nft, &second)];
                (proofs, nft.check_all(&[&plan, &second]).expect("check_all"))
            })
            .expect("in netns");
        assert_eq!(
            proofs,
            [true, true],
            "snat {} masqAll {}",
            req.snat,
            req.masq_all
        );
        assert_eq!(verdicts, [Verdict::Whole, Verdict::Whole]);
    }
}

/// The handle of the first rule in `chain` of `family` listing `needle`.
fn handle_of(ns: &Netns, family: &str, chain: &str, needle: &str) -> String {
    let text = ns
        .exec("nft", &["-a", "list", "chain", family, TABLE, chain])
        .expect("list chain");
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in:\n{text}"));
    line.rsplit("# handle ")
        .next()
        .expect("handle")
        .trim()
        .to_string()
}

/// Each damage, on a fresh table of golden-1 beside `second`: `check_all`
/// says what `check` says of each plan, golden-1 is damaged and not
/// proven, `second` stays whole.
#[test]
fn damage_is_never_proven_and_check_all_keeps_checks_words() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let nft = Nftables::from_path().expect("nft");
    let golden = Plan::new(&golden_request());
    let second = neighbour("second", 6);
    let c = "\"golden-1\"";
    let damages: Vec<(&str, Vec<&str>)> = vec![
        (
            "changed port",
            vec!["tcp", "dport", "8080", "dnat", "to", "10.88.0.5:81"],
        ),
        (
            "changed address",
            vec!["tcp", "dport", "8080", "dnat", "to", "10.88.0.9:80"],
        ),
        (
            "a condition",
            vec![
                "iifname",
                "\"eth0\"",
                "tcp",
                "dport",
                "8080",
                "dnat",
                "to",
                "10.88.0.5:80",
            ],
        ),
        (
            "a counter",
            vec![
                "tcp",
                "dport",
                "8080",
                "counter",
                "dnat",
                "to",
                "10.88.0.5:80",
            ],
        ),
        ("removed", vec![]),
        (
            "extra",
            vec!["tcp", "dport", "7777", "dnat", "to", "10.88.0.5:77"],
        ),
        (
            "masquerade",
            vec![
                "ip",
                "saddr",
                "10.88.0.5",
                "ip",
                "daddr",
                "10.88.0.5",
                "snat",
                "to",
                "1.2.3.4",
            ],
        ),
    ];
    for (what, rule) in damages {
        let ns = Netns::new("nft-fast-damage").expect("netns");
        ns.run(|| {
            nft.add(&second).expect("add second");
            nft.add(&golden).expect("add");
        })
        .expect("in netns");
        let (chain, needle) = match what {
            "masquerade" => (MASQUERADING, "golden-1"),
            _ => (
                HOSTPORTS,
                "dport 8080 dnat to 10.88.0.5:80 comment \"golden-1\"",
            ),
        };
        let handle = handle_of(&ns, "ip", chain, needle);
        let mut args = match what {
            "removed" => vec!["delete", "rule", "ip", TABLE, chain, "handle", &handle],
            "extra" => vec!["add", "rule", "ip", TABLE, chain],
            _ => vec!["replace", "rule", "ip", TABLE, chain, "handle", &handle],
        };
        if what != "removed" {
            args.extend(rule);
            args.extend(["comment", c]);
        }
        ns.exec("nft", &args)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (proofs, all, each) = ns
            .run(|| {
                let plans = [&golden, &second];
                let each: Vec<Verdict> =
                    plans.iter().map(|p| nft.check(p).expect("check")).collect();
                let proofs = [proven(&nft, &golden), proven(&nft, &second)];
                (proofs, nft.check_all(&plans).expect("check_all"), each)
            })
            .expect("in netns");
        assert_eq!(proofs, [false, true], "{what}");
        assert_eq!(all, each, "{what}");
        assert!(matches!(&all[0], Verdict::Damaged(_)), "{what}: {all:?}");
        assert_eq!(all[1], Verdict::Whole, "{what}");
    }
}

/// A plan with conditions is compared by `nft -j` only, and is whole.
#[test]
fn a_plan_with_conditions_takes_the_slow_path() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let nft = Nftables::from_path().expect("nft");
    let plan = Plan::new(&Request {
        conditions_v4: vec!["iifname \"eth0\"".into()],
        ..golden_request()
    });
    let ns = Netns::new("nft-fast-conditions").expect("netns");
    let (v4_proven, verdicts) = ns
        .run(|| {
            nft.add(&plan).expect("add");
            let fam = plan
                .families
                .iter()
                .find(|f| f.family == Family::V4)
                .expect("v4");
            let fast = nft.fast_read(Family::V4).expect("wired");
            (
                fast.proves(&plan, fam),
                nft.check_all(&[&plan]).expect("check_all"),
            )
        })
        .expect("in netns");
    assert!(!v4_proven);
    assert_eq!(verdicts, [Verdict::Whole]);
}

/// `tcp dport 8080 dnat to 10.88.0.5:80` hand-built as netlink carries
/// it decodes; the same with the port loaded into the address's register
/// (which would send to a wrong address) or a trailing expression does not.
#[test]
fn only_the_exact_expression_sequence_decodes() {
    use super::tests::hand_built::{be, expr, value};
    use crate::nfnetlink::{attr, nul_terminated};
    let rule = |port_reg: u32, tail: Vec<u8>| {
        let list = [
            expr("meta", vec![attr(1, &be(1)), attr(2, &be(16))]),
            expr(
                "cmp",
                vec![attr(1, &be(1)), attr(2, &be(0)), attr(3, &value(&[6]))],
            ),
            expr(
                "payload",
                vec![
                    attr(1, &be(1)),
                    attr(2, &be(2)),
                    attr(3, &be(2)),
                    attr(4, &be(2)),
                ],
            ),
            expr(
                "cmp",
                vec![
                    attr(1, &be(1)),
                    attr(2, &be(0)),
                    attr(3, &value(&8080u16.to_be_bytes())),
                ],
            ),
            expr(
                "immediate",
                vec![attr(1, &be(1)), attr(2, &value(&[10, 88, 0, 5]))],
            ),
            expr(
                "immediate",
                vec![
                    attr(1, &be(port_reg)),
                    attr(2, &value(&80u16.to_be_bytes())),
                ],
            ),
            expr(
                "nat",
                vec![
                    attr(1, &be(1)),
                    attr(2, &be(2)),
                    attr(3, &be(1)),
                    attr(4, &be(1)),
                    attr(5, &be(port_reg)),
                    attr(6, &be(port_reg)),
                    attr(7, &be(3)),
                ],
            ),
            tail,
        ]
        .concat();
        let body = [
            vec![2, 0, 0, 0],
            attr(2, &nul_terminated(HOSTPORTS)),
            attr(4, &list),
        ]
        .concat();
        decode::decode_body(Family::V4, &body)
    };
    assert_eq!(
        rule(2, vec![]),
        Some(decode::Decoded::Dnat {
            host_ip: None,
            protocol: crate::Protocol::Tcp,
            first: 8080,
            last: 8080,
            addr: "10.88.0.5".parse().expect("ip"),
            port: Some(80),
        })
    );
    assert_eq!(rule(1, vec![]), None, "port over the address");
    assert_eq!(
        rule(2, expr("counter", vec![])),
        None,
        "an extra expression"
    );
}
