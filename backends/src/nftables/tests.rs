use super::render::{add_skeleton, expected_rules, wiring_shapes};
use super::*;
use crate::plan::tests::{golden_request, neighbour};
use crate::plan::FamilyPlan;
use crate::{MasqMark, Protocol, Request};
use rstest::rstest;

/// The rules an ADD of `req` installs, as `list table` gives them back.
fn listed_after_add(req: &Request) -> Vec<(Family, Vec<Listed>)> {
    let plan = Plan::new(req);
    plan.families
        .iter()
        .map(|fam| {
            let rules = expected_rules(fam)
                .expect("rules")
                .into_iter()
                .enumerate()
                .map(|(i, (chain, expr))| Listed {
                    chain: chain.to_string(),
                    handle: i as u32,
                    comment: Some(req.key.container_id.clone()),
                    expr,
                })
                .collect();
            (fam.family, rules)
        })
        .collect()
}

fn sorted_rules(fam: &FamilyPlan) -> Vec<String> {
    let mut v: Vec<String> = expected_rules(fam)
        .expect("rules")
        .iter()
        .map(|r| serde_json::to_string(r).expect("json"))
        .collect();
    v.sort();
    v
}

/// Reading rules back and re-planning them gives the same rules: what
/// `portmap migrate` relies on.
#[rstest]
#[case::golden(golden_request())]
#[case::masq_all(Request { masq_all: true, ..golden_request() })]
#[case::snat_off(Request { snat: false, ..golden_request() })]
#[case::ranges(crate::plan::tests::ranged_request())]
fn rules_read_back_re_plan_identically(#[case] req: Request) {
    let listed = containers(&listed_after_add(&req));
    assert_eq!(listed.len(), 1);
    let c = &listed[0];
    assert_eq!((c.network.as_deref(), c.options.conditions), (None, false));
    let nft = Nftables::new("/nonexistent/nft".into());
    let back = crate::migrate::request_of(c, None, &nft, |_| None).expect("request");
    assert_eq!((back.snat, back.masq_all), (req.snat, req.masq_all));
    assert_eq!(back.mark, MasqMark::default());
    let (want, got) = (Plan::new(&req), Plan::new(&back));
    for fam in &want.families {
        let again = got.family(fam.family).expect("family");
        assert_eq!(sorted_rules(again), sorted_rules(fam));
    }
}

#[test]
fn conditions_are_noticed() {
    let req = Request {
        conditions_v4: vec!["iifname != \"lo\"".into()],
        ..golden_request()
    };
    let listed = containers(&listed_after_add(&req));
    assert!(listed[0].options.conditions);
    let plain = containers(&listed_after_add(&golden_request()));
    assert!(!plain[0].options.conditions);
}

#[test]
fn conditions_parse_into_matches() {
    let got = parse_conditions(&["ip saddr 192.0.2.0/24".into(), "iifname != eth0".into()])
        .expect("parses");
    let json = serde_json::to_string(&got).expect("json");
    assert_eq!(
        json,
        r#"[{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.0.2.0","len":24}},"op":"=="}},{"match":{"left":{"meta":{"key":"iifname"}},"right":"eth0","op":"!="}}]"#
    );
}

#[test]
fn conditions_refuse_unknown_selectors() {
    let err = parse_conditions(&["frobnicate 3".into()]).expect_err("refused");
    assert!(
        err.to_string().contains("unknown selector \"frobnicate\""),
        "{err}"
    );
    let err = parse_conditions(&["ip saddr".into()]).expect_err("refused");
    assert!(err.to_string().contains("without a value"), "{err}");
}

#[test]
fn table_comment_is_added_to_table_objects_only() {
    let mut batch = Batch::new();
    add_skeleton(&mut batch, Family::V4, true);
    let mut doc = serde_json::to_value(batch.to_nftables()).expect("json");
    add_table_comment(&mut doc);
    assert_eq!(
        doc.pointer("/nftables/0/add/table/comment"),
        Some(&TABLE_COMMENT.into())
    );
    assert_eq!(doc.pointer("/nftables/1/add/chain/comment"), None);
}

