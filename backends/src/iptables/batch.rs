//! iptables-restore batches (pure): from a plan and what iptables-save
//! read, the one batch that turns the table into the wanted state.
//!
//! With `--noflush`, declaring `:CHAIN` flushes an existing chain, so only
//! missing shared chains and the container's own chain are declared.

use super::rules::{self, DNAT_CHAIN, MASQ_CHAIN, SETMARK_CHAIN};
use super::saved::SavedTable;
use super::tree;
use crate::plan::{FamilyPlan, Plan};
use crate::{ContainerKey, MasqMark};

fn masq_jump() -> String {
    format!("-A POSTROUTING {}", rules::masq_jump_spec())
}

/// What one ADD or chunk writes: chains to declare, then lines, in order.
#[derive(Debug, Default)]
pub(super) struct Writes {
    pub decls: Vec<String>,
    pub lines: Vec<String>,
}

impl Writes {
    pub fn render(&self) -> String {
        render(&self.decls, &self.lines)
    }
}

/// The ADD batch: shared chains and jumps where missing, the container
/// chain rewritten, old entry rules replaced by new ones at the top.
pub fn add(plan: &Plan, fam: &FamilyPlan, saved: &SavedTable) -> String {
    let mut out = Writes::default();
    add_shared(plan, fam, saved, &mut out);
    out.decls.push(own_chain(plan));
    add_own(plan, fam, saved, &mut out);
    // Tree chains a re-ADD leaves empty (its ports changed) go; a chunk
    // leaves them to the next DEL, which prunes every empty one.
    let mut deleted: Vec<(String, String)> = saved
        .jumps_to(&own_chain(plan))
        .map(|(c, s)| (c.to_string(), s.to_string()))
        .collect();
    let added: Vec<(String, String)> = out
        .lines
        .iter()
        .filter_map(|l| split_rule_or_insert(l))
        .map(|(c, s)| (c.to_string(), s.to_string()))
        .collect();
    out.lines.extend(tree::prune(saved, &mut deleted, &added));
    out.render()
}

pub(super) fn own_chain(plan: &Plan) -> String {
    rules::container_chain(&plan.key.network, &plan.key.container_id)
}

/// The shared chains and rules `plan` needs that `saved` lacks.
pub(super) fn add_shared(plan: &Plan, fam: &FamilyPlan, saved: &SavedTable, out: &mut Writes) {
    if !saved.has_chain(DNAT_CHAIN) {
        out.decls.push(DNAT_CHAIN.to_string());
    }
    for jump in rules::dnat_jumps() {
        if !saved.has_rule(&jump) {
            out.lines.push(jump);
        }
    }
    if let (MasqMark::Bit(bit), false) = (&plan.mark, fam.masquerade.is_empty()) {
        for (name, rule) in [
            (SETMARK_CHAIN, rules::setmark_rule(*bit)),
            (MASQ_CHAIN, rules::masq_rule(*bit)),
        ] {
            if !saved.has_chain(name) {
                out.decls.push(name.to_string());
            }
            if !saved.has_rule(&rule) {
                out.lines.push(rule);
            }
        }
        if !saved.has_rule(&masq_jump()) {
            out.lines
                .push(format!("-I POSTROUTING 1 {}", rules::masq_jump_spec()));
        }
    }
    add_tree_paths(plan, saved, out);
}

/// The tree chains and the rules leading to the plan's leaves that
/// `saved` lacks (tree.rs), each once.
fn add_tree_paths(plan: &Plan, saved: &SavedTable, out: &mut Writes) {
    for (proto, port) in tree::ports(plan) {
        for line in tree::path_rules(proto, port) {
            let Some((_, spec)) = rules::split_rule(&line) else {
                continue;
            };
            if let Some(chain) = rules::jump_target(spec) {
                if !saved.has_chain(chain) && !out.decls.iter().any(|d| d == chain) {
                    out.decls.push(chain.to_string());
                }
            }
            if !saved.has_rule(&line) && !out.lines.contains(&line) {
                out.lines.push(line);
            }
        }
    }
}

