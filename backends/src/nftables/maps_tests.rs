//! The maps layout against the real kernel, each test in its own netns.

use super::maps::{expected_elements, has_map, Element, MAP};
use super::*;
use crate::plan::tests::{addr, golden_request};
use crate::{Layout, Protocol, Request};
use portmap_conformance::netns::{prerequisites, Netns};

pub(super) fn maps(req: Request) -> Request {
    Request {
        layout: Layout::Maps,
        ..req
    }
}

/// A container `id` at `ip` mapping tcp `port` to 80, maps layout.
pub(super) fn one(id: &str, ip: &str, port: u16) -> Plan {
    let mut req = maps(golden_request());
    req.key.container_id = id.into();
    req.v4 = Some(addr(ip));
    req.v6 = None;
    req.mappings = vec![crate::plan::tests::mapping(Protocol::Tcp, port, 80, None)];
    Plan::new(&req)
}

pub(super) fn nft_cmd(args: &[&str]) {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .expect("nft runs");
    assert!(out.status.success(), "nft {args:?}: {out:?}");
}

/// The map's elements as ADD and DEL read them (netlink), checked
/// against what `nft -j list map` says.
fn elements(nft: &Nftables, family: Family) -> Vec<Element> {
    let mut e = nft.read_map(family).expect("read").unwrap_or_default();
    e.sort();
    let fam = nf_family_name(family);
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "map", fam, TABLE, MAP])
        .output()
        .expect("nft runs");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let items = doc.get("nftables").and_then(|v| v.as_array());
    let mut listed: Vec<Element> = items
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("map").and_then(super::maps::parse_map))
        .flatten()
        .collect();
    listed.sort();
    assert_eq!(e, listed, "netlink and nft disagree");
    e
}

pub(super) fn damaged(nft: &Nftables, plan: &Plan) -> String {
    match nft.check(plan).expect("check") {
        Verdict::Damaged(why) => why,
        Verdict::Whole => panic!("CHECK passed a damaged container"),
    }
}

/// The golden container in maps: its two any-IP single ports per family
/// become elements (with its ID, read back exactly), the host-IP mapping
/// and masquerading stay rules, and `list` reads the same mappings as the
/// rules layout installs.
#[test]
fn elements_are_rendered_and_read_back_exactly() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-maps-read").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let plan = Plan::new(&maps(golden_request()));
    let (as_rules, as_maps) = ns
        .run(|| {
            let rules_plan = Plan::new(&golden_request());
            nft.install(&rules_plan, None).expect("add as rules");
            let as_rules = nft.list().expect("list");
            nft.del(&rules_plan.key, &Known::default(), None)
                .expect("del");
            nft.install(&plan, None).expect("add as maps");
            for fam in &plan.families {
                let mut want = expected_elements(fam, "golden-1");
                want.sort();
                assert_eq!(want.len(), 2, "tcp and udp 8080 -> 80");
                assert_eq!(elements(&nft, fam.family), want);
                let hostports: Vec<kernel::KernelRule> = kernel::rules(fam.family, Some(HOSTPORTS))
                    .expect("dump")
                    .into_iter()
                    .collect();
                assert_eq!(hostports.len(), 2, "{hostports:?}");
                assert_eq!(hostports[0].owner(), Some("golden-1"), "the host-IP rule");
                assert_eq!(hostports[1].shape, kernel::Shape::MapLookup);
                assert_eq!(hostports[1].comment, None);
            }
            assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);
            (as_rules, nft.list().expect("list"))
        })
        .expect("in netns");
    assert_eq!(as_maps.len(), 1);
    assert!(as_maps[0].options.map_elements);
    assert!(!as_rules[0].options.map_elements);
    assert_eq!(as_maps[0].mappings, as_rules[0].mappings);
    assert_eq!(as_maps[0].options.snat, as_rules[0].options.snat);
}

/// CHECK fails for a missing element, one that leads elsewhere, and a
/// missing lookup rule; an ADD again repairs each.
#[test]
fn check_fails_when_an_element_is_missing_or_points_elsewhere() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-maps-check").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let plan = one("c1", "10.88.0.5/16", 8080);
    ns.run(|| {
        nft.install(&plan, None).expect("add");
        assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);

        nft_cmd(&["delete", "element", "ip", TABLE, MAP, "{ tcp . 8080 }"]);
        let why = damaged(&nft, &plan);
        assert!(
            why.contains("is missing the element tcp . 8080 : 10.88.0.5:80"),
            "{why}"
        );
        nft.install(&plan, Some(&Known::default())).expect("repair");
        assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);

        nft_cmd(&["delete", "element", "ip", TABLE, MAP, "{ tcp . 8080 }"]);
        nft_cmd(&[
            "add",
            "element",
            "ip",
            TABLE,
            MAP,
            "{ tcp . 8080 comment \"c1\" : 10.88.0.9 . 80 }",
        ]);
        let why = damaged(&nft, &plan);
        assert!(
            why.contains("holds element tcp . 8080 : 10.88.0.9:80 of container c1"),
            "{why}"
        );
        nft.install(&plan, Some(&Known::default())).expect("repair");
        assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);
        assert_eq!(
            elements(&nft, Family::V4),
            expected_elements(&plan.families[0], "c1")
        );

        let lookup = kernel::rules(Family::V4, Some(HOSTPORTS))
            .expect("dump")
            .into_iter()
            .find(|r| r.shape == kernel::Shape::MapLookup)
            .expect("lookup rule");
        let handle = lookup.handle.to_string();
        nft_cmd(&["delete", "rule", "ip", TABLE, HOSTPORTS, "handle", &handle]);
        let why = damaged(&nft, &plan);
        assert!(
            why.contains("lacks the lookup of map hostports_map"),
            "{why}"
        );
        let verdicts = nft.check_all(&[&plan]).expect("check all");
        assert!(
            matches!(&verdicts[..], [Verdict::Damaged(w)] if w == &why),
            "{verdicts:?}"
        );
        nft.install(&plan, Some(&Known::default())).expect("repair");
        assert_eq!(
            nft.check_all(&[&plan]).expect("check all"),
            vec![Verdict::Whole]
        );
    })
    .expect("in netns");
}

