//! The plan as nftables objects: the table skeleton (chains, wiring
//! rules with the `fib daddr type local` guard), each container's rules
//! and their description for CHECK messages.

use super::conditions::parse_conditions;
use super::kernel;
use super::nf_family;
use super::nf_family_name;
use super::NftError;
use super::DSTNAT_PRIORITY;
use super::HOSTIP_HOSTPORTS;
use super::HOSTPORTS;
use super::HOSTPORTS_ALL;
use super::MASQUERADING;
use super::OUTPUT;
use super::PREROUTING;
use super::SRCNAT_PRIORITY;
use super::TABLE;
use super::TABLE_COMMENT;
use crate::plan::FamilyPlan;
use crate::plan::MasqSource;
use crate::plan::Run;
use crate::Family;
use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::expr::Fib;
use nftables::expr::FibFlag;
use nftables::expr::FibResult;
use nftables::expr::NamedExpression;
use nftables::expr::Payload;
use nftables::expr::PayloadField;
use nftables::expr::Prefix;
use nftables::expr::Range;
use nftables::schema::Chain;
use nftables::schema::FlushObject;
use nftables::schema::NfCmd;
use nftables::schema::NfListObject;
use nftables::schema::Rule;
use nftables::schema::Table;
use nftables::stmt::JumpTarget;
use nftables::stmt::Match;
use nftables::stmt::Operator;
use nftables::stmt::Statement;
use nftables::stmt::NAT;
use nftables::types::NfChainPolicy;
use nftables::types::NfChainType;
use nftables::types::NfHook;
use std::collections::HashSet;
use std::net::IpAddr;

/// nft 1.0.x has no table comment in its JSON schema (text syntax has); we
/// send it anyway so newer nft records it, older nft ignores the key.
pub(super) fn add_table_comment(doc: &mut serde_json::Value) {
    let Some(cmds) = doc.get_mut("nftables").and_then(|v| v.as_array_mut()) else {
        return;
    };
    for cmd in cmds {
        if let Some(table) = cmd
            .pointer_mut("/add/table")
            .and_then(|t| t.as_object_mut())
        {
            table.insert("comment".into(), TABLE_COMMENT.into());
        }
    }
}

pub(super) fn add_skeleton(batch: &mut Batch<'_>, family: Family, masquerade: bool) {
    let fam = nf_family(family);
    batch.add(NfListObject::Table(Table {
        family: fam,
        name: TABLE.into(),
        handle: None,
    }));
    for name in [HOSTPORTS, HOSTIP_HOSTPORTS, HOSTPORTS_ALL] {
        batch.add(NfListObject::Chain(chain(family, name)));
    }
    let hooks = [
        (PREROUTING, NfHook::Prerouting, DSTNAT_PRIORITY),
        (OUTPUT, NfHook::Output, DSTNAT_PRIORITY),
    ];
    for (name, hook, prio) in hooks {
        batch.add(NfListObject::Chain(base_chain(family, name, hook, prio)));
    }
    if masquerade {
        batch.add(NfListObject::Chain(base_chain(
            family,
            MASQUERADING,
            NfHook::Postrouting,
            SRCNAT_PRIORITY,
        )));
    }
    // The shared chains are rewritten on every ADD, so a ruleset written by
    // an older upstream (prerouting without the fib guard) gets repaired.
    for name in [HOSTPORTS_ALL, PREROUTING, OUTPUT] {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(family, name))));
    }
    for (chain_name, expr) in wiring_rules() {
        batch.add(NfListObject::Rule(Rule {
            family: fam,
            table: TABLE.into(),
            chain: chain_name.into(),
            expr: expr.into(),
            ..Rule::default()
        }));
    }
}

/// The shared jumps every container relies on, in order.
pub(super) fn wiring_rules() -> Vec<(&'static str, Vec<Statement<'static>>)> {
    let local_jump = vec![
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            right: Expression::String("local".into()),
            op: Operator::EQ,
        }),
        jump(HOSTPORTS_ALL),
    ];
    vec![
        (HOSTPORTS_ALL, vec![jump(HOSTIP_HOSTPORTS)]),
        (HOSTPORTS_ALL, vec![jump(HOSTPORTS)]),
        (PREROUTING, local_jump.clone()),
        (OUTPUT, local_jump),
    ]
}

