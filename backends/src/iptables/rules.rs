//! Pure rule text for the iptables backend, written in the exact form
//! `iptables-save` prints, so CHECK can compare saved lines with ours and a
//! host can switch between upstream's binary and ours in either direction.

use std::net::IpAddr;

use sha2::{Digest, Sha512};

use crate::plan::{FamilyPlan, MasqSource, Plan, Run};
use crate::{Family, IptablesLayout, MasqMark};

pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// Pre-2017 upstream kept per-container SNAT chains under this one.
pub const OLD_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";
const CHAIN_NAME_MAX: usize = 28;
const MULTIPORT_MAX: usize = 15;
const COMMENT_MAX: usize = 255;

/// `CNI-<prefix>` + the first hex digits of sha512(network + container ID),
/// 28 characters in all (upstream's `FormatChainName`).
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = format!("CNI-{prefix}");
    let mut hasher = Sha512::new();
    hasher.update(network.as_bytes());
    hasher.update(container_id.as_bytes());
    // Per digest byte, not `format!`: a restore pass names every container's chain.
    for b in hasher.finalize() {
        for nibble in [b >> 4, b & 0xf] {
            if name.len() < CHAIN_NAME_MAX {
                name.push(char::from(HEX[usize::from(nibble)]));
            }
        }
    }
    name
}

/// Whether a nat chain is one portmap makes (shared or per container),
/// not another CNI plugin's `CNI-<hash>`.
pub fn is_ours(chain: &str) -> bool {
    ["CNI-HOSTPORT-", "CNI-DN-", "CNI-SN-"]
        .iter()
        .any(|p| chain.starts_with(p))
}

pub fn container_chain(network: &str, container_id: &str) -> String {
    chain_name("DN-", network, container_id)
}

pub fn old_snat_chain(network: &str, container_id: &str) -> String {
    chain_name("SN-", network, container_id)
}

/// The entry-rule comment, cut to the 255 bytes iptables allows.
pub fn entry_comment(network: &str, container_id: &str) -> String {
    let mut c = format!("dnat name: \"{network}\" id: \"{container_id}\"");
    if c.len() > COMMENT_MAX {
        let mut end = COMMENT_MAX;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

/// Quotes a comment the way iptables-save does (and iptables-restore reads).
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn mark_value(bit: u8) -> String {
    let v = 1u32 << bit;
    format!("{v:#x}/{v:#x}")
}

/// Jumps from the built-in chains into ours, as `-A` lines.
pub fn dnat_jumps() -> [String; 2] {
    ["PREROUTING", "OUTPUT"].map(|c| format!("-A {c} -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}"))
}

pub fn setmark_rule(bit: u8) -> String {
    format!(
        "-A {SETMARK_CHAIN} -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark {}",
        mark_value(bit)
    )
}

pub fn masq_rule(bit: u8) -> String {
    format!(
        "-A {MASQ_CHAIN} -m mark --mark {} -j MASQUERADE",
        mark_value(bit)
    )
}

/// The POSTROUTING jump, without its `-A POSTROUTING` head (it is inserted).
pub fn masq_jump_spec() -> String {
    format!("-m comment --comment \"CNI portfwd requiring masquerade\" -j {MASQ_CHAIN}")
}

fn host_cidr(ip: IpAddr) -> String {
    format!("{ip}/{}", Family::of(&ip).max_prefix())
}

/// `--dport 8080`, or `--dport 20000:24999` for a range.
fn dport(d: &Run) -> String {
    let p = d.protocol.as_str();
    match d.is_range() {
        false => format!("-p {p} -m {p} --dport {}", d.first),
        true => format!("-p {p} -m {p} --dport {}:{}", d.first, d.last),
    }
}

fn dest(d: &Run) -> String {
    d.host_ip
        .map(|ip| format!("-d {} ", host_cidr(ip)))
        .unwrap_or_default()
}

/// The rules of the container chain, as `-A` lines, in upstream order:
/// per mapping (per run of them: plan.rs `runs`) hairpin mark, localhost
/// mark, then DNAT.
pub fn container_rules(plan: &Plan, fam: &FamilyPlan) -> Vec<String> {
    let chain = container_chain(&plan.key.network, &plan.key.container_id);
    let mark_target = match &plan.mark {
        MasqMark::Bit(_) => SETMARK_CHAIN.to_string(),
        MasqMark::ExternalChain(c) => c.clone(),
    };
    let mut rules = Vec::new();
    for d in &fam.runs() {
        for source in &fam.masquerade {
            let src = match source {
                MasqSource::Container => format!(
                    "-s {}/{} ",
                    fam.container.network(),
                    fam.container.prefix_len
                ),
                MasqSource::Localhost => "-s 127.0.0.1/32 ".to_string(),
                MasqSource::Any => String::new(),
            };
            rules.push(format!(
                "-A {chain} {src}{}{} -j {mark_target}",
                dest(d),
                dport(d)
            ));
        }
        // A range keeps the destination port: no port, as iptables-save
        // prints it (no brackets around an IPv6 address then).
        let to = match (fam.container.addr, d.is_range()) {
            (a, true) => a.to_string(),
            (IpAddr::V4(a), false) => format!("{a}:{}", d.container_port),
            (IpAddr::V6(a), false) => format!("[{a}]:{}", d.container_port),
        };
        rules.push(format!(
            "-A {chain} {}{} -j DNAT --to-destination {to}",
            dest(d),
            dport(d)
        ));
    }
    rules
}

/// Entry rules (without `-A CNI-HOSTPORT-DNAT`), protocols sorted, ports
/// in groups of 15 slots; the family's conditions go before the jump.
pub fn entry_specs(plan: &Plan, fam: &FamilyPlan) -> Vec<String> {
    let chain = container_chain(&plan.key.network, &plan.key.container_id);
    let comment = quote(&entry_comment(&plan.key.network, &plan.key.container_id));
    let conditions: String = fam.conditions.iter().map(|c| format!("{c} ")).collect();
    let mut specs = Vec::new();
    for (proto, ports) in &plan.entry_ports {
        // The tree layout leaves entry rules only the runs (tree.rs).
        let ports = match plan.iptables_layout {
            IptablesLayout::Rules => ports.clone(),
            IptablesLayout::Tree => super::tree::split(ports).0,
        };
        for list in multiport_lists(&ports) {
            specs.push(format!(
                "-p {proto} -m comment --comment {comment} -m multiport --dports {list} {conditions}-j {chain}",
            ));
        }
    }
    specs
}

/// `--dports` lists for `ports` (config order). Three or more adjacent
/// consecutive ports become `first:last`, which takes 2 of multiport's 15
/// slots (the kernel's limit, refused beyond); two stay `a,b` (as many
/// slots, upstream's text).
pub fn multiport_lists(ports: &[u16]) -> Vec<String> {
    let mut items: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match items.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(p) => *last = p,
            _ => items.push((p, p)),
        }
    }
    let mut words: Vec<(String, usize)> = Vec::new();
    for (first, last) in items {
        match last - first {
            0 => words.push((first.to_string(), 1)),
            1 => words.extend([(first.to_string(), 1), (last.to_string(), 1)]),
            _ => words.push((format!("{first}:{last}"), 2)),
        }
    }
    let mut lists: Vec<(Vec<String>, usize)> = Vec::new();
    for (word, slots) in words {
        match lists.last_mut() {
            Some((list, used)) if *used + slots <= MULTIPORT_MAX => {
                list.push(word);
                *used += slots;
            }
            _ => lists.push((vec![word], slots)),
        }
    }
    lists.into_iter().map(|(list, _)| list.join(",")).collect()
}