/// Handles and shapes of the wiring rules, per family: equal handles mean
/// an ADD did not rewrite them.
fn wiring(ns: &Netns) -> Vec<(String, u32, kernel::Shape)> {
    ns.run(|| {
        let mut found = Vec::new();
        for family in [Family::V4, Family::V6] {
            for chain in [HOSTPORTS_ALL, PREROUTING, OUTPUT] {
                for r in kernel::rules(family, Some(chain)).expect("dump") {
                    found.push((format!("{family:?} {}", r.chain), r.handle, r.shape));
                }
            }
        }
        found
    })
    .expect("in netns")
}

use portmap_conformance::netns::{prerequisites, Netns};

/// An ADD of a new container on a whole skeleton sends only its own rules
/// (the wiring keeps its handles: no chain re-added, nothing flushed, so
/// no kernel grace period to wait for); a skeleton someone broke is sent
/// again whole and comes back as we install it.
#[test]
fn an_add_leaves_a_whole_skeleton_alone_and_repairs_a_broken_one() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-skeleton").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    ns.run(|| {
        nft.install(&Plan::new(&golden_request()), None)
            .expect("first add")
    })
    .expect("in netns");
    let before = wiring(&ns);
    let shapes: Vec<kernel::Shape> = before.iter().map(|w| w.2.clone()).collect();
    let per_family: Vec<kernel::Shape> = wiring_shapes().into_iter().flat_map(|(_, s)| s).collect();
    assert_eq!(
        shapes,
        [per_family.clone(), per_family].concat(),
        "the kernel shows our wiring"
    );
    ns.run(|| {
        assert!(skeleton_intact(Family::V4, true).expect("v4"));
        assert!(skeleton_intact(Family::V6, true).expect("v6"));
        assert!(kernel::has_chain(Family::V4, MASQUERADING).expect("lookup"));
        assert!(!kernel::has_chain(Family::V4, "no-such-chain").expect("lookup"));
        nft.install(&neighbour("second", 6), None)
            .expect("second add");
    })
    .expect("in netns");
    assert_eq!(wiring(&ns), before, "the wiring was left alone");

    // An older layout: prerouting jumps without the fib guard.
    ns.exec("nft", &["flush", "chain", "ip", TABLE, PREROUTING])
        .expect("flush");
    ns.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            TABLE,
            PREROUTING,
            "jump",
            HOSTPORTS_ALL,
        ],
    )
    .expect("unguarded jump");
    ns.run(|| {
        assert!(!skeleton_intact(Family::V4, true).expect("v4"));
        nft.install(&neighbour("third", 7), None)
            .expect("third add");
        assert!(skeleton_intact(Family::V4, true).expect("v4 repaired"));
        for id in ["golden-1", "second", "third"] {
            assert!(
                kernel::rules(Family::V4, None)
                    .expect("dump")
                    .iter()
                    .any(|r| r.owner() == Some(id)),
                "{id} kept its rules"
            );
        }
    })
    .expect("in netns");
}