/// The container chain's rules (its declaration, which flushes it, is
/// the caller's) and its entry rules, replacing those `saved` holds.
pub(super) fn add_own(plan: &Plan, fam: &FamilyPlan, saved: &SavedTable, out: &mut Writes) {
    let chain = own_chain(plan);
    for (from, spec) in saved.jumps_to(&chain) {
        out.lines.push(format!("-D {from} {spec}"));
    }
    out.lines.extend(rules::container_rules(plan, fam));
    for spec in rules::entry_specs(plan, fam).iter().rev() {
        out.lines.push(format!("-I {DNAT_CHAIN} 1 {spec}"));
    }
    for (leaf, spec) in tree::leaf_specs(plan, fam) {
        out.lines.push(format!("-I {leaf} 1 {spec}"));
    }
}

/// Records in `saved` what [`add_shared`] wrote (`-A` rules, the
/// POSTROUTING jump inserted), so the next plan of a chunk sees it.
pub(super) fn note_shared(saved: &mut SavedTable, written: &Writes) {
    saved.chains.extend(written.decls.iter().cloned());
    for line in &written.lines {
        let rule = split_rule_or_insert(line);
        if let Some((chain, spec)) = rule {
            saved
                .rules
                .entry(chain.to_string())
                .or_default()
                .push(spec.to_string());
        }
    }
}

/// `-A CHAIN spec` or `-I CHAIN 1 spec` as (chain, spec).
fn split_rule_or_insert(line: &str) -> Option<(&str, &str)> {
    if let Some(rest) = line.strip_prefix("-I ") {
        let (chain, rest) = rest.split_once(' ')?;
        return Some((chain, rest.strip_prefix("1 ")?));
    }
    rules::split_rule(line)
}

/// The DEL batch for a set of containers (one for DEL, many for GC), or
/// `None` when none of them has anything here. When no other container
/// remains, the shared chains go too, so a host left without containers is
/// left without our chains.
pub fn del(keys: &[ContainerKey], saved: &SavedTable) -> Option<String> {
    let chains: Vec<String> = keys
        .iter()
        .map(|k| rules::container_chain(&k.network, &k.container_id))
        .collect();
    let owned: Vec<String> = chains
        .iter()
        .cloned()
        .chain(
            keys.iter()
                .map(|k| rules::old_snat_chain(&k.network, &k.container_id)),
        )
        .collect();
    let mut lines = Vec::new();
    let mut deleted: Vec<(String, String)> = Vec::new();
    for own in &owned {
        for (from, spec) in saved.jumps_to(own) {
            lines.push(format!("-D {from} {spec}"));
            deleted.push((from.to_string(), spec.to_string()));
        }
        if saved.has_chain(own) {
            lines.push(format!("-F {own}"));
            lines.push(format!("-X {own}"));
        }
    }
    if lines.is_empty() {
        return None;
    }
    lines.extend(tree::prune(saved, &mut deleted, &[]));
    let gone = |c: &str, s: &str| deleted.iter().any(|(dc, ds)| dc == c && ds == s);
    let others_left = saved
        .chains
        .iter()
        .any(|c| c.starts_with("CNI-DN-") && !chains.contains(c));
    if !others_left {
        for shared in [DNAT_CHAIN, MASQ_CHAIN, SETMARK_CHAIN] {
            if !saved.has_chain(shared) {
                continue;
            }
            for (from, spec) in saved.jumps_to(shared) {
                if !from.starts_with("CNI-DN-") {
                    lines.push(format!("-D {from} {spec}"));
                }
            }
            // iptables-nft fails the batch (EBUSY) when a chain whose rules
            // were just deleted one by one is flushed too.
            if saved.rules_of(shared).iter().any(|r| !gone(shared, r)) {
                lines.push(format!("-F {shared}"));
            }
            lines.push(format!("-X {shared}"));
        }
    }
    Some(render(&[], &lines))
}

