//! The netlink read renders what iptables-nft-save prints, rule for rule,
//! in the chains a check reads; anything else makes it step aside.

use super::check::read_by_check;
use super::netlink::read_nat;
use super::*;
use crate::plan::tests::{golden_request, neighbour, ranged_request};
use crate::MasqMark;
use portmap_conformance::netns::{prerequisites, Netns};

/// The save of `ipt`'s own userland.
fn save(ns: &Netns, ipt: &Iptables, family: Family) -> SavedTable {
    let runner = ipt.runner(family).expect("runner");
    let tool = runner.save.display().to_string();
    SavedTable::parse(&ns.exec(&tool, &["-t", "nat"]).expect("save"))
}

/// The rules of the chains a check reads, by chain.
fn read_part(t: &SavedTable) -> Vec<(String, Vec<String>)> {
    t.rules
        .iter()
        .filter(|(c, _)| read_by_check(c))
        .map(|(c, r)| (c.clone(), r.clone()))
        .collect()
}

fn assert_renders_as_saved(ns: &Netns, ipt: &Iptables, families: &[Family]) {
    for family in families {
        let fast = ns.run(|| read_nat(*family)).expect("in netns");
        let fast = fast.unwrap_or_else(|| panic!("{family}: not rendered"));
        let slow = save(ns, ipt, *family);
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
    renders_as_saved(&ipt, "here");
}

/// The same with other userlands' iptables-nft (Debian 11's 1.8.7 encodes
/// ports as xt matches, 13's 1.8.11 the IPv4 protocol as a payload):
/// root filesystems named by `PORTMAP_TEST_USERLANDS` (colon-separated;
/// scripts/test.sh unpacks the distro images' bases), their tools run
/// chrooted. Required in CI.
#[test]
fn other_userlands_render_as_their_save_prints() {
    let Some(roots) = std::env::var_os("PORTMAP_TEST_USERLANDS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: PORTMAP_TEST_USERLANDS is unset (scripts/test.sh sets it)"
        );
        eprintln!("skipped: PORTMAP_TEST_USERLANDS is unset");
        return;
    };
    if !prerequisites(&["chroot"]) {
        return;
    }
    for root in std::env::split_paths(&roots) {
        let label = root.file_name().map(|n| n.to_string_lossy().into_owned());
        let label = label.unwrap_or_default();
        let tools =
            std::env::temp_dir().join(format!("portmap-userland-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&tools).expect("tools dir");
        for tool in ["iptables-nft", "ip6tables-nft"] {
            for suffix in ["", "-save", "-restore"] {
                let name = format!("{tool}{suffix}");
                let script = format!(
                    "#!/bin/sh\nexec chroot {} /usr/sbin/{name} \"$@\"\n",
                    root.display()
                );
                let path = tools.join(&name);
                std::fs::write(&path, script).expect("wrapper");
                let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
                std::fs::set_permissions(&path, exec).expect("chmod");
            }
        }
        let ipt = Iptables::nft_in(&tools).expect("iptables-nft there");
        renders_as_saved(&ipt, &label);
        let _ = std::fs::remove_dir_all(&tools);
    }
}

fn renders_as_saved(ipt: &Iptables, label: &str) {
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
    // The port tree's chains (tree.rs): range matches, leaf comments;
    // ports under 4096 and over 61439 make ranges from 0 and to 65535.
    let tree = {
        let mut r = ranged_request();
        r.key.container_id = "tree".into();
        r.iptables_layout = crate::IptablesLayout::Tree;
        for port in [80, 65000] {
            r.mappings.push(crate::plan::tests::mapping(
                crate::Protocol::Tcp,
                port,
                80,
                None,
            ));
        }
        Plan::new(&r)
    };
    let plans = [
        Plan::new(&golden_request()),
        ranged,
        masq_all,
        no_snat,
        neighbour("n1", 9),
        tree,
    ];
    let ns = Netns::new(&format!("ipt-netlink-{label}")).expect("netns");
    ns.run(|| {
        for plan in &plans {
            ipt.add(plan).expect("add");
        }
    })
    .expect("in netns");
    assert_renders_as_saved(&ns, ipt, &[Family::V4, Family::V6]);

    // Another tool's chain of rules we do not render, one jumping to a
    // container's chain, quoting in comments: still rendered, as saved.
    let tool = |family: Family| {
        let runner = ipt.runner(family).expect("runner");
        runner
            .list
            .as_ref()
            .expect("iptables-nft")
            .display()
            .to_string()
    };
    let (v4_tool, v6_tool) = (tool(Family::V4), tool(Family::V6));
    let ipt_nat = |args: &[&str]| {
        let mut all = vec!["-t", "nat"];
        all.extend_from_slice(args);
        ns.exec(&v4_tool, &all).expect("iptables-nft")
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
    assert_renders_as_saved(&ns, ipt, &[Family::V4]);

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
    let mut slow = save(&ns, ipt, Family::V4);
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
        ns.exec(&v6_tool, &all).expect("ip6tables-nft")
    };
    let chain6 = rules::container_chain("goldennet", "golden-1");
    ip6_nat(&["-A", &chain6, "-d", "::1.2.3.4/128", "-j", "RETURN"]);
    assert!(ns.run(|| read_nat(Family::V6)).expect("in netns").is_none());
}
