//! Removals told from the rest, by hand-made messages and a real subscription.

use super::super::tests::message;
use super::*;

fn kind(msg: u16) -> u16 {
    NFNL_SUBSYS_NFTABLES << 8 | msg
}

/// A DEL* notification of `family` with a table and a chain attribute.
fn del(msg: u16, family: u8, table: &str, chain: Option<(u16, &str)>, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![family, 0, 0, 0];
    body.extend(attr(1, &nul_terminated(table)));
    if let Some((at, name)) = chain {
        body.extend(attr(at, &nul_terminated(name)));
    }
    body.extend_from_slice(extra);
    message(kind(msg), &body)
}

fn newgen(generation: u32, pid: u32, name: &str) -> Vec<u8> {
    let mut body = vec![0, 0, 0, 0];
    body.extend(attr(NFTA_GEN_ID, &generation.to_be_bytes()));
    body.extend(attr(NFTA_GEN_PROC_PID, &pid.to_be_bytes()));
    body.extend(attr(NFTA_GEN_PROC_NAME, &nul_terminated(name)));
    message(kind(NFT_MSG_NEWGEN), &body)
}

fn seen(datagrams: &[Vec<u8>]) -> (Vec<Removal>, Touched) {
    let (mut pending, mut found) = (Touched::default(), Vec::new());
    for d in datagrams {
        commits(d, &mut pending, &mut found);
    }
    (found, pending)
}

#[test]
fn only_removals_of_ours_are_reported_with_their_commit() {
    let rule = |t, c| del(NFT_MSG_DELRULE, 2, t, Some((NFTA_RULE_CHAIN, c)), &[]);
    let nft = Touched {
        nftables: true,
        iptables_nft: false,
    };
    let ipt = Touched {
        nftables: false,
        iptables_nft: true,
    };
    let commit = Some(Commit {
        generation: 7,
        pid: 42,
        process: "nft".into(),
    });
    for (what, removal, want) in [
        ("our table's rule", rule("cni_hostport", "hostports"), nft),
        (
            "the guard table",
            del(NFT_MSG_DELTABLE, 10, "cni_hostport_guard", None, &[]),
            nft,
        ),
        (
            "another table",
            rule("filter", "hostports"),
            Touched::default(),
        ),
        (
            "a CNI chain",
            del(
                NFT_MSG_DELCHAIN,
                2,
                "nat",
                Some((NFTA_CHAIN_NAME, "CNI-DN-1")),
                &[],
            ),
            ipt,
        ),
        (
            "a CNI chain's rule",
            rule("mangle", "CNI-HOSTPORT-GUARD"),
            ipt,
        ),
        (
            "our jump",
            del(
                NFT_MSG_DELRULE,
                2,
                "nat",
                Some((NFTA_RULE_CHAIN, "PREROUTING")),
                b"CNI-HOSTPORT-DNAT\0",
            ),
            ipt,
        ),
        (
            "someone's PREROUTING rule",
            rule("nat", "PREROUTING"),
            Touched::default(),
        ),
        (
            "docker's chain",
            del(
                NFT_MSG_DELCHAIN,
                2,
                "nat",
                Some((NFTA_CHAIN_NAME, "DOCKER")),
                &[],
            ),
            Touched::default(),
        ),
        (
            "the nat table",
            del(NFT_MSG_DELTABLE, 2, "nat", None, &[]),
            ipt,
        ),
        (
            "inet, not ours",
            del(NFT_MSG_DELTABLE, 1, "cni_hostport", None, &[]),
            Touched::default(),
        ),
        (
            "an addition",
            message(kind(NFT_MSG_NEWRULE), &[2, 0, 0, 0]),
            Touched::default(),
        ),
    ] {
        let (found, pending) = seen(&[[removal, newgen(7, 42, "nft")].concat()]);
        let want: Vec<Removal> = want
            .any()
            .then(|| Removal {
                touched: want,
                commit: commit.clone(),
            })
            .into_iter()
            .collect();
        assert_eq!(found, want, "{what}");
        assert_eq!(
            pending,
            Touched::default(),
            "{what}: NEWGEN closes the commit"
        );
    }
    // A commit's removals and its NEWGEN may come in two datagrams.
    let (found, pending) = seen(&[rule("cni_hostport", "output")]);
    assert!(found.is_empty() && pending == nft);
    let (found, _) = seen(&[rule("cni_hostport", "output"), newgen(9, 1, "firewalld")]);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].commit.as_ref().map(|c| c.process.as_str()),
        Some("firewalld")
    );
    // Truncated anywhere: no panic.
    let whole = [rule("cni_hostport", "output"), newgen(9, 1, "nft")].concat();
    for cut in 0..whole.len() {
        let _ = seen(&[whole[..cut].to_vec()]);
    }
}

/// A real subscription in a namespace of the test's own: an unrelated
/// table's removal is not reported; a flush of ours is, with the
/// generation the kernel reports after it and nft as the writer;
/// iptables-nft's jump from PREROUTING is told from another rule there.
#[test]
fn a_subscription_reports_our_removals_only() {
    use portmap_conformance::netns::{prerequisites, Netns};
    if !prerequisites(&["nft", "iptables-nft"]) {
        return;
    }
    let ns = Netns::new("events").expect("netns");
    let nft = |args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        ns.exec("nft", &args).expect("nft");
    };
    nft("add table ip pmt_other");
    nft("add chain ip pmt_other c");
    nft("add rule ip pmt_other c accept");
    nft("add table ip cni_hostport");
    nft("add chain ip cni_hostport hostports");
    nft("add rule ip cni_hostport hostports accept");
    let ipt = |args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        ns.exec("iptables-nft", &args).expect("iptables-nft");
    };
    ipt("-t nat -N CNI-HOSTPORT-DNAT");
    ipt("-t nat -A PREROUTING -j CNI-HOSTPORT-DNAT");
    ipt("-t nat -A PREROUTING -p udp -j ACCEPT");
    let run = |cmd: &str| {
        let mut parts = cmd.split(' ');
        let program = parts.next().expect("program");
        std::process::Command::new(program)
            .args(parts)
            .status()
            .expect("tool");
    };
    let seen = ns
        .run(|| {
            let mut events = Events::subscribe().expect("subscribe");
            let mut step = |cmd: &str| {
                run(cmd);
                let mut found = Vec::new();
                for _ in 0..3 {
                    found.extend(events.wait(Duration::from_millis(100)).expect("wait"));
                }
                (found, generation().expect("generation"))
            };
            [
                step("nft flush table ip pmt_other"),
                step("iptables-nft -t nat -D PREROUTING -p udp -j ACCEPT"),
                step("nft flush table ip cni_hostport"),
                step("iptables-nft -t nat -D PREROUTING -j CNI-HOSTPORT-DNAT"),
            ]
        })
        .expect("in netns");
    assert!(seen[0].0.is_empty(), "another table: {:?}", seen[0]);
    assert!(
        seen[1].0.is_empty(),
        "another PREROUTING rule: {:?}",
        seen[1]
    );
    let (ours, after) = &seen[2];
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(ours[0].touched.nftables && !ours[0].touched.iptables_nft);
    let commit = ours[0].commit.as_ref().expect("NEWGEN seen");
    assert_eq!(
        (commit.generation, commit.process.as_str()),
        (*after, "nft")
    );
    let (jump, _) = &seen[3];
    assert_eq!(jump.len(), 1, "{jump:?}");
    assert!(jump[0].touched.iptables_nft && !jump[0].touched.nftables);
}