/// The wiring as the kernel shows it: per chain, its rules' shapes in order.
pub(super) fn wiring_shapes() -> Vec<(&'static str, Vec<kernel::Shape>)> {
    let mut chains: Vec<(&'static str, Vec<kernel::Shape>)> = Vec::new();
    for (chain, expr) in wiring_rules() {
        let target = jump_target(&expr);
        let shape = match expr.as_slice() {
            [Statement::Jump(_)] => kernel::Shape::Jump(target),
            [Statement::Match(_), Statement::Jump(_)] => kernel::Shape::LocalJump(target),
            _ => kernel::Shape::Other,
        };
        match chains.iter_mut().find(|(c, _)| *c == chain) {
            Some((_, shapes)) => shapes.push(shape),
            None => chains.push((chain, vec![shape])),
        }
    }
    chains
}

pub(super) fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

pub(super) fn jump_target(expr: &[Statement<'_>]) -> String {
    expr.iter()
        .find_map(|s| match s {
            Statement::Jump(j) => Some(j.target.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

pub(super) fn chain(family: Family, name: &'static str) -> Chain<'static> {
    Chain {
        family: nf_family(family),
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    }
}

pub(super) fn base_chain(
    family: Family,
    name: &'static str,
    hook: NfHook,
    prio: i32,
) -> Chain<'static> {
    Chain {
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain(family, name)
    }
}

pub(super) fn rule(
    family: Family,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: &str,
) -> Rule<'static> {
    Rule {
        family: nf_family(family),
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: expr.into(),
        comment: Some(comment.to_string().into()),
        ..Rule::default()
    }
}

pub(super) fn rule_ref(family: Family, chain: &str, handle: u32) -> Rule<'static> {
    Rule {
        family: nf_family(family),
        table: TABLE.into(),
        chain: chain.to_string().into(),
        handle: Some(handle),
        ..Rule::default()
    }
}

pub(super) fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}

pub(super) fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

pub(super) fn addr_expr(addr: IpAddr) -> Expression<'static> {
    Expression::String(addr.to_string().into())
}

/// The container's own rules for one family, in install order, with chain.
pub(super) fn expected_rules(
    fam: &FamilyPlan,
) -> Result<Vec<(&'static str, Vec<Statement<'static>>)>, NftError> {
    let ipx = nf_family_name(fam.family);
    let conditions = parse_conditions(&fam.conditions)?;
    let mut rules = Vec::new();
    for run in fam.rule_runs() {
        let mut expr = conditions.clone();
        if let Some(host_ip) = run.host_ip {
            expr.push(matches(payload(ipx, "daddr"), addr_expr(host_ip)));
        }
        expr.push(dport_match(&run));
        // A range keeps the destination port: `dnat to C` with no port.
        let port = (!run.is_range()).then(|| Expression::Number(u32::from(run.container_port)));
        expr.push(Statement::DNAT(Some(NAT {
            addr: Some(addr_expr(fam.container.addr)),
            family: None,
            port,
            flags: None,
        })));
        rules.push((HOSTPORTS, expr));
    }
    for source in &fam.masquerade_rules() {
        let saddr = match source {
            MasqSource::Container => addr_expr(fam.container.addr),
            MasqSource::Localhost => Expression::String("127.0.0.1".into()),
            MasqSource::Any => Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(
                    match fam.family {
                        Family::V4 => "0.0.0.0",
                        Family::V6 => "::",
                    }
                    .into(),
                )),
                len: 0,
            })),
        };
        rules.push((
            MASQUERADING,
            vec![
                matches(payload(ipx, "saddr"), saddr),
                matches(payload(ipx, "daddr"), addr_expr(fam.container.addr)),
                Statement::Masquerade(None),
            ],
        ));
    }
    Ok(rules)
}

/// `tcp dport 8080`, or `tcp dport 20000-24999` for a range (nft lists
/// it back as `{"range": [20000, 24999]}`).
pub(super) fn dport_match(run: &Run) -> Statement<'static> {
    let port = |p: u16| Expression::Number(u32::from(p));
    let right = match run.is_range() {
        false => port(run.first),
        true => Expression::Range(Box::new(Range {
            range: [port(run.first), port(run.last)],
        })),
    };
    matches(payload(run.protocol.as_str(), "dport"), right)
}

pub(super) fn describe(fam: &FamilyPlan, chain: &str, expr: &[Statement<'_>]) -> String {
    if chain == MASQUERADING {
        return format!("masquerade to {}", fam.container.addr);
    }
    let mut proto = String::new();
    let mut port = String::new();
    let mut target = fam.container.addr.to_string();
    for s in expr {
        match s {
            Statement::Match(m) => {
                let Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))) = &m.left
                else {
                    continue;
                };
                match &m.right {
                    Expression::Number(n) => port = n.to_string(),
                    Expression::Range(r) => match &r.range {
                        [Expression::Number(a), Expression::Number(b)] => port = format!("{a}-{b}"),
                        _ => continue,
                    },
                    _ => continue,
                }
                proto = p.protocol.to_string();
            }
            Statement::DNAT(Some(nat)) => {
                if let Some(Expression::Number(p)) = nat.port {
                    target = format!(
                        "{}",
                        std::net::SocketAddr::new(fam.container.addr, p as u16)
                    );
                }
            }
            _ => {}
        }
    }
    format!("mapping {proto} {port} -> {target}")
}