/// Newest wins: B (same IP, same port) takes A's key; A's late DEL, by
/// receipt or by dump, leaves B's element; B's DEL, the last, takes the
/// map and its lookup rule (and the table, nobody else being there).
#[test]
fn del_removes_only_own_keys_and_the_newest_add_wins() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-maps-del").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let (a, b) = (
        one("a", "10.88.0.5/16", 8080),
        one("b", "10.88.0.5/16", 8080),
    );
    let other = {
        let mut p = one("rules", "10.88.0.7/16", 9090);
        p.families[0].layout = Layout::Rules;
        p
    };
    ns.run(|| {
        let receipt_a = nft.install(&a, None).expect("add a");
        nft.install(&b, None).expect("add b");
        let held = elements(&nft, Family::V4);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].owner.as_deref(), Some("b"));
        // A's key is shadowed by the newer B's, as a rule would be: CHECK
        // passes (a restore must not take the key back for A).
        assert_eq!(nft.check(&a).expect("check a"), Verdict::Whole);

        let closed = nft
            .del(&a.key, &Known::default(), receipt_a.as_ref())
            .expect("late del of a");
        assert!(closed.is_empty(), "a closed nothing: {closed:?}");
        assert_eq!(elements(&nft, Family::V4), held, "b's element stays");
        assert_eq!(nft.check(&b).expect("check b"), Verdict::Whole);

        // With a rules-layout container beside: B's DEL retires the map
        // and lookup rule, the table stays for the other.
        nft.install(&other, None).expect("add other");
        let closed = nft.del(&b.key, &Known::default(), None).expect("del b");
        assert_eq!(closed.len(), 1);
        assert!(!has_map(Family::V4).expect("netlink"));
        let hostports = kernel::rules(Family::V4, Some(HOSTPORTS)).expect("dump");
        assert!(
            hostports.iter().all(|r| r.owner() == Some("rules")),
            "{hostports:?}"
        );
        assert_eq!(nft.check(&other).expect("check other"), Verdict::Whole);

        // Alone in the table: the last DEL takes it all.
        nft.install(&a, None).expect("a again");
        nft.del(&other.key, &Known::default(), None)
            .expect("del other");
        assert!(has_map(Family::V4).expect("netlink"));
        nft.del(&a.key, &Known::default(), None).expect("del a");
        assert!(!kernel::has_chain(Family::V4, HOSTPORTS).expect("netlink"));
    })
    .expect("in netns");
}

/// A rule of another tool in our table naming the masquerade set: the
/// kernel refuses to delete the set, so the DEL that empties the layout
/// deletes elements only and succeeds (it failed with EBUSY at every
/// retry, wedging the container); the last DEL still takes the table.
#[test]
fn a_foreign_rule_naming_the_set_keeps_the_layout_and_the_del_succeeds() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-maps-foreign-ref").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let a = one("a", "10.88.0.5/16", 8080);
    let other = {
        let mut p = one("rules", "10.88.0.7/16", 9090);
        p.families[0].layout = Layout::Rules;
        p
    };
    ns.run(|| {
        nft.install(&a, None).expect("add a");
        nft.install(&other, None).expect("add other");
        nft_cmd(&["add", "chain", "ip", TABLE, "foreign"]);
        let set = format!("@{}", super::masq::MASQ_SET);
        nft_cmd(&[
            "add", "rule", "ip", TABLE, "foreign", "ip", "saddr", ".", "ip", "daddr", &set,
            "counter",
        ]);
        let closed = nft.del(&a.key, &Known::default(), None).expect("del a");
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(has_map(Family::V4).expect("netlink"), "the layout stays");
        assert!(elements(&nft, Family::V4).is_empty(), "a's element went");
        assert!(super::masq::read(Family::V4)
            .expect("set")
            .is_some_and(|e| e.is_empty()));
        assert_eq!(nft.check(&other).expect("check other"), Verdict::Whole);
        nft.del(&other.key, &Known::default(), None)
            .expect("del other");
        assert!(!kernel::has_chain(Family::V4, HOSTPORTS).expect("netlink"));
    })
    .expect("in netns");
}
