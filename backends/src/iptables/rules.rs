//! Pure rule text for the iptables backend, written in the exact form
//! `iptables-save` prints, so CHECK can compare saved lines with ours and a
//! host can switch between upstream's binary and ours in either direction.

use std::net::IpAddr;

use sha2::{Digest, Sha512};

use crate::plan::{Dnat, FamilyPlan, MasqSource, Plan};
use crate::{Family, MasqMark};

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
    let head = format!("CNI-{prefix}");
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{head}{}", &hex[..CHAIN_NAME_MAX - head.len()])
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

fn dport(d: &Dnat) -> String {
    let p = d.protocol.as_str();
    format!("-p {p} -m {p} --dport {}", d.host_port)
}

fn dest(d: &Dnat) -> String {
    d.host_ip
        .map(|ip| format!("-d {} ", host_cidr(ip)))
        .unwrap_or_default()
}

/// The rules of the container chain, as `-A` lines, in upstream order:
/// per mapping hairpin mark, localhost mark, then DNAT.
pub fn container_rules(plan: &Plan, fam: &FamilyPlan) -> Vec<String> {
    let chain = container_chain(&plan.key.network, &plan.key.container_id);
    let mark_target = match &plan.mark {
        MasqMark::Bit(_) => SETMARK_CHAIN.to_string(),
        MasqMark::ExternalChain(c) => c.clone(),
    };
    let mut rules = Vec::new();
    for d in &fam.dnats {
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
        let to = match fam.container.addr {
            IpAddr::V4(a) => format!("{a}:{}", d.container_port),
            IpAddr::V6(a) => format!("[{a}]:{}", d.container_port),
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
/// in groups of 15; the family's conditions go before the jump.
pub fn entry_specs(plan: &Plan, fam: &FamilyPlan) -> Vec<String> {
    let chain = container_chain(&plan.key.network, &plan.key.container_id);
    let comment = quote(&entry_comment(&plan.key.network, &plan.key.container_id));
    let conditions: String = fam.conditions.iter().map(|c| format!("{c} ")).collect();
    let mut specs = Vec::new();
    for (proto, ports) in &plan.entry_ports {
        for group in ports.chunks(MULTIPORT_MAX) {
            let list: Vec<String> = group.iter().map(u16::to_string).collect();
            specs.push(format!(
                "-p {proto} -m comment --comment {comment} -m multiport --dports {} {conditions}-j {chain}",
                list.join(",")
            ));
        }
    }
    specs
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
mod tests {
    use super::*;
    use crate::plan::tests::golden_request;
    use crate::Request;

    #[test]
    fn chain_names_match_upstream_vectors() {
        assert_eq!(
            container_chain("cni-portmap-unit-test", "unit-test-10295"),
            "CNI-DN-5b3cd8c3aa24b836f0fc5"
        );
        assert_eq!(
            container_chain("goldennet", "golden-1"),
            "CNI-DN-734e1f1c3c9c8b2b7b8e7"
        );
        assert_eq!(old_snat_chain("goldennet", "golden-1").len(), 28);
        assert!(old_snat_chain("goldennet", "golden-1").starts_with("CNI-SN-"));
    }

    #[test]
    fn comment_is_cut_to_255_bytes_on_a_char_boundary() {
        let id = "é".repeat(200);
        let c = entry_comment("net", &id);
        assert!(c.len() <= 255 && c.len() >= 254, "{}", c.len());
        assert!(c.starts_with("dnat name: \"net\" id: \"é"));
    }

    #[test]
    fn quote_round_trips_through_shell_words() {
        let c = entry_comment("goldennet", "golden-1");
        let q = quote(&c);
        assert_eq!(q, r#""dnat name: \"goldennet\" id: \"golden-1\"""#);
        assert_eq!(
            shell_words(&format!("--comment {q} -j X")),
            vec!["--comment", &c, "-j", "X"]
        );
        assert_eq!(
            parse_entry_comment(&c),
            Some(("goldennet".into(), "golden-1".into()))
        );
    }

    #[test]
    fn mark_values() {
        assert_eq!(mark_value(13), "0x2000/0x2000");
        assert_eq!(mark_value(5), "0x20/0x20");
        assert_eq!(mark_value(0), "0x1/0x1");
        assert_eq!(mark_value(31), "0x80000000/0x80000000");
    }

    fn rendered(req: &Request, family: Family) -> Vec<String> {
        let plan = Plan::new(req);
        let fam = plan.family(family).expect("family");
        let mut lines = container_rules(&plan, fam);
        lines.extend(
            entry_specs(&plan, fam)
                .into_iter()
                .map(|s| format!("-A {DNAT_CHAIN} {s}")),
        );
        lines
    }

    /// The container part of `golden/iptables-default.iptables-save.txt`.
    #[test]
    fn golden_default_v4_and_v6() {
        let ch = "CNI-DN-734e1f1c3c9c8b2b7b8e7";
        let entry = r#"-m comment --comment "dnat name: \"goldennet\" id: \"golden-1\"" -m multiport --dports"#;
        let v4 = vec![
            format!("-A {ch} -s 10.88.0.0/16 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.5:80"),
            format!("-A {ch} -s 10.88.0.0/16 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -s 127.0.0.1/32 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -p udp -m udp --dport 8080 -j DNAT --to-destination 10.88.0.5:80"),
            format!("-A {ch} -s 10.88.0.0/16 -d 192.0.2.1/32 -p tcp -m tcp --dport 9090 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -s 127.0.0.1/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 9090 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -d 192.0.2.1/32 -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.88.0.5:90"),
            format!("-A CNI-HOSTPORT-DNAT -p tcp {entry} 8080,9090,9443 -j {ch}"),
            format!("-A CNI-HOSTPORT-DNAT -p udp {entry} 8080 -j {ch}"),
        ];
        assert_eq!(rendered(&golden_request(), Family::V4), v4);
        let v6 = vec![
            format!("-A {ch} -s fd00:88::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:88::5]:80"),
            format!("-A {ch} -s fd00:88::/64 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -p udp -m udp --dport 8080 -j DNAT --to-destination [fd00:88::5]:80"),
            format!("-A {ch} -s fd00:88::/64 -d 2001:db8::1/128 -p tcp -m tcp --dport 9443 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -d 2001:db8::1/128 -p tcp -m tcp --dport 9443 -j DNAT --to-destination [fd00:88::5]:443"),
            format!("-A CNI-HOSTPORT-DNAT -p tcp {entry} 8080,9090,9443 -j {ch}"),
            format!("-A CNI-HOSTPORT-DNAT -p udp {entry} 8080 -j {ch}"),
        ];
        assert_eq!(rendered(&golden_request(), Family::V6), v6);
    }

    #[test]
    fn masq_all_drops_source_and_localhost_and_external_chain_is_jumped_to() {
        let req = Request {
            masq_all: true,
            mark: MasqMark::ExternalChain("KUBE-MARK-MASQ".into()),
            ..golden_request()
        };
        let lines = rendered(&req, Family::V4);
        assert_eq!(
            lines[0],
            "-A CNI-DN-734e1f1c3c9c8b2b7b8e7 -p tcp -m tcp --dport 8080 -j KUBE-MARK-MASQ"
        );
        assert!(!lines.iter().any(|l| l.contains("127.0.0.1")));
        assert!(!lines.iter().any(|l| l.contains("-s ")));
    }

    #[test]
    fn snat_off_leaves_only_dnat() {
        let req = Request {
            snat: false,
            ..golden_request()
        };
        let lines = rendered(&req, Family::V4);
        assert!(lines.iter().all(|l| !l.contains("SETMARK")), "{lines:#?}");
        assert_eq!(lines.len(), 3 + 2);
    }

    #[test]
    fn forty_ports_make_three_multiport_groups() {
        let req = Request {
            mappings: (0..40)
                .map(|i| crate::plan::tests::mapping(crate::Protocol::Tcp, 10000 + i, 80, None))
                .collect(),
            ..golden_request()
        };
        let plan = Plan::new(&req);
        let specs = entry_specs(&plan, plan.family(Family::V4).expect("v4"));
        let counts: Vec<usize> = specs
            .iter()
            .map(|s| {
                s.split("--dports ")
                    .nth(1)
                    .expect("ports")
                    .split(' ')
                    .next()
                    .expect("list")
                    .split(',')
                    .count()
            })
            .collect();
        assert_eq!(counts, vec![15, 15, 10]);
    }

    #[test]
    fn conditions_precede_the_jump_and_compare_order_free() {
        let req = Request {
            conditions_v4: vec![
                "-s".into(),
                "192.0.2.0/24".into(),
                "!".into(),
                "-i".into(),
                "lo".into(),
            ],
            ..golden_request()
        };
        let plan = Plan::new(&req);
        let spec = &entry_specs(&plan, plan.family(Family::V4).expect("v4"))[0];
        assert!(
            spec.ends_with("-s 192.0.2.0/24 ! -i lo -j CNI-DN-734e1f1c3c9c8b2b7b8e7"),
            "{spec}"
        );
        // What iptables-save prints for it.
        let saved = r#"-s 192.0.2.0/24 ! -i lo -p tcp -m comment --comment "dnat name: \"goldennet\" id: \"golden-1\"" -m multiport --dports 8080,9090,9443 -j CNI-DN-734e1f1c3c9c8b2b7b8e7"#;
        assert_eq!(canonical(spec), canonical(saved));
        assert_ne!(canonical(spec), canonical(&saved.replace("8080,", "")));
    }

    #[test]
    fn canonical_adds_host_prefixes_and_implied_matches() {
        assert_eq!(
            canonical("-d 1.2.3.4 -p tcp --dport 80 -j X"),
            canonical("-d 1.2.3.4/32 -p tcp -m tcp --dport 80 -j X")
        );
    }
}
