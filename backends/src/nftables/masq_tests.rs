//! The maps layout's masquerade set against the real kernel, each test in
//! its own netns.

use super::maps::MAP;
use super::maps_tests::{damaged, maps, nft_cmd, one};
use super::masq::{self, MasqElement, MASQ_SET};
use super::*;
use crate::plan::tests::golden_request;
use crate::Layout;
use portmap_conformance::netns::{prerequisites, Netns};

/// The set's elements over netlink, checked against `nft -j list set`.
fn masq_elements(family: Family) -> Vec<MasqElement> {
    let mut got = masq::read(family).expect("netlink").unwrap_or_default();
    got.sort();
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "set", nf_family_name(family), TABLE, MASQ_SET])
        .output()
        .expect("nft runs");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let items = doc.get("nftables").and_then(|v| v.as_array());
    let mut listed: Vec<MasqElement> = items
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("set").and_then(masq::parse_set))
        .flatten()
        .collect();
    listed.sort();
    assert_eq!(got, listed, "netlink and nft disagree");
    got
}

/// Who owns each element of the set.
fn owners(family: Family) -> Vec<String> {
    masq_elements(family)
        .into_iter()
        .map(|e| e.owner.unwrap_or_default())
        .collect()
}

fn element(saddr: &str, daddr: &str, owner: &str) -> MasqElement {
    MasqElement {
        saddr: saddr.parse().expect("addr"),
        daddr: daddr.parse().expect("addr"),
        owner: Some(owner.into()),
    }
}

/// The golden container in maps: hairpin and localhost (IPv4), hairpin
/// (IPv6) are elements with its ID; `masquerading` holds one comment-less
/// lookup rule and nothing else; `list` says snat as with rules; masqAll
/// stays a rule.
#[test]
fn masquerading_is_one_lookup_of_owned_elements() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-masq-set").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let plan = Plan::new(&maps(golden_request()));
    ns.run(|| {
        nft.install(&plan, None).expect("add");
        assert_eq!(
            masq_elements(Family::V4),
            vec![
                element("10.88.0.5", "10.88.0.5", "golden-1"),
                element("127.0.0.1", "10.88.0.5", "golden-1"),
            ]
        );
        assert_eq!(
            masq_elements(Family::V6),
            vec![element("fd00:88::5", "fd00:88::5", "golden-1")]
        );
        for family in [Family::V4, Family::V6] {
            let rules = kernel::rules(family, Some(MASQUERADING)).expect("dump");
            assert_eq!(rules.len(), 1, "{rules:?}");
            assert_eq!(rules[0].shape, kernel::Shape::MasqLookup);
            assert_eq!(rules[0].comment, None);
        }
        assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);
        let listed = nft.list().expect("list");
        assert!(listed[0].options.snat && listed[0].options.map_elements);

        let all = Plan::new(&maps(crate::Request {
            masq_all: true,
            ..golden_request()
        }));
        nft.install(&all, Some(&Known::default())).expect("re-add");
        assert!(
            masq_elements(Family::V4).is_empty(),
            "masqAll is no element"
        );
        let rules = kernel::rules(Family::V4, Some(MASQUERADING)).expect("dump");
        assert!(
            rules.iter().any(|r| r.owner() == Some("golden-1")),
            "masqAll stays a rule: {rules:?}"
        );
        assert_eq!(nft.check(&all).expect("check"), Verdict::Whole);
        nft.del(&all.key, &Known::default(), None).expect("del");
        assert!(!kernel::has_chain(Family::V4, MASQUERADING).expect("netlink"));
    })
    .expect("in netns");
}

/// A missing element or lookup rule fails CHECK (and `check_all` says the
/// same); an ADD again repairs each.
#[test]
fn check_fails_without_an_element_or_the_lookup() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-masq-check").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let plan = one("c1", "10.88.0.5/16", 8080);
    ns.run(|| {
        nft.install(&plan, None).expect("add");
        let elem = "{ 10.88.0.5 . 10.88.0.5 }";
        nft_cmd(&["delete", "element", "ip", TABLE, MASQ_SET, elem]);
        let why = damaged(&nft, &plan);
        assert!(
            why.contains(
                "set hostports_masq is missing the element 10.88.0.5 . 10.88.0.5 of container c1"
            ),
            "{why}"
        );
        let verdicts = nft.check_all(&[&plan]).expect("check all");
        assert_eq!(verdicts, vec![Verdict::Damaged(why)]);
        nft.install(&plan, Some(&Known::default())).expect("repair");
        assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);

        let handles = lookup_handles(Family::V4).expect("dump");
        assert_eq!(handles.len(), 1);
        let handle = handles[0].to_string();
        nft_cmd(&[
            "delete",
            "rule",
            "ip",
            TABLE,
            MASQUERADING,
            "handle",
            &handle,
        ]);
        let why = damaged(&nft, &plan);
        assert!(
            why.contains("lacks the lookup of set hostports_masq"),
            "{why}"
        );
        nft.install(&plan, Some(&Known::default())).expect("repair");
        assert_eq!(nft.check(&plan).expect("check"), Verdict::Whole);
        assert_eq!(lookup_handles(Family::V4).expect("dump").len(), 1);

        // An inverted lookup (masquerading everyone else) is no lookup of
        // ours, on the netlink fast path and in nft -j alike.
        let handle = lookup_handles(Family::V4).expect("dump")[0].to_string();
        nft_cmd(&[
            "delete",
            "rule",
            "ip",
            TABLE,
            MASQUERADING,
            "handle",
            &handle,
        ]);
        let inverted = format!("ip saddr . ip daddr != @{MASQ_SET} masquerade");
        nft_cmd(&["add", "rule", "ip", TABLE, MASQUERADING, &inverted]);
        let why = damaged(&nft, &plan);
        assert!(
            why.contains("lacks the lookup of set hostports_masq"),
            "{why}"
        );
        let verdicts = nft.check_all(&[&plan]).expect("check all");
        assert_eq!(verdicts, vec![Verdict::Damaged(why)]);
    })
    .expect("in netns");
}