/// The read found the skeleton whole, but it is gone when the transaction
/// runs (a reload in between; here an nft that fails once): nothing was
/// applied, so ADD reads again and sends the whole skeleton.
#[test]
fn a_trimmed_add_that_fails_is_sent_again_with_the_whole_skeleton() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-retry").expect("netns");
    let real = Nftables::from_path().expect("nft");
    let dir = std::env::temp_dir().join(format!("portmap-nft-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let script = dir.join("nft");
    let marker = dir.join("failed-once");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e {m} ]; then exec {nft} \"$@\"; fi\ntouch {m}\n{nft} flush ruleset\nexit 1\n",
            m = marker.display(),
            nft = real.binary().display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let flaky = Nftables::new(script);
    ns.run(|| {
        real.install(&Plan::new(&golden_request()), None)
            .expect("first add");
        assert!(skeleton_intact(Family::V4, true).expect("whole"));
        flaky
            .install(&neighbour("second", 6), None)
            .expect("added on the retry");
        assert!(marker.exists(), "the first transaction failed");
        assert!(skeleton_intact(Family::V4, true).expect("whole again"));
        let owners: Vec<String> = kernel::rules(Family::V4, None)
            .expect("dump")
            .iter()
            .filter_map(|r| r.owner().map(str::to_string))
            .collect();
        assert!(
            owners.iter().all(|o| o == "second") && !owners.is_empty(),
            "{owners:?}"
        );
    })
    .expect("in netns");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The receipt an ADD returns names exactly the container's rules as the
/// kernel lists them; DEL by it takes the receipt's path (not the whole
/// read) and closes the same ports; a receipt made stale by a table made
/// again is refused and DEL reads everything; the last container out
/// takes the table.
#[test]
fn a_receipt_names_the_rules_and_a_stale_one_is_refused() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-receipt").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let golden = Plan::new(&golden_request());
    let (second, third) = (neighbour("second", 6), neighbour("third", 7));
    ns.run(|| {
        let receipt = nft.install(&golden, None).expect("add").expect("a receipt");
        nft.install(&second, None).expect("add second");
        let mut listed: Vec<(Family, String, u64)> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|f| {
                kernel::rules(f, None)
                    .expect("dump")
                    .into_iter()
                    .filter(|r| r.owner() == Some("golden-1"))
                    .map(move |r| (f, r.chain, u64::from(r.handle)))
            })
            .collect();
        let mut named: Vec<(Family, String, u64)> = receipt
            .rules
            .iter()
            .map(|r| (r.family, r.chain.clone(), r.handle))
            .collect();
        listed.sort();
        named.sort();
        assert_eq!(named, listed);

        let mut closed = nft
            .del_by_receipt(&golden.key, &Known::default(), &receipt)
            .expect("del")
            .expect("the receipt holds: its path is taken");
        closed.sort();
        let mut want: Vec<ClosedPort> = golden
            .families
            .iter()
            .flat_map(|f| {
                f.dnats.iter().map(|d| ClosedPort {
                    family: f.family,
                    protocol: d.protocol,
                    host_port: d.host_port,
                })
            })
            .collect();
        want.sort();
        assert_eq!(closed, want);
        let left = kernel::rules(Family::V4, None).expect("dump");
        assert!(left.iter().all(|r| r.owner() != Some("golden-1")));
        assert!(left.iter().any(|r| r.owner() == Some("second")));

        // A reload: the table made again, handles counted from 1 again.
        let stale = nft
            .install(&third, None)
            .expect("add third")
            .expect("receipt");
        nft.del(&second.key, &Known::default(), None)
            .expect("del second");
        nft.del(&third.key, &Known::default(), None)
            .expect("del third");
        nft.install(&second, None).expect("second again");
        nft.install(&third, None).expect("third again");
        assert_eq!(
            nft.del_by_receipt(&third.key, &Known::default(), &stale)
                .expect("checked"),
            None,
            "handles of the old table name other rules now"
        );
        nft.del(&third.key, &Known::default(), Some(&stale))
            .expect("falls back");
        let left = kernel::rules(Family::V4, None).expect("dump");
        assert!(left.iter().all(|r| r.owner() != Some("third")), "{left:?}");
        assert!(left.iter().any(|r| r.owner() == Some("second")));
    })
    .expect("in netns");
}

