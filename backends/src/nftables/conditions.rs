//! conditionsV4/V6 as nft words (`ip saddr 10.0.0.0/8`) turned into JSON
//! matches; anything else is refused before a transaction is built.

use super::render::addr_expr;
use super::render::payload;
use super::NftError;
use nftables::expr::Expression;
use nftables::expr::Meta;
use nftables::expr::MetaKey;
use nftables::expr::NamedExpression;
use nftables::expr::Prefix;
use nftables::stmt::Match;
use nftables::stmt::Operator;
use nftables::stmt::Statement;
use std::borrow::Cow;
use std::net::IpAddr;

/// Turns condition words (nft syntax, e.g. `ip saddr 192.0.2.0/24` or
/// `iifname != "lo"`) into match statements. The JSON API takes no rule
/// text, so we parse the common selector forms and refuse the rest.
pub fn parse_conditions(conditions: &[String]) -> Result<Vec<Statement<'static>>, NftError> {
    let text = conditions.join(" ");
    let words: Vec<&str> = text.split_whitespace().collect();
    let fail = |reason: &str| NftError::Condition {
        condition: text.clone(),
        reason: reason.to_string(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let left = match words[i] {
            proto @ ("ip" | "ip6" | "tcp" | "udp" | "sctp" | "th") => {
                let field = words
                    .get(i + 1)
                    .ok_or_else(|| fail("selector without a field"))?;
                i += 2;
                payload(proto, field)
            }
            "meta" => {
                let key = words.get(i + 1).ok_or_else(|| fail("meta without a key"))?;
                i += 2;
                meta(key).ok_or_else(|| fail("unknown meta key"))?
            }
            key => {
                i += 1;
                meta(key).ok_or_else(|| fail(&format!("unknown selector {key:?}")))?
            }
        };
        let op = match words.get(i).copied() {
            Some("==" | "eq") => Some(Operator::EQ),
            Some("!=" | "ne") => Some(Operator::NEQ),
            Some("<" | "lt") => Some(Operator::LT),
            Some(">" | "gt") => Some(Operator::GT),
            Some("<=" | "le") => Some(Operator::LEQ),
            Some(">=" | "ge") => Some(Operator::GEQ),
            _ => None,
        };
        if op.is_some() {
            i += 1;
        }
        let value = words
            .get(i)
            .ok_or_else(|| fail("selector without a value"))?;
        i += 1;
        out.push(Statement::Match(Match {
            left,
            right: value_expr(value),
            op: op.unwrap_or(Operator::EQ),
        }));
    }
    Ok(out)
}

pub(super) fn meta(key: &str) -> Option<Expression<'static>> {
    let key: MetaKey = serde_json::from_value(serde_json::Value::String(key.to_string())).ok()?;
    Some(Expression::Named(NamedExpression::Meta(Meta { key })))
}

pub(super) fn value_expr(word: &str) -> Expression<'static> {
    let word = word.trim_matches('"');
    if let Some((a, len)) = word.split_once('/') {
        if let (Ok(a), Ok(len)) = (a.parse::<IpAddr>(), len.parse::<u32>()) {
            return Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(addr_expr(a)),
                len,
            }));
        }
    }
    match word.parse::<u32>() {
        Ok(n) => Expression::Number(n),
        Err(_) => Expression::String(Cow::Owned(word.to_string())),
    }
}