/// Reused IP: B (same address, another port) takes over the elements; A
/// still passes CHECK (its own port element is there, the masquerade
/// does the same whoever owns it); A's late DEL leaves B's; B's DEL
/// beside a rules-layout container retires map, set and both lookups,
/// and the other's masquerade rules stay.
#[test]
fn a_late_del_keeps_the_newer_owners_elements() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-masq-reuse").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let (a, b) = (
        one("a", "10.88.0.5/16", 8080),
        one("b", "10.88.0.5/16", 8081),
    );
    let other = {
        let mut p = one("rules", "10.88.0.7/16", 9090);
        p.families[0].layout = Layout::Rules;
        p
    };
    ns.run(|| {
        nft.install(&a, None).expect("add a");
        nft.install(&b, None).expect("add b");
        assert_eq!(owners(Family::V4), ["b", "b"]);
        assert_eq!(nft.check(&a).expect("check a"), Verdict::Whole);

        nft.del(&a.key, &Known::default(), None)
            .expect("late del a");
        assert_eq!(masq_elements(Family::V4).len(), 2, "b's stay");
        assert_eq!(nft.check(&b).expect("check b"), Verdict::Whole);

        nft.install(&other, None).expect("add other");
        nft.del(&b.key, &Known::default(), None).expect("del b");
        assert!(!masq::has_set(Family::V4).expect("netlink"));
        assert!(lookup_handles(Family::V4).expect("dump").is_empty());
        let rules = kernel::rules(Family::V4, Some(MASQUERADING)).expect("dump");
        assert_eq!(rules.len(), 2, "the other's hairpin and localhost rules");
        assert!(rules.iter().all(|r| r.owner() == Some("rules")));
        assert_eq!(nft.check(&other).expect("check other"), Verdict::Whole);
    })
    .expect("in netns");
}

/// The set read apart from the map: with the map gone (damage), a newer
/// ADD on the same address still takes the older one's elements, and the
/// older one's late DEL leaves them.
#[test]
fn the_set_without_the_map_still_changes_owner() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-masq-nomap").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let (a, b) = (
        one("a", "10.88.0.5/16", 8080),
        one("b", "10.88.0.5/16", 8081),
    );
    ns.run(|| {
        nft.install(&a, None).expect("add a");
        let lookup = kernel::rules(Family::V4, Some(HOSTPORTS))
            .expect("dump")
            .into_iter()
            .find(|r| r.shape == kernel::Shape::MapLookup)
            .expect("map lookup");
        let handle = lookup.handle.to_string();
        nft_cmd(&["delete", "rule", "ip", TABLE, HOSTPORTS, "handle", &handle]);
        nft_cmd(&["delete", "map", "ip", TABLE, MAP]);
        nft.install(&b, None).expect("add b");
        assert_eq!(owners(Family::V4), ["b", "b"]);
        nft.del(&a.key, &Known::default(), None)
            .expect("late del a");
        assert_eq!(masq_elements(Family::V4).len(), 2, "b's stay");
        assert_eq!(nft.check(&b).expect("check b"), Verdict::Whole);
    })
    .expect("in netns");
}

/// A restore chunk of maps-layout containers whose masquerade elements
/// are their only elements (a host-IP mapping): each goes in a transaction
/// of its own, planned against the set as the one before left it. Here the
/// first one's re-ADD (snat now off) empties and retires the set, which
/// the second then needs again: planned together, the second's elements
/// would go to the set the same transaction deletes.
#[test]
fn a_chunk_plans_masquerade_elements_one_container_at_a_time() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("nft-masq-chunk").expect("netns");
    let nft = Nftables::from_path().expect("nft");
    let host_ip_only = |id: &str, ip: &str, snat: bool| {
        let mut req = maps(golden_request());
        req.key.container_id = id.into();
        req.v4 = Some(crate::plan::tests::addr(ip));
        req.v6 = None;
        req.snat = snat;
        req.mappings = vec![crate::plan::tests::mapping(
            crate::Protocol::Tcp,
            9090,
            90,
            Some("192.0.2.1"),
        )];
        let plan = Plan::new(&req);
        assert!(plan.families[0].element_runs().is_empty());
        plan
    };
    let a = host_ip_only("a", "10.88.0.5/16", true);
    let a_without_snat = host_ip_only("a", "10.88.0.5/16", false);
    let b = host_ip_only("b", "10.88.0.6/16", true);
    ns.run(|| {
        nft.install(&a, None).expect("add a");
        nft.install_all(&[(&a_without_snat, Some(&Known::default())), (&b, None)])
            .expect("one chunk");
        assert_eq!(owners(Family::V4), ["b", "b"]);
        assert_eq!(nft.check(&a_without_snat).expect("check a"), Verdict::Whole);
        assert_eq!(nft.check(&b).expect("check b"), Verdict::Whole);
    })
    .expect("in netns");
}

/// The handles of the set's lookup rules in `masquerading`.
fn lookup_handles(family: Family) -> Result<Vec<u32>, crate::nfnetlink::NetlinkError> {
    Ok(kernel::rules(family, Some(MASQUERADING))?
        .into_iter()
        .filter(|r| r.shape == kernel::Shape::MasqLookup)
        .map(|r| r.handle)
        .collect())
}
