//! The localnet guard as iptables has it (see `crate::guard`): chain
//! `CNI-HOSTPORT-GUARD` in the IPv4 `mangle` table (PREROUTING there runs
//! after conntrack and before nat's DNAT; nat refuses DROP), jumped to
//! first from PREROUTING.

use super::rules::quote;
use super::saved::SavedTable;
use crate::guard::{FROM_LOOPBACK_COMMENT, LOOPBACK_NET, TO_LOOPBACK_COMMENT};

pub const GUARD_CHAIN: &str = "CNI-HOSTPORT-GUARD";
pub const GUARD_TABLE: &str = "mangle";
const JUMP_COMMENT: &str = "CNI portmap localnet guard";

fn jump_spec() -> String {
    format!(
        "-m comment --comment {} -j {GUARD_CHAIN}",
        quote(JUMP_COMMENT)
    )
}

/// The guard chain's rules, as `-A` lines, in order.
fn guard_rules() -> [String; 2] {
    [
        format!(
            "-A {GUARD_CHAIN} -d {LOOPBACK_NET} ! -i lo -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment {} -j DROP",
            quote(TO_LOOPBACK_COMMENT)
        ),
        format!(
            "-A {GUARD_CHAIN} -s {LOOPBACK_NET} ! -i lo -m comment --comment {} -j DROP",
            quote(FROM_LOOPBACK_COMMENT)
        ),
    ]
}

fn chain_intact(mangle: &SavedTable) -> bool {
    let installed: Vec<Vec<String>> = mangle
        .rules_of(GUARD_CHAIN)
        .iter()
        .map(|s| super::rules::canonical(s))
        .collect();
    let wanted: Vec<Vec<String>> = guard_rules()
        .iter()
        .filter_map(|line| super::rules::split_rule(line))
        .map(|(_, spec)| super::rules::canonical(spec))
        .collect();
    mangle.has_chain(GUARD_CHAIN) && installed == wanted
}

fn jumped_to(mangle: &SavedTable) -> bool {
    mangle
        .jumps_to(GUARD_CHAIN)
        .any(|(from, _)| from == "PREROUTING")
}

/// Whether `mangle` (what `iptables-save -t mangle` printed) holds the
/// whole guard: the chain with exactly its rules, and the jump to it.
pub fn intact(mangle: &SavedTable) -> bool {
    chain_intact(mangle) && jumped_to(mangle)
}

/// The `*mangle` section that makes the guard whole, or `None` when it is.
/// Declaring the chain flushes it (`--noflush` keeps everything else), so
/// a damaged chain is rewritten; the jump is inserted first in PREROUTING
/// (an ACCEPT of another tool's before it would skip the guard).
pub fn repair(mangle: &SavedTable) -> Option<String> {
    let mut out = String::new();
    if !chain_intact(mangle) {
        out.push_str(&format!(":{GUARD_CHAIN} - [0:0]\n"));
        for rule in guard_rules() {
            out.push_str(&rule);
            out.push('\n');
        }
    }
    if !jumped_to(mangle) {
        out.push_str(&format!("-I PREROUTING 1 {}\n", jump_spec()));
    }
    (!out.is_empty()).then(|| format!("*{GUARD_TABLE}\n{out}COMMIT\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "*mangle
:PREROUTING ACCEPT [0:0]
:CNI-HOSTPORT-GUARD - [0:0]
-A PREROUTING -m comment --comment \"CNI portmap localnet guard\" -j CNI-HOSTPORT-GUARD
-A CNI-HOSTPORT-GUARD -d 127.0.0.0/8 ! -i lo -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment \"CNI portmap localnet guard: new connections to 127.0.0.0/8 from outside\" -j DROP
-A CNI-HOSTPORT-GUARD -s 127.0.0.0/8 ! -i lo -m comment --comment \"CNI portmap localnet guard: 127.0.0.0/8 sources from outside\" -j DROP
COMMIT
";

    #[test]
    fn an_empty_mangle_table_gets_chain_rules_and_jump() {
        let b = repair(&SavedTable::default()).expect("batch");
        assert!(b.starts_with("*mangle\n:CNI-HOSTPORT-GUARD - [0:0]\n-A CNI-HOSTPORT-GUARD -d 127.0.0.0/8 ! -i lo -m conntrack ! --ctstate RELATED,ESTABLISHED"), "{b}");
        assert!(b.ends_with("-I PREROUTING 1 -m comment --comment \"CNI portmap localnet guard\" -j CNI-HOSTPORT-GUARD\nCOMMIT\n"), "{b}");
    }

    #[test]
    fn what_save_prints_of_the_whole_guard_needs_nothing() {
        let saved = SavedTable::parse(SAVED);
        assert!(intact(&saved));
        assert_eq!(repair(&saved), None);
    }

    #[test]
    fn a_lost_jump_or_rule_is_put_back_alone() {
        let no_jump = SavedTable::parse(
            &SAVED
                .lines()
                .filter(|l| !l.starts_with("-A PREROUTING"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        assert!(!intact(&no_jump));
        let b = repair(&no_jump).expect("batch");
        assert!(!b.contains(":CNI-HOSTPORT-GUARD"), "{b}");
        assert!(b.contains("-I PREROUTING 1 "), "{b}");

        let one_rule = SavedTable::parse(
            &SAVED
                .lines()
                .filter(|l| !l.contains("-s 127.0.0.0/8"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let b = repair(&one_rule).expect("batch");
        assert!(b.contains(":CNI-HOSTPORT-GUARD - [0:0]\n"), "{b}");
        assert!(!b.contains("-I PREROUTING"), "{b}");
    }
}
