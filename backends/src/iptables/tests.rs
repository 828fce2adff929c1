//! DEL on iptables-nft, read two ways, in namespaces of the tests' own.

use super::*;
use crate::plan::tests::{golden_request, neighbour};
use portmap_conformance::netns::{prerequisites, Netns};

/// Both families' nat tables as iptables-nft-save prints them, without
/// its comment lines (times) and counters.
fn saved_nat(ns: &Netns) -> String {
    ["iptables-nft-save", "ip6tables-nft-save"]
        .iter()
        .map(|tool| ns.exec(tool, &["-t", "nat"]).expect("save"))
        .flat_map(|text| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" [").next().unwrap_or(l).to_string())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn closed(mut ports: Vec<ClosedPort>) -> Vec<ClosedPort> {
    ports.sort();
    ports.dedup();
    ports
}

/// A DEL that reads only CNI-HOSTPORT-DNAT (others stay) leaves exactly
/// the ruleset the whole-table read leaves, and closes the same ports;
/// the last container out takes the whole read (shared chains go too).
#[test]
fn a_del_reading_only_the_entry_chain_leaves_what_the_whole_read_leaves() {
    if !prerequisites(&["iptables-nft-save", "ip6tables-nft-save"]) {
        return;
    }
    let ipt = Iptables::variant(Variant::Nft).expect("iptables-nft");
    let golden = Plan::new(&golden_request());
    let (second, third) = (neighbour("second", 6), neighbour("third", 7));
    let setup = |label: &str| {
        let ns = Netns::new(label).expect("netns");
        ns.run(|| {
            for plan in [&second, &golden, &third] {
                ipt.add(plan).expect("add");
            }
        })
        .expect("in netns");
        ns
    };
    let (entries, whole) = (setup("ipt-del-entries"), setup("ipt-del-whole"));

    let by_entries = entries
        .run(|| {
            let runners = ipt.runners();
            let v4 = ipt
                .del_reading_entries(runners[0], &golden.key)
                .expect("others stay in IPv4: the entry chain will do")
                .expect("del");
            assert!(
                ipt.del_reading_entries(runners[1], &golden.key).is_none(),
                "golden-1 is alone in IPv6: the whole read"
            );
            let (v6, _) =
                Iptables::del_where(&runners[1..], Sought::Any, |_| vec![golden.key.clone()])
                    .expect("del v6");
            [v4, v6.iter().map(ClosedPort::from).collect()].concat()
        })
        .expect("in netns");
    let by_whole = whole
        .run(|| {
            let (removed, _) =
                Iptables::del_where(&ipt.runners(), Sought::Any, |_| vec![golden.key.clone()])
                    .expect("del");
            removed.iter().map(ClosedPort::from).collect::<Vec<_>>()
        })
        .expect("in netns");
    // Entry rules list every port of their protocol, whatever the host
    // IP's family: TCP 9443 (an IPv6 host IP) shows in IPv4's too. What
    // the flush uses, UDP, is the same.
    let (by_entries, by_whole) = (closed(by_entries), closed(by_whole));
    assert!(
        by_whole.iter().all(|p| by_entries.contains(p)),
        "{by_entries:?} {by_whole:?}"
    );
    let udp = |ports: &[ClosedPort]| -> Vec<ClosedPort> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .copied()
            .collect()
    };
    assert_eq!(udp(&by_entries), udp(&by_whole));
    assert_eq!(
        udp(&by_whole).len(),
        2,
        "UDP 8080 in both families: {by_whole:?}"
    );
    let (after, expected) = (saved_nat(&entries), saved_nat(&whole));
    assert_eq!(after, expected);
    assert!(
        !after.contains("golden-1") && after.contains("second"),
        "{after}"
    );

    entries
        .run(|| {
            ipt.del(&second.key, &Known::default(), None)
                .expect("del second");
            let runners = ipt.runners();
            assert!(
                ipt.del_reading_entries(runners[0], &third.key).is_none(),
                "the last container takes the whole read"
            );
            ipt.del(&third.key, &Known::default(), None)
                .expect("del third");
        })
        .expect("in netns");
    assert!(
        !saved_nat(&entries).contains("CNI-"),
        "{}",
        saved_nat(&entries)
    );
}

