//! Reading saved nat tables back: which containers they hold, with their
//! mappings and options (for `list`, `migrate` and DEL's conntrack flush).

use super::*;

/// The containers whose rules the saved tables hold, per (ID, network).
pub(super) fn containers(
    backend: crate::BackendKind,
    tables: &[(Family, SavedTable)],
) -> Vec<InstalledContainer> {
    let mut by_id: BTreeMap<(String, String), (Vec<InstalledMapping>, InstalledOptions)> =
        BTreeMap::new();
    for (family, saved) in tables {
        for (network, id, chain) in entries(saved) {
            let (mappings, options) = by_id.entry((id, network)).or_default();
            options.tree_leaves |= saved.jumps_to(&chain).any(|(c, _)| tree::is_leaf(c));
            mappings.extend(mappings_of_chain(*family, saved, &chain));
            read_options(*family, saved, &chain, options);
        }
    }
    by_id
        .into_iter()
        .map(|((container_id, network), (mappings, options))| {
            // Chain order is config order, which decides between
            // overlapping mappings: keep it.
            InstalledContainer {
                backend,
                container_id,
                network: Some(network),
                mappings,
                options,
            }
        })
        .collect()
}

/// (network, container ID, container chain) of every entry rule.
pub(super) fn entries(saved: &SavedTable) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = saved
        .rules
        .iter()
        .filter(|(chain, _)| *chain == rules::DNAT_CHAIN || tree::is_leaf(chain))
        .flat_map(|(_, specs)| specs)
        .filter_map(|spec| {
            let words = rules::shell_words(spec);
            let comment = after(&words, "--comment")?;
            let (network, id) = rules::parse_entry_comment(comment)?;
            Some((network, id, rules::jump_target(spec)?.to_string()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The (protocol, host port) an entry rule sends to its container chain:
/// `-p tcp ... -m multiport --dports 8080,9090 -j CNI-DN-...`. Entry rules
/// list every port of their protocol whatever the mapping's host IP
/// family, so a port mapped on an IPv6 host IP shows in IPv4's too: a
/// superset, harmless to the UDP conntrack flush (a flushed entry is
/// re-created through the rules on the next packet).
pub(super) fn entry_ports(family: Family, spec: &str) -> Vec<ClosedPort> {
    let words = rules::shell_words(spec);
    let Some(protocol) = after(&words, "-p").and_then(|p| Protocol::parse(p)) else {
        return Vec::new();
    };
    let ports = after(&words, "--dports").or_else(|| after(&words, "--dport"));
    ports
        .into_iter()
        .flat_map(|list| list.split(','))
        .filter_map(port_range)
        .flat_map(|(first, last)| first..=last)
        .map(|host_port| ClosedPort {
            family,
            protocol,
            host_port,
        })
        .collect()
}

/// `8080` or `20000:24999` (as multiport and `--dport` print them).
fn port_range(word: &str) -> Option<(u16, u16)> {
    let (first, last) = match word.split_once(':') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = word.parse().ok()?;
            (p, p)
        }
    };
    (first <= last).then_some((first, last))
}

/// Reads the DNAT rules of a container chain back into mappings.
pub(super) fn mappings_of_chain(
    family: Family,
    saved: &SavedTable,
    chain: &str,
) -> Vec<InstalledMapping> {
    saved
        .rules_of(chain)
        .iter()
        .flat_map(|spec| parse_dnat(family, spec))
        .collect()
}

/// Adds what the container chain and its entry rules say about snat,
/// masqAll, the mark and conditions to `options`.
fn read_options(family: Family, saved: &SavedTable, chain: &str, options: &mut InstalledOptions) {
    for spec in saved.rules_of(chain) {
        let Some(target) = rules::jump_target(spec).filter(|t| *t != "DNAT") else {
            continue;
        };
        options.snat = true;
        options.mark = Some(if target == rules::SETMARK_CHAIN {
            MasqMark::Bit(setmark_bit(saved).unwrap_or(MasqMark::DEFAULT_BIT))
        } else {
            MasqMark::ExternalChain(target.to_string())
        });
        let words = rules::shell_words(spec);
        match words.iter().position(|w| w == "-s") {
            None => options.masq_all = true,
            Some(i) => {
                let source = words.get(i + 1).map(String::as_str).unwrap_or_default();
                if let Some((net, len)) = source.split_once('/') {
                    if net != "127.0.0.1" {
                        if let Ok(len) = len.parse() {
                            options.prefix_len.insert(family, len);
                        }
                    }
                }
            }
        }
    }
    // Entry and leaf rules hold the conditions: anything beyond the words
    // we write.
    for (_, spec) in saved
        .jumps_to(chain)
        .filter(|(c, _)| *c == rules::DNAT_CHAIN || tree::is_leaf(c))
    {
        let words = rules::shell_words(spec);
        let mut rest = words.iter();
        while let Some(w) = rest.next() {
            match w.as_str() {
                "-p" | "--comment" | "--dports" | "--destination-ports" | "--dport" | "-j" => {
                    rest.next();
                }
                "-m" => {
                    if !matches!(
                        rest.next().map(String::as_str),
                        Some("comment" | "multiport" | "tcp" | "udp" | "sctp")
                    ) {
                        options.conditions = true;
                    }
                }
                _ => options.conditions = true,
            }
        }
    }
}

/// The word after the first `flag` in a rule's words (`-p tcp`: "tcp").
fn after<'w>(words: &'w [String], flag: &str) -> Option<&'w String> {
    words.iter().skip_while(|w| *w != flag).nth(1)
}

