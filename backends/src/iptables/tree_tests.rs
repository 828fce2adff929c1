use super::*;
use crate::plan::tests::golden_request;
use crate::Request;

#[test]
fn chains_are_named_by_the_ports_hex_digits() {
    // 20000 = 0x4E20.
    assert_eq!(leaf(Protocol::Tcp, 20000), "CNI-HOSTPORT-TCP-4E2");
    assert_eq!(leaf(Protocol::Sctp, 7), "CNI-HOSTPORT-SCTP-000");
    assert_eq!(
        path_rules(Protocol::Tcp, 20000),
        [
            "-A CNI-HOSTPORT-DNAT -p tcp -j CNI-HOSTPORT-TCP",
            "-A CNI-HOSTPORT-TCP -p tcp -m tcp --dport 16384:20479 -j CNI-HOSTPORT-TCP-4",
            "-A CNI-HOSTPORT-TCP-4 -p tcp -m tcp --dport 19968:20223 -j CNI-HOSTPORT-TCP-4E",
            "-A CNI-HOSTPORT-TCP-4E -p tcp -m tcp --dport 20000:20015 -j CNI-HOSTPORT-TCP-4E2",
        ]
    );
    assert_eq!(
        path_rules(Protocol::Udp, 65535)[3],
        "-A CNI-HOSTPORT-UDP-FF -p udp -m udp --dport 65520:65535 -j CNI-HOSTPORT-UDP-FFF"
    );
    assert_eq!(
        ancestors("CNI-HOSTPORT-TCP-4E2"),
        [
            "CNI-HOSTPORT-TCP-4E",
            "CNI-HOSTPORT-TCP-4",
            "CNI-HOSTPORT-TCP"
        ]
    );
    for (chain, tree, is_a_leaf) in [
        ("CNI-HOSTPORT-TCP", true, false),
        ("CNI-HOSTPORT-UDP-4E2", true, true),
        ("CNI-HOSTPORT-TCP-4e2", false, false),
        ("CNI-HOSTPORT-TCP-4E2F", false, false),
        ("CNI-HOSTPORT-DNAT", false, false),
        ("CNI-HOSTPORT-MASQ", false, false),
        ("CNI-DN-4E2", false, false),
    ] {
        assert_eq!(
            (is_tree(chain), is_leaf(chain)),
            (tree, is_a_leaf),
            "{chain}"
        );
    }
}

#[test]
fn runs_of_three_stay_in_entry_rules_and_the_rest_go_to_the_tree_once() {
    let (entry, tree) = split(&[8080, 20000, 20001, 20002, 9090, 9090, 5000, 5001]);
    assert_eq!(entry, [20000, 20001, 20002]);
    assert_eq!(tree, [8080, 9090, 5000, 5001]);
}

fn tree_plan() -> Plan {
    Plan::new(&Request {
        iptables_layout: IptablesLayout::Tree,
        ..crate::plan::tests::ranged_request()
    })
}

#[test]
fn the_rules_layout_has_no_tree_and_the_tree_keeps_comments_and_conditions() {
    assert!(ports(&Plan::new(&golden_request())).is_empty());
    let mut req = Request {
        iptables_layout: IptablesLayout::Tree,
        ..golden_request()
    };
    req.conditions_v4 = vec!["-s".into(), "192.0.2.0/24".into()];
    let plan = Plan::new(&req);
    let fam = plan.family(crate::Family::V4).expect("v4");
    let specs = leaf_specs(&plan, fam);
    assert_eq!(specs.len(), ports(&plan).len());
    let chain = rules::container_chain("goldennet", "golden-1");
    let (leaf_8080, spec) = specs
        .iter()
        .find(|(_, s)| s.starts_with("-p tcp -m tcp --dport 8080 "))
        .expect("tcp 8080 leaf");
    assert_eq!(leaf_8080, "CNI-HOSTPORT-TCP-1F9");
    assert_eq!(
        spec,
        &format!("-p tcp -m tcp --dport 8080 -m comment --comment \"dnat name: \\\"goldennet\\\" id: \\\"golden-1\\\"\" -s 192.0.2.0/24 -j {chain}")
    );
}

