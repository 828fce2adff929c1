//! A chunk of ADDs in one batch per family leaves what the ADDs one by
//! one leave, on both variants, in namespaces of the tests' own.

use super::super::*;
use crate::plan::tests::{addr, golden_request};
use crate::Request;
use portmap_conformance::netns::{prerequisites, Netns};

/// The nat tables of both families and IPv4's mangle (the guard), as the
/// variant's save prints them, without comment lines and counters.
fn saved(ns: &Netns, variant: Variant, families: &[Family]) -> String {
    let v = variant.as_str();
    let mut tables = Vec::new();
    for family in families {
        let tool = match family {
            Family::V4 => format!("iptables-{v}-save"),
            Family::V6 => format!("ip6tables-{v}-save"),
        };
        tables.push(ns.exec(&tool, &["-t", "nat"]).expect("save nat"));
        if *family == Family::V4 {
            tables.push(ns.exec(&tool, &["-t", "mangle"]).expect("save mangle"));
        }
    }
    if variant == Variant::Nft {
        // Chain order as nf_tables keeps it (iptables-nft-save sorts).
        for family in families {
            let (fam, names) = match family {
                Family::V4 => ("ip", &["nat", "mangle"][..]),
                Family::V6 => ("ip6", &["nat"][..]),
            };
            for name in names {
                let listed = ns.exec("nft", &["-s", "list", "table", fam, name]);
                tables.push(listed.expect("nft list table"));
            }
        }
    }
    tables
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A one-mapping IPv4 container on `port`.
fn request(id: &str, octet: u8, port: u16) -> Request {
    let mut req = golden_request();
    req.key.container_id = id.into();
    req.v4 = Some(addr(&format!("10.88.1.{octet}/16")));
    req.v6 = None;
    req.mappings.truncate(1);
    req.mappings[0].host_port = port;
    req
}

/// `req` in the port tree layout (tree.rs).
fn tree(req: Request) -> Request {
    Request {
        iptables_layout: crate::IptablesLayout::Tree,
        ..req
    }
}

fn tools(variant: Variant) -> bool {
    let v = variant.as_str();
    prerequisites(&[
        &format!("iptables-{v}-save"),
        &format!("iptables-{v}-restore"),
        &format!("ip6tables-{v}-save"),
        &format!("ip6tables-{v}-restore"),
    ])
}

/// `present` installed first in both namespaces (none: the table after a
/// flush, the chunk creates the shared chains).
fn chunk_equals_one_by_one(variant: Variant, present: &[Plan]) {
    if !tools(variant) {
        return;
    }
    let ipt = Iptables::variant(variant).expect("iptables");
    let mut other_mark = request("other-mark", 7, 20007);
    other_mark.mark = MasqMark::Bit(14);
    let mut chunk: Vec<Plan> = (0..40u8)
        .map(|i| Plan::new(&request(&format!("many-{i}"), 10 + i, 21000 + u16::from(i))))
        .collect();
    chunk.extend([
        Plan::new(&golden_request()),
        Plan::new(&request("overlap-1", 60, 30000)),
        Plan::new(&request("second", 6, 20106)),
        Plan::new(&request("overlap-2", 61, 30000)),
        Plan::new(&other_mark),
        Plan::new(&request("many-0", 10, 20010)),
        Plan::new(&other_mark),
        Plan::new(&request("second", 6, 20206)),
        Plan::new(&tree(request("tree-1", 70, 23000))),
        Plan::new(&tree(request("tree-2", 71, 23000))),
        Plan::new(&tree(request("tree-1", 70, 23100))),
    ]);
    let v = variant.as_str();
    let n = present.len();
    let (one, all) = (
        Netns::new(&format!("ipt-chunk-one-{v}-{n}")).expect("netns"),
        Netns::new(&format!("ipt-chunk-all-{v}-{n}")).expect("netns"),
    );
    for ns in [&one, &all] {
        ns.run(|| present.iter().for_each(|p| ipt.add(p).expect("add")))
            .expect("in netns");
    }
    one.run(|| chunk.iter().for_each(|p| ipt.add(p).expect("add")))
        .expect("in netns");
    let receipts = all
        .run(|| {
            let wanted: Vec<(&Plan, Option<&Known>)> = chunk.iter().map(|p| (p, None)).collect();
            ipt.install_all(&wanted).expect("install_all")
        })
        .expect("in netns");
    assert_eq!(receipts.len(), chunk.len());
    assert!(receipts.iter().all(Option::is_none));

    let families = [Family::V4, Family::V6];
    let (expected, got) = (
        saved(&one, variant, &families),
        saved(&all, variant, &families),
    );
    assert_eq!(got, expected);
    let first_30000 = got
        .lines()
        .find(|l| l.starts_with("-A CNI-HOSTPORT-DNAT") && l.contains("30000"))
        .expect("an entry rule for 30000");
    assert!(
        first_30000.contains("overlap-2"),
        "the later wins: {first_30000}"
    );
    assert!(got.contains("20206") && !got.contains("20106") && !got.contains("20006"));
    assert!(
        got.contains("20010") && !got.contains("21000"),
        "many-0 moved"
    );
    assert!(got.contains("0x4000/0x4000") && got.contains("-j CNI-HOSTPORT-GUARD"));
    let leaf_23000 = got
        .lines()
        .find(|l| l.starts_with("-A CNI-HOSTPORT-TCP-59D "))
        .expect("a leaf rule for 23000");
    assert!(leaf_23000.contains("tree-2"), "{leaf_23000}");
    assert!(got.contains("-A CNI-HOSTPORT-TCP-5A3 -p tcp -m tcp --dport 23100 "));

    all.run(|| {
        // What a later plan of the same attachment replaced is not there.
        for (i, plan) in chunk.iter().enumerate() {
            if chunk[i + 1..].iter().all(|p| p.key != plan.key) {
                assert_eq!(
                    ipt.check(plan).expect("check"),
                    Verdict::Whole,
                    "{:?}",
                    plan.key
                );
            }
        }
    })
    .expect("in netns");
}

fn present() -> [Plan; 2] {
    [
        Plan::new(&golden_request()),
        Plan::new(&request("second", 6, 20006)),
    ]
}

#[test]
fn a_chunk_leaves_what_adds_one_by_one_leave_on_iptables_nft() {
    chunk_equals_one_by_one(Variant::Nft, &present());
    chunk_equals_one_by_one(Variant::Nft, &[]);
}

#[test]
fn a_chunk_leaves_what_adds_one_by_one_leave_on_iptables_legacy() {
    chunk_equals_one_by_one(Variant::Legacy, &present());
    chunk_equals_one_by_one(Variant::Legacy, &[]);
}

/// A plan whose condition iptables rejects fails its family's batch:
/// nothing of that family changes (IPv4 first, so nothing at all; when
/// it is IPv6's, IPv6 stays as it was).
fn a_failing_batch_changes_nothing_of_its_family(variant: Variant) {
    if !tools(variant) {
        return;
    }
    let ipt = Iptables::variant(variant).expect("iptables");
    let ns = Netns::new(&format!("ipt-chunk-fail-{}", variant.as_str())).expect("netns");
    let mut bad_v4 = request("bad-v4", 9, 22000);
    bad_v4.conditions_v4 = vec!["-m no-such-match --at-all".into()];
    let mut bad_v6 = golden_request();
    bad_v6.key.container_id = "bad-v6".into();
    bad_v6.conditions_v6 = vec!["-m no-such-match --at-all".into()];
    let good = Plan::new(&request("good", 8, 22001));
    let (bad_v4, bad_v6) = (Plan::new(&bad_v4), Plan::new(&bad_v6));
    ns.run(|| ipt.add(&Plan::new(&golden_request())).expect("add"))
        .expect("in netns");

    let before = saved(&ns, variant, &[Family::V4, Family::V6]);
    let failed = ns
        .run(|| ipt.install_all(&[(&good, None), (&bad_v4, None), (&good, None)]))
        .expect("in netns");
    assert!(failed.is_err());
    assert_eq!(saved(&ns, variant, &[Family::V4, Family::V6]), before);

    let v6_before = saved(&ns, variant, &[Family::V6]);
    let failed = ns
        .run(|| ipt.install_all(&[(&good, None), (&bad_v6, None)]))
        .expect("in netns");
    assert!(failed.is_err());
    assert_eq!(saved(&ns, variant, &[Family::V6]), v6_before);
}

#[test]
fn a_failing_batch_changes_nothing_of_its_family_on_iptables_nft() {
    a_failing_batch_changes_nothing_of_its_family(Variant::Nft);
}

#[test]
fn a_failing_batch_changes_nothing_of_its_family_on_iptables_legacy() {
    a_failing_batch_changes_nothing_of_its_family(Variant::Legacy);
}