/// What CHECK finds missing, or `None` when everything is there.
pub fn check(plan: &Plan, fam: &FamilyPlan, saved: &SavedTable) -> Option<String> {
    let chain = rules::container_chain(&plan.key.network, &plan.key.container_id);
    if !saved.has_chain(&chain) {
        return Some(format!("chain {chain} is missing"));
    }
    for jump in rules::dnat_jumps() {
        if !saved.has_rule(&jump) {
            return Some(format!("rule `{jump}` is missing"));
        }
    }
    if let (MasqMark::Bit(bit), false) = (&plan.mark, fam.masquerade.is_empty()) {
        for rule in [
            rules::setmark_rule(*bit),
            rules::masq_rule(*bit),
            masq_jump(),
        ] {
            if !saved.has_rule(&rule) {
                return Some(format!("rule `{rule}` is missing"));
            }
        }
    }
    let installed = saved.rules_of(&chain);
    let expected = rules::container_rules(plan, fam);
    for (i, line) in expected.iter().enumerate() {
        let (_, spec) = rules::split_rule(line)?;
        let same = installed
            .get(i)
            .is_some_and(|s| s == spec || rules::canonical(s) == rules::canonical(spec));
        if !same {
            return Some(format!("chain {chain} is missing rule {} `{spec}`", i + 1));
        }
    }
    if installed.len() > expected.len() {
        return Some(format!(
            "chain {chain} has {} unexpected rule(s), first `{}`",
            installed.len() - expected.len(),
            installed[expected.len()]
        ));
    }
    if let Some(missing) = check_tree(plan, fam, saved, &chain) {
        return Some(missing);
    }
    let entries: Vec<&str> = saved
        .jumps_to(&chain)
        .filter(|(from, _)| !tree::is_tree(from))
        .map(|(_, spec)| spec)
        .collect();
    // Canonical forms only when the text differs: a restore pass checks every container.
    let mut canonical: Option<Vec<Vec<String>>> = None;
    for spec in rules::entry_specs(plan, fam) {
        if entries.contains(&spec.as_str()) {
            continue;
        }
        let known =
            canonical.get_or_insert_with(|| entries.iter().map(|s| rules::canonical(s)).collect());
        if !known.contains(&rules::canonical(&spec)) {
            return Some(format!("chain {DNAT_CHAIN} is missing entry rule `{spec}`"));
        }
    }
    None
}

/// What of the plan's tree (its leaf rules and the rules leading to
/// them) `saved` lacks.
fn check_tree(plan: &Plan, fam: &FamilyPlan, saved: &SavedTable, chain: &str) -> Option<String> {
    for (proto, port) in tree::ports(plan) {
        for rule in tree::path_rules(proto, port) {
            if !saved.has_rule(&rule) {
                return Some(format!("rule `{rule}` is missing"));
            }
        }
    }
    for (leaf, spec) in tree::leaf_specs(plan, fam) {
        let found = saved.jumps_to(chain).any(|(from, s)| {
            from == leaf && (s == spec || rules::canonical(s) == rules::canonical(&spec))
        });
        if !found {
            return Some(format!("chain {leaf} is missing rule `{spec}`"));
        }
    }
    None
}

/// `:NAME - [0:0]`: creates the chain, or flushes it with `--noflush`.
pub(super) fn declaration(chain: &str) -> String {
    format!(":{chain} - [0:0]")
}