/// What a batch leaves, applied to `saved` as iptables-restore would
/// (enough for the lines batches write: declarations, -A, -I 1, -D, -F, -X).
fn applied(saved: &SavedTable, batch: &str) -> SavedTable {
    let mut t = saved.clone();
    for line in batch.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().expect("name").to_string();
            if !t.has_chain(&name) {
                t.chains.push(name.clone());
            }
            t.rules.remove(&name);
        } else if let Some((chain, spec)) = rules::split_rule(line) {
            t.rules.entry(chain.into()).or_default().push(spec.into());
        } else if let Some(rest) = line.strip_prefix("-I ") {
            let (chain, spec) = rest.split_once(" 1 ").expect("-I C 1 spec");
            t.rules
                .entry(chain.into())
                .or_default()
                .insert(0, spec.into());
        } else if let Some(rest) = line.strip_prefix("-D ") {
            let (chain, spec) = rest.split_once(' ').expect("-D C spec");
            let specs = t.rules.get_mut(chain).expect("deleted from a chain");
            let at = specs.iter().position(|s| s == spec).expect("the rule");
            specs.remove(at);
        } else if let Some(chain) = line.strip_prefix("-F ") {
            t.rules.remove(chain);
        } else if let Some(chain) = line.strip_prefix("-X ") {
            assert!(
                t.rules_of(chain).is_empty(),
                "-X {chain} of a chain with rules"
            );
            assert!(
                t.jumps_to(chain).next().is_none(),
                "-X {chain} still jumped to"
            );
            t.chains.retain(|c| c != chain);
        }
    }
    t
}

#[test]
fn add_builds_the_paths_check_sees_them_and_del_prunes_what_it_empties() {
    let plan = tree_plan();
    let fam = plan.family(crate::Family::V4).expect("v4");
    let empty = SavedTable::default();
    let after_add = applied(&empty, &super::super::batch::add(&plan, fam, &empty));
    assert_eq!(super::super::batch::check(&plan, fam, &after_add), None);
    let leaves: Vec<&String> = after_add.chains.iter().filter(|c| is_leaf(c)).collect();
    assert!(!leaves.is_empty(), "{after_add:?}");
    // Every tree rule beside the leaf rules is one a path needs.
    for (chain, specs) in &after_add.rules {
        if is_tree(chain) && !is_leaf(chain) {
            assert!(specs
                .iter()
                .all(|s| s.contains("--dport") && s.contains("-j CNI-HOSTPORT-")));
        }
    }

    // A second container on one of the ports: its leaf rule goes on top.
    let mut other = Request {
        iptables_layout: IptablesLayout::Tree,
        ..golden_request()
    };
    other.key.container_id = "other".into();
    let other = Plan::new(&other);
    let ofam = other.family(crate::Family::V4).expect("v4");
    let both = applied(
        &after_add,
        &super::super::batch::add(&other, ofam, &after_add),
    );
    let chain_other = rules::container_chain("goldennet", "other");
    let (leaf_chain, _) = &leaf_specs(&other, ofam)[0];
    assert_eq!(
        rules::jump_target(&both.rules_of(leaf_chain)[0]),
        Some(chain_other.as_str())
    );
    assert_eq!(super::super::batch::check(&plan, fam, &both), None);
    assert_eq!(super::super::batch::check(&other, ofam, &both), None);

    // A path rule gone: CHECK names it.
    let mut broken = both.clone();
    let path = path_rules(Protocol::Tcp, 8080);
    let (c, s) = rules::split_rule(&path[2]).expect("rule");
    broken.rules.get_mut(c).expect("chain").retain(|r| r != s);
    let missing = super::super::batch::check(&other, ofam, &broken).expect("damaged");
    assert!(missing.contains(&path[2]), "{missing}");

    // DEL of one keeps the other's paths; DEL of both leaves no tree.
    let key = plan.key.clone();
    let one_left = applied(
        &both,
        &super::super::batch::del(std::slice::from_ref(&key), &both).expect("batch"),
    );
    assert_eq!(super::super::batch::check(&other, ofam, &one_left), None);
    assert!(one_left.has_chain(leaf_chain));
    let gone = applied(
        &one_left,
        &super::super::batch::del(std::slice::from_ref(&other.key), &one_left).expect("batch"),
    );
    assert!(
        gone.chains.iter().all(|c| !c.starts_with("CNI-")),
        "{:?}",
        gone.chains
    );
}