/// A saved rule line split into its chain and its spec (`-A C spec`).
pub fn split_rule(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("-A ")?;
    Some(rest.split_once(' ').unwrap_or((rest, "")))
}

/// The jump target of a rule spec, if any.
pub fn jump_target(spec: &str) -> Option<&str> {
    let mut words = spec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// A rule spec reduced to its options, order-free, with bare addresses
/// given their full prefix: two specs are the same rule when these match.
/// iptables-save reorders `-s`/`-d`/`-p` before matches, so a user's
/// conditions come back in another place than we wrote them.
pub fn canonical(spec: &str) -> Vec<String> {
    let words = shell_words(spec);
    let mut groups: Vec<String> = Vec::new();
    let mut negate = false;
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if w == "!" {
            negate = true;
            i += 1;
            continue;
        }
        let mut group = vec![long_option(w).to_string()];
        i += 1;
        while i < words.len() && !words[i].starts_with('-') && words[i] != "!" {
            group.push(with_prefix(&words[i]));
            i += 1;
        }
        if negate {
            group.insert(0, "!".into());
            negate = false;
        }
        groups.push(group.join(" "));
    }
    // `-p tcp` implies `-m tcp`; iptables-save prints it, users may not.
    let protos: Vec<String> = groups
        .iter()
        .filter_map(|g| {
            g.strip_prefix("--protocol ")
                .map(|p| format!("--match {p}"))
        })
        .collect();
    groups.retain(|g| !protos.contains(g));
    groups.sort();
    groups
}

fn long_option(w: &str) -> &str {
    match w {
        "-s" => "--source",
        "-d" => "--destination",
        "-p" => "--protocol",
        "-m" => "--match",
        "-j" => "--jump",
        "-i" => "--in-interface",
        "-o" => "--out-interface",
        "--destination-ports" => "--dports",
        "--source-ports" => "--sports",
        "--destination-port" => "--dport",
        "--source-port" => "--sport",
        other => other,
    }
}

fn with_prefix(word: &str) -> String {
    match word.parse::<IpAddr>() {
        Ok(ip) => host_cidr(ip),
        Err(_) => word.to_string(),
    }
}

/// Splits a spec like iptables-restore does: double quotes group words,
/// backslash escapes the next character.
pub fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Parses the container ID and network out of an entry-rule comment.
pub fn parse_entry_comment(comment: &str) -> Option<(String, String)> {
    let rest = comment.strip_prefix("dnat name: \"")?;
    let (network, rest) = rest.split_once("\" id: \"")?;
    let id = rest.strip_suffix('"').unwrap_or(rest);
    Some((network.to_string(), id.to_string()))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