/// The sweep keeps the iptables-nft families whose nat table has CNI
/// chains (or whose chains it could not list) and hands each runner its
/// chains, which DEL then uses instead of asking the kernel again.
#[test]
fn nat_tables_keep_families_with_cni_chains_and_pass_their_chains_on() {
    if !prerequisites(&["iptables-nft-save", "ip6tables-nft-save"]) {
        return;
    }
    let ipt = || Iptables::variant(Variant::Nft).expect("iptables-nft");
    let ours = vec!["PREROUTING".to_string(), rules::DNAT_CHAIN.to_string()];
    let kept = ipt()
        .in_nat_tables(&[
            (Family::V4, Some(ours.clone())),
            (Family::V6, Some(vec!["PREROUTING".into()])),
        ])
        .expect("IPv4 kept");
    let runners = kept.runners();
    assert_eq!(runners.len(), 1, "IPv6's nat table has no CNI chain");
    assert_eq!(
        (runners[0].family, runners[0].nat_chains.as_ref()),
        (Family::V4, Some(&ours))
    );
    let unknown = ipt().in_nat_tables(&[(Family::V6, None)]).expect("kept");
    assert_eq!(unknown.runners().len(), 1);
    assert_eq!(unknown.runners()[0].nat_chains, None);
    assert!(
        ipt().in_nat_tables(&[]).is_none(),
        "no nat table: nothing to read"
    );
}

/// A nat table iptables-nft-save cannot read (a rule made with nft it
/// cannot translate): DEL and GC fail where the kernel lists chains they
/// look for, and pass over it where it lists none; ADD and CHECK always
/// fail, and ADD has written no family.
#[test]
fn an_unreadable_nat_table_is_passed_over_only_where_it_holds_nothing_sought() {
    if !prerequisites(&["nft", "iptables-nft-save", "ip6tables-nft-save"]) {
        return;
    }
    let ipt = Iptables::variant(Variant::Nft).expect("iptables-nft");
    let golden = Plan::new(&golden_request());
    let ns = Netns::new("ipt-unreadable").expect("netns");
    let foreign = |family: &str| {
        for args in [
            vec!["add", "table", family, "nat"],
            vec!["add", "chain", family, "nat", "foreign"],
            vec![
                "add", "rule", family, "nat", "foreign", "meta", "mark", "set", "1",
            ],
        ] {
            ns.exec("nft", &args).expect("nft");
        }
    };
    foreign("ip6");
    let unreadable_v6 = |e: &BackendError| {
        matches!(
            e,
            BackendError::Iptables(IptablesError::Unreadable {
                family: Family::V6,
                ..
            })
        )
    };
    ns.run(|| {
        let add = ipt.add(&golden).expect_err("IPv6 cannot be read");
        assert!(unreadable_v6(&add), "{add}");
        assert!(add.to_string().contains("ipv6 mappings"), "{add}");
        assert!(
            add.details().contains("Parsing nftables rule failed"),
            "{}",
            add.details()
        );
        assert!(ipt.list().expect("nothing of ours yet").is_empty());
        ipt.del(&golden.key, &Known::default(), None)
            .expect("IPv6 has no chain of ours");
        ipt.gc("goldennet", &BTreeSet::new(), &[])
            .expect("nor GC's");
    })
    .expect("in netns");
    assert!(
        !ns.exec("iptables-nft-save", &["-t", "nat"])
            .expect("v4")
            .contains("CNI-"),
        "the failed ADD wrote no IPv4"
    );

    ns.exec("nft", &["delete", "table", "ip6", "nat"])
        .expect("nft");
    ns.run(|| ipt.add(&golden).expect("add")).expect("in netns");
    foreign("ip6");
    ns.run(|| {
        let e = ipt.check(&golden).expect_err("CHECK cannot read IPv6");
        assert!(unreadable_v6(&e), "{e}");
        // Another container's DEL: nothing of it in the kernel's chains.
        ipt.del(&neighbour("other", 9).key, &Known::default(), None)
            .expect("nothing sought");
        let e = ipt
            .del(&golden.key, &Known::default(), None)
            .expect_err("its chain is in ip6 nat");
        assert!(unreadable_v6(&e), "{e}");
        assert!(e.to_string().contains("CNI-DN-"), "{e}");
        let e = ipt
            .gc("goldennet", &BTreeSet::new(), &[])
            .expect_err("GC too");
        assert!(unreadable_v6(&e), "{e}");
    })
    .expect("in netns");
    let v4 = ns.exec("iptables-nft-save", &["-t", "nat"]).expect("v4");
    assert!(!v4.contains("CNI-DN-"), "what can be read is cleaned: {v4}");
    let v6 = ns
        .exec("nft", &["list", "table", "ip6", "nat"])
        .expect("v6");
    assert!(v6.contains("CNI-DN-"), "{v6}");
}