/// The bit our SETMARK chain sets, from its `--set-xmark V/V` rule.
fn setmark_bit(saved: &SavedTable) -> Option<u8> {
    saved
        .rules_of(rules::SETMARK_CHAIN)
        .iter()
        .find_map(|spec| {
            let words = rules::shell_words(spec);
            let value = after(&words, "--set-xmark")?;
            let hex = value.split('/').next()?.strip_prefix("0x")?;
            let v = u32::from_str_radix(hex, 16).ok()?;
            v.is_power_of_two().then(|| v.trailing_zeros() as u8)
        })
}

/// A DNAT rule's mappings: one, or one per port of a `--dport` range,
/// which a DNAT without port sends to the same port.
fn parse_dnat(family: Family, spec: &str) -> Vec<InstalledMapping> {
    let words = rules::shell_words(spec);
    let after = |flag: &str| after(&words, flag);
    let Some(to) = after("--to-destination") else {
        return Vec::new();
    };
    // `10.0.0.5`, `fd00::5` (no port), `10.0.0.5:80`, `[fd00::5]:80`.
    let target = match to.parse::<IpAddr>() {
        Ok(ip) => Some((ip, None)),
        Err(_) => to.rsplit_once(':').and_then(|(ip, port)| {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            Some((ip.parse().ok()?, Some(port.parse::<u16>().ok()?)))
        }),
    };
    let host_ip = after("-d")
        .and_then(|d| d.split('/').next())
        .and_then(|d| d.parse().ok());
    let protocol = after("-p").and_then(|p| Protocol::parse(p));
    let ports = after("--dport").and_then(|p| port_range(p));
    let (Some((container_ip, container_port)), Some(protocol), Some(host_ports)) =
        (target, protocol, ports)
    else {
        return Vec::new();
    };
    crate::DnatRule {
        family,
        protocol,
        host_ip,
        host_ports,
        container_ip,
        container_port,
    }
    .mappings()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::golden_request;
    use crate::Request;
    use rstest::rstest;

    /// What iptables-save would print after an ADD of `req`, per family.
    fn saved_after_add(req: &Request) -> Vec<(Family, SavedTable)> {
        let plan = Plan::new(req);
        plan.families
            .iter()
            .map(|fam| {
                let mut lines = rules::container_rules(&plan, fam);
                lines.extend(
                    rules::entry_specs(&plan, fam)
                        .into_iter()
                        .map(|s| format!("-A {} {s}", rules::DNAT_CHAIN)),
                );
                if let MasqMark::Bit(bit) = plan.mark {
                    lines.push(rules::setmark_rule(bit));
                }
                (fam.family, SavedTable::parse(&lines.join("\n")))
            })
            .collect()
    }

    /// Reading rules back and re-planning them gives the same rules: what
    /// `portmap migrate` relies on.
    #[rstest]
    #[case::golden(golden_request())]
    #[case::masq_all_external_chain(Request { masq_all: true, mark: MasqMark::ExternalChain("KUBE-MARK-MASQ".into()), ..golden_request() })]
    #[case::snat_off(Request { snat: false, ..golden_request() })]
    #[case::mark_bit_5(Request { mark: MasqMark::Bit(5), ..golden_request() })]
    #[case::ranges(crate::plan::tests::ranged_request())]
    fn rules_read_back_re_plan_identically(#[case] req: Request) {
        let tables = saved_after_add(&req);
        let listed = containers(crate::BackendKind::IptablesNft, &tables);
        assert_eq!(listed.len(), 1);
        let c = &listed[0];
        assert_eq!(c.network.as_deref(), Some("goldennet"));
        assert!(!c.options.conditions);
        let nft = crate::nftables::Nftables::new("/nonexistent/nft".into());
        let back = crate::migrate::request_of(c, None, &nft, |_| None).expect("request");
        assert_eq!((back.snat, back.masq_all), (req.snat, req.masq_all));
        if req.snat {
            assert_eq!(back.mark, req.mark);
        }
        let (want, got) = (Plan::new(&req), Plan::new(&back));
        for fam in &want.families {
            let again = got.family(fam.family).expect("family");
            assert_eq!(
                rules::container_rules(&got, again),
                rules::container_rules(&want, fam)
            );
        }
    }

    #[test]
    fn conditions_in_entry_rules_are_noticed() {
        let req = Request {
            conditions_v4: vec!["-s".into(), "192.0.2.0/24".into()],
            ..golden_request()
        };
        let listed = containers(crate::BackendKind::IptablesNft, &saved_after_add(&req));
        assert!(listed[0].options.conditions);
        let nft = crate::nftables::Nftables::new("/nonexistent/nft".into());
        let err =
            crate::migrate::request_of(&listed[0], None, &nft, |_| None).expect_err("refused");
        assert!(err.to_string().contains("match conditions"), "{err}");
    }

    #[test]
    fn parses_dnat_rules_back() {
        let m = parse_dnat(
            Family::V6,
            "-d 2001:db8::1/128 -p tcp -m tcp --dport 9443 -j DNAT --to-destination [fd00:88::5]:443",
        )
        .pop()
        .expect("parsed");
        assert_eq!(m.host_ip, Some("2001:db8::1".parse().expect("ip")));
        assert_eq!((m.host_port, m.container_port), (9443, 443));
        assert_eq!(m.container_ip, "fd00:88::5".parse::<IpAddr>().expect("ip"));
        assert!(parse_dnat(
            Family::V4,
            "-s 10.0.0.0/8 -p tcp -m tcp --dport 1 -j CNI-HOSTPORT-SETMARK"
        )
        .is_empty());
        let range = parse_dnat(
            Family::V6,
            "-p udp -m udp --dport 20000:20002 -j DNAT --to-destination fd00:88::5",
        );
        let got: Vec<(u16, u16)> = range
            .iter()
            .map(|m| (m.host_port, m.container_port))
            .collect();
        assert_eq!(got, [(20000, 20000), (20001, 20001), (20002, 20002)]);
        assert!(range.iter().all(|m| m.protocol == Protocol::Udp
            && m.container_ip == "fd00:88::5".parse::<IpAddr>().expect("ip")));
        let entry = r#"-p udp -m comment --comment "x" -m multiport --dports 53,20000:20002 -j C"#;
        let ports: Vec<u16> = entry_ports(Family::V4, entry)
            .iter()
            .map(|p| p.host_port)
            .collect();
        assert_eq!(ports, [53, 20000, 20001, 20002]);
    }
}
