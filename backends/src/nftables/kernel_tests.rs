//! kernel.rs against the real kernel (in a netns) and hand-built messages.

use super::*;
use crate::nftables::{Nftables, MASQUERADING};
use crate::plan::tests::golden_request;
use crate::{Backend, Known, Plan};
use portmap_conformance::netns::{prerequisites, Netns};

/// What our own transaction installs, read back over netlink, agrees
/// with `nft -a -j list table` (chains, handles, comments) and yields
/// the DNAT rules' protocol and port; after the last DEL the table is
/// reported missing.
#[test]
fn the_dump_reads_what_our_transaction_installed() {
    if !prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new("kernel-rules").expect("netns");
    let plan = Plan::new(&golden_request());
    let (v4, v6) = ns
        .run(|| {
            Nftables::from_path().expect("nft").add(&plan).expect("add");
            (
                rules(Family::V4, None).expect("v4"),
                rules(Family::V6, None).expect("v6"),
            )
        })
        .expect("in netns");
    assert!(!v4.is_empty() && !v6.is_empty());

    let text = ns
        .exec("nft", &["-a", "-j", "list", "table", "ip", TABLE])
        .expect("nft list");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut by_nft: Vec<(String, u64, Option<String>)> = doc["nftables"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i.get("rule"))
        .map(|r| {
            (
                r["chain"].as_str().unwrap_or_default().to_string(),
                r["handle"].as_u64().unwrap_or_default(),
                r["comment"].as_str().map(str::to_string),
            )
        })
        .collect();
    let mut by_netlink: Vec<(String, u64, Option<String>)> = v4
        .iter()
        .map(|r| (r.chain.clone(), u64::from(r.handle), r.comment.clone()))
        .collect();
    by_nft.sort();
    by_netlink.sort();
    assert!(!by_nft.is_empty());
    assert_eq!(by_netlink, by_nft);

    let ports = |rules: &[KernelRule]| {
        let mut p: Vec<(Protocol, u16, u16)> = rules
            .iter()
            .filter(|r| r.owner() == Some("golden-1"))
            .filter_map(|r| r.port)
            .collect();
        p.sort();
        p
    };
    assert_eq!(
        ports(&v4),
        [
            (Protocol::Tcp, 8080, 8080),
            (Protocol::Tcp, 9090, 9090),
            (Protocol::Udp, 8080, 8080)
        ]
    );
    assert_eq!(
        ports(&v6),
        [
            (Protocol::Tcp, 8080, 8080),
            (Protocol::Tcp, 9443, 9443),
            (Protocol::Udp, 8080, 8080)
        ]
    );
    assert!(
        v4.iter()
            .filter(|r| r.chain == MASQUERADING || r.owner().is_none())
            .all(|r| r.port.is_none()),
        "only DNAT rules match a port: {v4:?}"
    );
    // Every rule of the container leads to its address, DNAT and
    // masquerade alike; the wiring leads nowhere.
    for (rules, addr) in [(&v4, "10.88.0.5"), (&v6, "fd00:88::5")] {
        let addr: IpAddr = addr.parse().expect("ip");
        for r in rules.iter() {
            let expected = r.owner().map(|_| addr);
            assert_eq!(r.target, expected, "{r:?}");
        }
    }

    let gone = ns
        .run(|| {
            Nftables::from_path()
                .expect("nft")
                .del(&plan.key, &Known::default(), None)
                .expect("del");
            rules(Family::V4, None).expect("v4 after del")
        })
        .expect("in netns");
    assert_eq!(gone, vec![], "the last container took the table");
    assert!(
        ns.exec("nft", &["list", "table", "ip", TABLE]).is_err(),
        "and nft agrees"
    );
}

#[test]
fn malformed_rule_messages_are_skipped_not_panics() {
    let body = [vec![2, 0, 0, 0], attr(NFTA_RULE_CHAIN, b"hostports\0")].concat();
    assert_eq!(parse_rule(&body), None, "no handle");
    for cut in 0..body.len() {
        let _ = parse_rule(&body[..cut]);
    }
    assert_eq!(comment_of(&[0, 200, b'x']), None);
    assert_eq!(comment_of(&[0, 2, b'c', 0]).as_deref(), Some("c"));
}
