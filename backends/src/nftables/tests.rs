use super::*;
use crate::plan::tests::golden_request;
use crate::{MasqMark, Request};
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