fn render(decls: &[String], lines: &[String]) -> String {
    let mut out = String::from("*nat\n");
    for d in decls {
        out.push_str(&declaration(d));
        out.push('\n');
    }
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::golden_request;
    use crate::Family;

    fn golden_plan() -> Plan {
        Plan::new(&golden_request())
    }

    #[test]
    fn add_on_empty_table_declares_everything() {
        let plan = golden_plan();
        let fam = plan.family(Family::V4).expect("v4");
        let b = add(&plan, fam, &SavedTable::default());
        assert!(b.starts_with("*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n:CNI-DN-734e1f1c3c9c8b2b7b8e7 - [0:0]\n"), "{b}");
        assert!(b.contains("-I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ\n"));
        assert!(b.ends_with("-j CNI-DN-734e1f1c3c9c8b2b7b8e7\nCOMMIT\n"));
        // udp entry inserted first so tcp ends on top, as upstream's save shows.
        let udp = b.find("-I CNI-HOSTPORT-DNAT 1 -p udp").expect("udp entry");
        let tcp = b.find("-I CNI-HOSTPORT-DNAT 1 -p tcp").expect("tcp entry");
        assert!(udp < tcp);
    }

    #[test]
    fn re_add_replaces_entry_rules_and_keeps_shared_chains() {
        let plan = golden_plan();
        let fam = plan.family(Family::V4).expect("v4");
        let saved_text = "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n:CNI-DN-734e1f1c3c9c8b2b7b8e7 - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ\n-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 1 -j CNI-DN-734e1f1c3c9c8b2b7b8e7\n-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE\n-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000\nCOMMIT\n";
        let b = add(&plan, fam, &SavedTable::parse(saved_text));
        assert!(b.starts_with("*nat\n:CNI-DN-734e1f1c3c9c8b2b7b8e7 - [0:0]\n-D CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 1 -j CNI-DN-734e1f1c3c9c8b2b7b8e7\n"), "{b}");
        assert!(!b.contains("POSTROUTING"));
        assert!(!b.contains("PREROUTING"));
    }

    #[test]
    fn del_of_unknown_container_is_none_and_last_one_out_removes_shared_chains() {
        let key = ContainerKey {
            network: "goldennet".into(),
            container_id: "golden-1".into(),
        };
        assert_eq!(
            del(std::slice::from_ref(&key), &SavedTable::default()),
            None
        );
        let saved = SavedTable::parse("*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-734e1f1c3c9c8b2b7b8e7 - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -j CNI-DN-734e1f1c3c9c8b2b7b8e7\nCOMMIT\n");
        let b = del(std::slice::from_ref(&key), &saved).expect("batch");
        assert_eq!(b, "*nat\n-D CNI-HOSTPORT-DNAT -p tcp -j CNI-DN-734e1f1c3c9c8b2b7b8e7\n-F CNI-DN-734e1f1c3c9c8b2b7b8e7\n-X CNI-DN-734e1f1c3c9c8b2b7b8e7\n-D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-X CNI-HOSTPORT-DNAT\nCOMMIT\n");
    }

    #[test]
    fn del_keeps_shared_chains_while_other_containers_remain() {
        let key = ContainerKey {
            network: "goldennet".into(),
            container_id: "golden-1".into(),
        };
        let saved = SavedTable::parse("*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-734e1f1c3c9c8b2b7b8e7 - [0:0]\n:CNI-DN-other - [0:0]\n-A CNI-HOSTPORT-DNAT -p tcp -j CNI-DN-734e1f1c3c9c8b2b7b8e7\nCOMMIT\n");
        let b = del(std::slice::from_ref(&key), &saved).expect("batch");
        assert!(!b.contains("-X CNI-HOSTPORT-DNAT"), "{b}");
    }

    #[test]
    fn one_batch_deletes_several_containers_and_then_the_shared_chains() {
        let keys: Vec<ContainerKey> = ["a", "b"]
            .iter()
            .map(|id| ContainerKey {
                network: "n".into(),
                container_id: id.to_string(),
            })
            .collect();
        let [ca, cb] =
            [&keys[0], &keys[1]].map(|k| rules::container_chain(&k.network, &k.container_id));
        let saved = SavedTable::parse(&format!(
            "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:{ca} - [0:0]\n:{cb} - [0:0]\n-A CNI-HOSTPORT-DNAT -p tcp -j {ca}\n-A CNI-HOSTPORT-DNAT -p udp -j {cb}\nCOMMIT\n"
        ));
        let both = del(&keys, &saved).expect("batch");
        assert_eq!(
            both,
            format!("*nat\n-D CNI-HOSTPORT-DNAT -p tcp -j {ca}\n-F {ca}\n-X {ca}\n-D CNI-HOSTPORT-DNAT -p udp -j {cb}\n-F {cb}\n-X {cb}\n-X CNI-HOSTPORT-DNAT\nCOMMIT\n")
        );
        let only_a = del(&keys[..1], &saved).expect("batch");
        assert!(
            !only_a.contains("-X CNI-HOSTPORT-DNAT") && !only_a.contains(&cb),
            "{only_a}"
        );
    }

    #[test]
    fn del_removes_the_pre_2017_snat_chain_too() {
        let key = ContainerKey {
            network: "goldennet".into(),
            container_id: "golden-1".into(),
        };
        let sn = rules::old_snat_chain("goldennet", "golden-1");
        let saved = SavedTable::parse(&format!(
            "*nat\n:CNI-HOSTPORT-SNAT - [0:0]\n:{sn} - [0:0]\n-A CNI-HOSTPORT-SNAT -j {sn}\n-A {sn} -j MASQUERADE\nCOMMIT\n"
        ));
        let b = del(std::slice::from_ref(&key), &saved).expect("batch");
        assert_eq!(
            b,
            format!("*nat\n-D CNI-HOSTPORT-SNAT -j {sn}\n-F {sn}\n-X {sn}\nCOMMIT\n")
        );
    }

    #[test]
    fn check_names_the_missing_rule() {
        let plan = golden_plan();
        let fam = plan.family(Family::V4).expect("v4");
        assert_eq!(
            check(&plan, fam, &SavedTable::default()),
            Some("chain CNI-DN-734e1f1c3c9c8b2b7b8e7 is missing".into())
        );
    }
}
