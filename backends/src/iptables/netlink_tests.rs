//! The netlink read renders what iptables-nft-save prints, rule for rule,
//! in the chains a check reads; anything else makes it step aside.

use super::check::{per_container, read_whole};
use super::netlink::read_nat;
use super::rules::DNAT_CHAIN;
use super::*;
use crate::plan::tests::{golden_request, neighbour, ranged_request};
use crate::MasqMark;
use portmap_conformance::netns::{prerequisites, Netns};

fn save(ns: &Netns, family: Family) -> SavedTable {
    let tool = match family {
        Family::V4 => "iptables-nft-save",
        Family::V6 => "ip6tables-nft-save",
    };
    SavedTable::parse(&ns.exec(tool, &["-t", "nat"]).expect("save"))
}

/// The rules of the chains a check reads, by chain.
fn read_part(t: &SavedTable) -> Vec<(String, Vec<String>)> {
    t.rules
        .iter()
        .filter(|(c, _)| read_whole(c) || per_container(c) || c.as_str() == DNAT_CHAIN)
        .map(|(c, r)| (c.clone(), r.clone()))
        .collect()
}

fn assert_renders_as_saved(ns: &Netns, families: &[Family]) {
    for family in families {
        let fast = ns.run(|| read_nat(*family)).expect("in netns");
        let fast = fast.unwrap_or_else(|| panic!("{family}: not rendered"));
        let slow = save(ns, *family);
        assert_eq!(read_part(&fast), read_part(&slow), "{family}");
        let (mut a, mut b) = (fast.chains.clone(), slow.chains.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{family}: chains");
    }
}

#[test]
fn our_rules_render_as_iptables_nft_save_prints_them() {
    if !prerequisites(&["iptables-nft-save", "ip6tables-nft-save"]) {
        return;
    }
    let ipt = Iptables::variant(Variant::Nft).expect("iptables-nft");
    let ranged = {
        let mut r = ranged_request();
        r.key.container_id = "ranged".into();
        Plan::new(&r)
    };
    let masq_all = {
        let mut r = golden_request();
        r.key.container_id = "masq-all".into();
        r.masq_all = true;
        r.mark = MasqMark::Bit(5);
        Plan::new(&r)
    };
    let no_snat = {
        let mut r = golden_request();
        r.key.container_id = "no-snat".into();
        r.snat = false;
        Plan::new(&r)
    };
    let plans = [
        Plan::new(&golden_request()),
        ranged,
        masq_all,
        no_snat,
        neighbour("n1", 9),
    ];
    let ns = Netns::new("ipt-netlink-read").expect("netns");
    ns.run(|| {
        for plan in &plans {
            ipt.add(plan).expect("add");
        }
    })
    .expect("in netns");
    assert_renders_as_saved(&ns, &[Family::V4, Family::V6]);

    // Another tool's chain of rules we do not render, one jumping to a
    // container's chain, quoting in comments: still rendered, as saved.
    let ipt_nat = |args: &[&str]| {
        let mut all = vec!["-t", "nat"];
        all.extend_from_slice(args);
        ns.exec("iptables-nft", &all).expect("iptables-nft")
    };
    ipt_nat(&["-N", "OTHER"]);
    ipt_nat(&[
        "-A",
        "OTHER",
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        "2",
        "--packet",
        "0",
        "-j",
        "RETURN",
    ]);
    let chain = rules::container_chain("goldennet", "golden-1");
    ipt_nat(&[
        "-A",
        "OTHER",
        "-d",
        "192.0.2.0/20",
        "-p",
        "tcp",
        "-m",
        "comment",
        "--comment",
        "it's \"quoted\"",
        "-m",
        "multiport",
        "--dports",
        "1,5:9",
        "-j",
        &chain,
    ]);
    ipt_nat(&[
        "-A",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        "bare",
        "-j",
        "OTHER",
    ]);
    assert_renders_as_saved(&ns, &[Family::V4]);

    // Docker's masquerade in POSTROUTING: not rendered, and left out (it
    // jumps nowhere of ours, so it is none of ours); the rest as saved.
    let docker = [
        "-s",
        "172.17.0.0/16",
        "!",
        "-o",
        "docker0",
        "-j",
        "MASQUERADE",
    ];
    ipt_nat(&[&["-A", "POSTROUTING"], &docker[..]].concat());
    let fast = ns
        .run(|| read_nat(Family::V4))
        .expect("in netns")
        .expect("rendered");
    let mut slow = save(&ns, Family::V4);
    let postrouting = slow.rules.get_mut("POSTROUTING").expect("postrouting");
    assert_eq!(
        postrouting.pop().as_deref(),
        Some(docker.join(" ").as_str())
    );
    assert_eq!(read_part(&fast), read_part(&slow));

    // A rule we do not render jumping to one of our chains, where the
    // check reads: the read steps aside (the save reads it).
    ipt_nat(&["-A", "POSTROUTING", "-o", "eth9", "-j", "CNI-HOSTPORT-MASQ"]);
    assert!(ns.run(|| read_nat(Family::V4)).expect("in netns").is_none());
    // IPv6: an IPv4-compatible address, which Rust prints otherwise than
    // ip6tables-nft-save does (`::1.2.3.4`): the read steps aside.
    assert!(ns.run(|| read_nat(Family::V6)).expect("in netns").is_some());
    let ip6_nat = |args: &[&str]| {
        let mut all = vec!["-t", "nat"];
        all.extend_from_slice(args);
        ns.exec("ip6tables-nft", &all).expect("ip6tables-nft")
    };
    let chain6 = rules::container_chain("goldennet", "golden-1");
    ip6_nat(&["-A", &chain6, "-d", "::1.2.3.4/128", "-j", "RETURN"]);
    assert!(ns.run(|| read_nat(Family::V6)).expect("in netns").is_none());
}