/// A port range reads back from the kernel as its first and last port
/// (nft 1.0.6 writes `cmp gte` + `cmp lte`), and DEL by receipt reports
/// every port of it closed (the UDP conntrack flush needs them all).
#[test]
fn ranges_read_back_from_the_kernel_and_close_every_port() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-ranges").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let plan = Plan::new(&crate::plan::tests::ranged_request());
    ns.run(|| {
        let receipt = nft.install(&plan, None).expect("add").expect("a receipt");
        for fam in &plan.families {
            let mut got: Vec<(Protocol, u16, u16)> = kernel::rules(fam.family, None)
                .expect("dump")
                .into_iter()
                .filter_map(|r| r.port)
                .collect();
            let mut want: Vec<(Protocol, u16, u16)> = fam
                .runs()
                .iter()
                .map(|r| (r.protocol, r.first, r.last))
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{:?}", fam.family);
            assert!(want.iter().any(|(_, a, b)| b - a == 999));
        }
        let mut closed = nft
            .del_by_receipt(&plan.key, &Known::default(), &receipt)
            .expect("del")
            .expect("the receipt holds");
        closed.sort();
        let mut want: Vec<ClosedPort> = plan
            .families
            .iter()
            .flat_map(|f| {
                f.dnats.iter().map(|d| ClosedPort {
                    family: f.family,
                    protocol: d.protocol,
                    host_port: d.host_port,
                })
            })
            .collect();
        want.sort();
        assert_eq!(closed, want);
    })
    .expect("in netns");
}

/// The other encoding of `tcp dport 20000-24999`: one `range` expression
/// (NFTA_RANGE_*), as netlink carries it, hand-built.
#[test]
fn a_range_expression_reads_as_its_bounds() {
    use super::tests::hand_built::{be, expr, value};
    use crate::nfnetlink::attr;
    let list = [
        expr("meta", vec![attr(2, &be(16)), attr(1, &be(1))]),
        expr(
            "cmp",
            vec![attr(1, &be(1)), attr(2, &be(0)), attr(3, &value(&[17]))],
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
            "range",
            vec![
                attr(1, &be(1)),
                attr(2, &be(0)),
                attr(3, &value(&20000u16.to_be_bytes())),
                attr(4, &value(&24999u16.to_be_bytes())),
            ],
        ),
    ]
    .concat();
    assert_eq!(
        kernel::port_of(&kernel::exprs(&list)),
        Some((Protocol::Udp, 20000, 24999))
    );
}

/// `check_all` (one read per family, indexed) says of every plan what
/// `check` says of it alone: whole, never installed, and with the
/// per-container chains flushed.
#[test]
fn check_all_agrees_with_check_plan_by_plan() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let nft = Nftables::from_path().expect("nft");
    let golden = Plan::new(&golden_request());
    let (second, third, absent) = (
        neighbour("second", 6),
        neighbour("third", 7),
        neighbour("absent", 8),
    );
    let ns = Netns::new("nft-check-all").expect("netns");
    let verdicts = |ns: &Netns| {
        ns.run(|| {
            let plans = [&second, &golden, &third, &absent];
            let one_by_one: Vec<Verdict> =
                plans.iter().map(|p| nft.check(p).expect("check")).collect();
            (nft.check_all(&plans).expect("check_all"), one_by_one)
        })
        .expect("in netns")
    };
    ns.run(|| {
        for plan in [&second, &golden, &third] {
            nft.add(plan).expect("add");
        }
    })
    .expect("in netns");
    let (all, each) = verdicts(&ns);
    assert_eq!(all, each);
    assert_eq!(all[..3], [Verdict::Whole, Verdict::Whole, Verdict::Whole]);
    assert!(matches!(&all[3], Verdict::Damaged(_)), "{all:?}");
    ns.exec("nft", &["flush", "chain", "ip", TABLE, HOSTPORTS])
        .expect("flush");
    let (all, each) = verdicts(&ns);
    assert_eq!(all, each);
    assert!(
        all.iter().all(|v| matches!(v, Verdict::Damaged(_))),
        "{all:?}"
    );
}

/// Hand-built netlink for tests: an expression `name` with `data`
/// (NFTA_LIST_ELEM of NFTA_EXPR_NAME, NFTA_EXPR_DATA), a u32 in network
/// order, a nested NFTA_DATA_VALUE.
pub(super) mod hand_built {
    use crate::nfnetlink::{attr, nul_terminated};

    pub fn expr(name: &str, data: Vec<Vec<u8>>) -> Vec<u8> {
        attr(
            1,
            &[attr(1, &nul_terminated(name)), attr(2, &data.concat())].concat(),
        )
    }

    pub fn be(v: u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    pub fn value(v: &[u8]) -> Vec<u8> {
        attr(1, v)
    }
}
