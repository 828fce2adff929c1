//! The localnet guard as nftables has it (see `crate::guard`): table
//! `ip cni_hostport_guard`, one filter chain at prerouting, priority
//! mangle (after conntrack, before the DNAT at dstnat), two rules.

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Prefix, CT};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::kernel;
use super::render::payload;
use crate::guard::{FROM_LOOPBACK_COMMENT, TO_LOOPBACK_COMMENT};
use crate::nfnetlink::NetlinkError;
use crate::Family;

pub const GUARD_TABLE: &str = "cni_hostport_guard";
pub const GUARD_CHAIN: &str = "localnet";
/// mangle: after conntrack (-200) has classified the packet, before the
/// DNAT at dstnat (-100) could send it on to a container.
const GUARD_PRIORITY: i32 = -150;

/// The guard's rules, in order, each with its comment.
fn guard_rules() -> Vec<(&'static str, Vec<Statement<'static>>)> {
    let loopback = || {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String("127.0.0.0".into())),
            len: 8,
        }))
    };
    let is = |left, right| {
        Statement::Match(Match {
            left,
            right,
            op: Operator::EQ,
        })
    };
    let not_from_lo = Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Iif })),
        right: Expression::String("lo".into()),
        op: Operator::NEQ,
    });
    // A flag test (`ct state invalid,new,untracked`): nft's `!=` with a
    // flag list compiles to a plain compare, and every state but these
    // two is one of these three.
    let not_a_known_flow = Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right: Expression::List(
            ["invalid", "new", "untracked"]
                .map(|s| Expression::String(s.into()))
                .to_vec(),
        ),
        op: Operator::IN,
    });
    let drop = Statement::Drop(None);
    vec![
        (
            TO_LOOPBACK_COMMENT,
            vec![
                is(payload("ip", "daddr"), loopback()),
                not_from_lo.clone(),
                not_a_known_flow,
                drop.clone(),
            ],
        ),
        (
            FROM_LOOPBACK_COMMENT,
            vec![is(payload("ip", "saddr"), loopback()), not_from_lo, drop],
        ),
    ]
}

/// Puts the whole guard into `batch`: table, chain, and the chain
/// rewritten (flushed, then its rules), so a damaged guard is repaired.
pub(super) fn add_guard(batch: &mut Batch<'_>) {
    batch.add(NfListObject::Table(Table {
        family: NfFamily::IP,
        name: GUARD_TABLE.into(),
        handle: None,
    }));
    let chain = Chain {
        family: NfFamily::IP,
        table: GUARD_TABLE.into(),
        name: GUARD_CHAIN.into(),
        ..Chain::default()
    };
    batch.add(NfListObject::Chain(Chain {
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Prerouting),
        prio: Some(GUARD_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..chain.clone()
    }));
    batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain)));
    for (comment, expr) in guard_rules() {
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: GUARD_TABLE.into(),
            chain: GUARD_CHAIN.into(),
            expr: expr.into(),
            comment: Some(comment.into()),
            ..Rule::default()
        }));
    }
}

/// Whether the kernel holds the guard's rules, and only those, in order
/// (told by their comments: one small netlink dump, no process).
pub fn guard_intact() -> Result<bool, NetlinkError> {
    let found: Vec<Option<String>> = kernel::rules_in(Family::V4, GUARD_TABLE, Some(GUARD_CHAIN))?
        .into_iter()
        .map(|r| r.comment)
        .collect();
    let wanted: Vec<Option<String>> = guard_rules()
        .into_iter()
        .map(|(comment, _)| Some(comment.to_string()))
        .collect();
    Ok(found == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_is_table_chain_flush_and_two_commented_drops() {
        let mut batch = Batch::new();
        add_guard(&mut batch);
        let json = serde_json::to_value(batch.to_nftables()).expect("json");
        let cmds = json["nftables"].as_array().expect("commands");
        assert_eq!(cmds.len(), 5, "{json}");
        assert_eq!(cmds[1]["add"]["chain"]["hook"], "prerouting");
        assert_eq!(cmds[1]["add"]["chain"]["prio"], -150);
        assert_eq!(cmds[1]["add"]["chain"]["type"], "filter");
        assert!(cmds[2]["flush"]["chain"].is_object());
        let first = &cmds[3]["add"]["rule"];
        assert_eq!(first["comment"], TO_LOOPBACK_COMMENT);
        assert_eq!(
            first["expr"][2]["match"]["right"],
            serde_json::json!(["invalid", "new", "untracked"])
        );
        assert_eq!(first["expr"][3], serde_json::json!({"drop": null}));
        assert_eq!(cmds[4]["add"]["rule"]["comment"], FROM_LOOPBACK_COMMENT);
    }
}