/// `check_all` (one read, indexed) says of every plan what `check` says
/// of it alone: whole, never installed, and with its chain flushed.
#[test]
fn check_all_agrees_with_check_plan_by_plan() {
    if !prerequisites(&["iptables-nft-save", "ip6tables-nft-save"]) {
        return;
    }
    let ipt = Iptables::variant(Variant::Nft).expect("iptables-nft");
    let golden = Plan::new(&golden_request());
    let (second, third, absent) = (
        neighbour("second", 6),
        neighbour("third", 7),
        neighbour("absent", 8),
    );
    let ns = Netns::new("ipt-check-all").expect("netns");
    let verdicts = |ns: &Netns| {
        ns.run(|| {
            let plans = [&second, &golden, &third, &absent];
            let one_by_one: Vec<Verdict> =
                plans.iter().map(|p| ipt.check(p).expect("check")).collect();
            (ipt.check_all(&plans).expect("check_all"), one_by_one)
        })
        .expect("in netns")
    };
    ns.run(|| {
        for plan in [&second, &golden, &third] {
            ipt.add(plan).expect("add");
        }
    })
    .expect("in netns");
    let (all, each) = verdicts(&ns);
    assert_eq!(all, each);
    assert_eq!(all[..3], [Verdict::Whole, Verdict::Whole, Verdict::Whole]);
    assert!(matches!(&all[3], Verdict::Damaged(_)), "{all:?}");
    let chain = rules::container_chain(&third.key.network, &third.key.container_id);
    ns.exec("iptables-nft", &["-t", "nat", "-F", &chain])
        .expect("flush");
    let (all, each) = verdicts(&ns);
    assert_eq!(all, each);
    assert!(matches!(&all[2], Verdict::Damaged(_)), "{all:?}");
    assert_eq!(all[..2], [Verdict::Whole, Verdict::Whole]);
    // Another tool's chains: one of many rules (not copied into each
    // plan's view), one holding `second`'s entry rule, moved there from
    // CNI-HOSTPORT-DNAT: the indexed read still sees what CHECK sees.
    let ipt_nat = |args: &[&str]| {
        let mut all = vec!["-t", "nat"];
        all.extend_from_slice(args);
        ns.exec("iptables-nft", &all).expect("iptables-nft")
    };
    ipt_nat(&["-N", "KUBE-SERVICES"]);
    for port in ["30001", "30002", "30003"] {
        ipt_nat(&[
            "-A",
            "KUBE-SERVICES",
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "RETURN",
        ]);
    }
    let moved = rules::container_chain(&second.key.network, &second.key.container_id);
    let listed = ipt_nat(&["-S", rules::DNAT_CHAIN]);
    let entry = listed
        .lines()
        .find(|l| l.ends_with(&moved))
        .and_then(|l| l.strip_prefix(&format!("-A {} ", rules::DNAT_CHAIN)))
        .expect("second's entry rule");
    let words = rules::shell_words(entry);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    ipt_nat(&["-N", "OTHER-TOOL"]);
    ipt_nat(&[&["-A", "OTHER-TOOL"], &words[..]].concat());
    ipt_nat(&[&["-D", rules::DNAT_CHAIN], &words[..]].concat());
    let (all, each) = verdicts(&ns);
    assert_eq!(all, each);
    assert_eq!(all[..2], [Verdict::Whole, Verdict::Whole]);
}
