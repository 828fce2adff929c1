//! Unit tests of rules.rs (kept apart for its size).

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
    let entry =
        r#"-m comment --comment "dnat name: \"goldennet\" id: \"golden-1\"" -m multiport --dports"#;
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
            .map(|i| crate::plan::tests::mapping(crate::Protocol::Tcp, 10000 + 2 * i, 80, None))
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

#[test]
fn multiport_ranges_take_two_slots_and_pairs_stay_apart() {
    assert_eq!(multiport_lists(&[8080, 9090, 9443]), vec!["8080,9090,9443"]);
    assert_eq!(multiport_lists(&[80, 81, 90]), vec!["80,81,90"]);
    assert_eq!(multiport_lists(&[80, 81, 82, 90]), vec!["80:82,90"]);
    let all: Vec<u16> = (20000..25000).collect();
    assert_eq!(multiport_lists(&all), vec!["20000:24999"]);
    // 7 ranges (14 slots) and a single fill one rule; the next range
    // would be 16 slots, so it starts the next.
    let mut ports = Vec::new();
    for i in 0..8u16 {
        ports.extend([i * 10, i * 10 + 1, i * 10 + 2]);
    }
    ports.push(100);
    assert_eq!(
        multiport_lists(&ports[..21]),
        vec!["0:2,10:12,20:22,30:32,40:42,50:52,60:62"]
    );
    assert_eq!(
        multiport_lists(&[&ports[..21], &[99]].concat()),
        vec!["0:2,10:12,20:22,30:32,40:42,50:52,60:62,99"]
    );
    assert_eq!(
        multiport_lists(&ports),
        vec!["0:2,10:12,20:22,30:32,40:42,50:52,60:62", "70:72,100"]
    );
    assert_eq!(multiport_lists(&[65534, 65535]), vec!["65534,65535"]);
    assert_eq!(
        multiport_lists(&[65533, 65534, 65535, 1]),
        vec!["65533:65535,1"]
    );
}

/// A run of consecutive ports, each to the same port, is one rule per
/// kind with a `--dport` range and a DNAT keeping the port, as
/// iptables-save prints them (v6: no brackets without a port).
#[test]
fn a_run_renders_as_one_range_rule_per_kind() {
    use crate::plan::tests::mapping;
    use crate::Protocol;
    let mut mappings: Vec<_> = (20000..25000)
        .map(|p| mapping(Protocol::Tcp, p, p, None))
        .collect();
    mappings.push(mapping(Protocol::Tcp, 25000, 80, None));
    let req = Request {
        mappings,
        ..golden_request()
    };
    let ch = "CNI-DN-734e1f1c3c9c8b2b7b8e7";
    let entry =
        r#"-m comment --comment "dnat name: \"goldennet\" id: \"golden-1\"" -m multiport --dports"#;
    assert_eq!(
        rendered(&req, Family::V4),
        vec![
            format!(
                "-A {ch} -s 10.88.0.0/16 -p tcp -m tcp --dport 20000:24999 -j CNI-HOSTPORT-SETMARK"
            ),
            format!(
                "-A {ch} -s 127.0.0.1/32 -p tcp -m tcp --dport 20000:24999 -j CNI-HOSTPORT-SETMARK"
            ),
            format!("-A {ch} -p tcp -m tcp --dport 20000:24999 -j DNAT --to-destination 10.88.0.5"),
            format!("-A {ch} -s 10.88.0.0/16 -p tcp -m tcp --dport 25000 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -s 127.0.0.1/32 -p tcp -m tcp --dport 25000 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {ch} -p tcp -m tcp --dport 25000 -j DNAT --to-destination 10.88.0.5:80"),
            format!("-A CNI-HOSTPORT-DNAT -p tcp {entry} 20000:25000 -j {ch}"),
        ]
    );
    let v6 = rendered(&req, Family::V6);
    assert_eq!(
        v6[1],
        format!("-A {ch} -p tcp -m tcp --dport 20000:24999 -j DNAT --to-destination fd00:88::5")
    );
    assert_eq!(v6.len(), 5);
}
