//! Request → per-family rule plan. Pure: no I/O, so both backends render
//! the same plan and the plan itself is unit-tested once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::{
    ContainerAddr, ContainerKey, Family, IptablesLayout, Layout, MasqMark, Protocol, Request,
};

/// Who needs masquerading so replies come back through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqSource {
    /// Hairpin: the container talks to its own host port. iptables matches
    /// the container's subnet, nftables the container address (as upstream).
    Container,
    /// `127.0.0.1:hostPort` on the host (IPv4 only: ::1 cannot be DNATed).
    Localhost,
    /// masqAll: every source.
    Any,
}

/// One DNAT of a hostPort to the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub protocol: Protocol,
    pub host_port: u16,
    /// A specific, non-unspecified host address of this family.
    pub host_ip: Option<IpAddr>,
    pub container_port: u16,
}

/// Adjacent mappings (in config order) one rule can carry: same protocol
/// and host IP, host ports `first..=last`, each to the same port on the
/// container. A range keeps the destination port (no port in the DNAT):
/// neither nft (1.0.6 has no shifted port ranges in its syntax or JSON)
/// nor iptables 1.4.21 can shift a range, so a run with an offset
/// (hostPort != containerPort) stays one mapping per rule, as today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub first: u16,
    pub last: u16,
    /// The container port of `first` (equal to it when a range).
    pub container_port: u16,
}

impl Run {
    /// More than one port: rendered as a port range.
    pub fn is_range(&self) -> bool {
        self.last > self.first
    }
}

/// `dnats` as rules. Two adjacent mappings already make a range: one
/// rule instead of two, matching exactly the same packets at the same
/// place in the chain (only adjacent mappings merge, so config order, which
/// decides between overlapping ones, is kept). Distinct ports, as in
/// upstream's goldens, stay one rule each, byte for byte.
pub fn runs(dnats: &[Dnat]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for d in dnats {
        if let Some(r) = out.last_mut() {
            let extends = r.protocol == d.protocol
                && r.host_ip == d.host_ip
                && r.first == r.container_port
                && d.host_port == d.container_port
                && r.last.checked_add(1) == Some(d.host_port);
            if extends {
                r.last = d.host_port;
                continue;
            }
        }
        out.push(Run {
            protocol: d.protocol,
            host_ip: d.host_ip,
            first: d.host_port,
            last: d.host_port,
            container_port: d.container_port,
        });
    }
    out
}

/// Rules of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    pub container: ContainerAddr,
    /// Mappings that apply to this family, in config order.
    pub dnats: Vec<Dnat>,
    /// Empty when snat is off.
    pub masquerade: Vec<MasqSource>,
    pub conditions: Vec<String>,
    /// The request's layout (a rendering choice only nftables makes).
    pub layout: Layout,
}

impl FamilyPlan {
    /// The DNATs as the rules that carry them ([`runs`]).
    pub fn runs(&self) -> Vec<Run> {
        runs(&self.dnats)
    }

    /// The runs a map element can carry: with the maps layout, single
    /// ports on any host IP of a container without conditions; the first
    /// of two with the same protocol and port (the one a rule would let
    /// win). None with the rules layout.
    pub fn element_runs(&self) -> Vec<Run> {
        let mut seen = std::collections::BTreeSet::new();
        self.runs()
            .into_iter()
            .filter(|r| self.map_eligible(r))
            .filter(|r| seen.insert((r.protocol, r.first)))
            .collect()
    }

    /// The runs left as rules (in front of the map lookup). An eligible
    /// duplicate of an element is neither: as a rule it would never match.
    pub fn rule_runs(&self) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| !self.map_eligible(r))
            .collect()
    }

    fn map_eligible(&self, r: &Run) -> bool {
        self.in_maps() && r.host_ip.is_none() && !r.is_range()
    }

    /// Whether the maps layout applies: asked for, and no conditions
    /// (those keep a container in rules whatever the layout).
    fn in_maps(&self) -> bool {
        self.layout == Layout::Maps && self.conditions.is_empty()
    }

    /// The masquerade sources a set element carries (the maps layout's
    /// hairpin and localhost); masqAll stays a rule.
    pub fn masquerade_elements(&self) -> Vec<MasqSource> {
        self.masquerade
            .iter()
            .copied()
            .filter(|s| self.in_maps() && *s != MasqSource::Any)
            .collect()
    }

    /// The masquerade sources left as rules.
    pub fn masquerade_rules(&self) -> Vec<MasqSource> {
        let elements = self.masquerade_elements();
        self.masquerade
            .iter()
            .copied()
            .filter(|s| !elements.contains(s))
            .collect()
    }
}

/// Everything to install for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub key: ContainerKey,
    pub families: Vec<FamilyPlan>,
    pub mark: MasqMark,
    pub snat: bool,
    /// Host ports per protocol of ALL mappings, also those skipped for a
    /// family: upstream's iptables entry rules list them so, and we stay
    /// byte-compatible.
    pub entry_ports: BTreeMap<Protocol, Vec<u16>>,
    /// The request's iptables layout (a rendering choice only iptables makes).
    pub iptables_layout: IptablesLayout,
}

impl Plan {
    pub fn new(req: &Request) -> Plan {
        let families = [req.v4, req.v6]
            .into_iter()
            .flatten()
            .map(|container| family_plan(req, container))
            .collect();
        let mut entry_ports: BTreeMap<Protocol, Vec<u16>> = BTreeMap::new();
        for m in &req.mappings {
            entry_ports.entry(m.protocol).or_default().push(m.host_port);
        }
        Plan {
            key: req.key.clone(),
            families,
            mark: req.mark.clone(),
            snat: req.snat,
            entry_ports,
            iptables_layout: req.iptables_layout,
        }
    }

    pub fn family(&self, family: Family) -> Option<&FamilyPlan> {
        self.families.iter().find(|f| f.family == family)
    }

    /// True when there is nothing to install (no address or no mapping).
    pub fn is_empty(&self) -> bool {
        self.families.iter().all(|f| f.dnats.is_empty())
    }

    /// The IPv4 container address whose host interface ADD turns
    /// `route_localnet` on for (so `127.0.0.1:hostPort` can be DNATed),
    /// if any: then the host accepts packets to 127.0.0.0/8 from that side,
    /// and the backend installs its localnet guard in the same write.
    pub fn localnet_container(&self) -> Option<std::net::Ipv4Addr> {
        let fam = self
            .family(Family::V4)
            .filter(|f| self.snat && !f.dnats.is_empty())?;
        match fam.container.addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
}

fn family_plan(req: &Request, container: ContainerAddr) -> FamilyPlan {
    let family = container.family();
    let dnats = req
        .mappings
        .iter()
        .filter(|m| m.host_ip.is_none_or(|ip| Family::of(&ip) == family))
        .map(|m| Dnat {
            protocol: m.protocol,
            host_port: m.host_port,
            host_ip: m.host_ip.filter(|ip| !ip.is_unspecified()),
            container_port: m.container_port,
        })
        .collect();
    let masquerade = match (req.snat, req.masq_all, family) {
        (false, _, _) => vec![],
        (true, true, _) => vec![MasqSource::Any],
        (true, false, Family::V4) => vec![MasqSource::Container, MasqSource::Localhost],
        (true, false, Family::V6) => vec![MasqSource::Container],
    };
    let conditions = match family {
        Family::V4 => req.conditions_v4.clone(),
        Family::V6 => req.conditions_v6.clone(),
    };
    FamilyPlan {
        family,
        container,
        dnats,
        masquerade,
        conditions,
        layout: req.layout,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::PortMapping;
    use rstest::rstest;

    pub fn addr(s: &str) -> ContainerAddr {
        let (a, p) = s.split_once('/').expect("cidr");
        ContainerAddr {
            addr: a.parse().expect("ip"),
            prefix_len: p.parse().expect("prefix"),
        }
    }

    pub fn mapping(proto: Protocol, host: u16, cont: u16, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: cont,
            protocol: proto,
            host_ip: host_ip.map(|s| s.parse().expect("ip")),
        }
    }

    /// The request behind `backends/tests/golden/*` (their configs say so:
    /// `golden_requests_are_what_the_golden_configs_say`).
    pub fn golden_request() -> Request {
        Request {
            key: ContainerKey {
                network: "goldennet".into(),
                container_id: "golden-1".into(),
            },
            v4: Some(addr("10.88.0.5/16")),
            v6: Some(addr("fd00:88::5/64")),
            mappings: vec![
                mapping(Protocol::Tcp, 8080, 80, None),
                mapping(Protocol::Udp, 8080, 80, None),
                mapping(Protocol::Tcp, 9090, 90, Some("192.0.2.1")),
                mapping(Protocol::Tcp, 9443, 443, Some("2001:db8::1")),
            ],
            snat: true,
            masq_all: false,
            mark: MasqMark::Bit(13),
            conditions_v4: vec![],
            conditions_v6: vec![],
            layout: Default::default(),
            iptables_layout: Default::default(),
        }
    }

    /// The golden container with port ranges: runs on any and on a
    /// specific host IP, both protocols, and mappings with an offset.
    pub fn ranged_request() -> Request {
        let mut mappings: Vec<PortMapping> = (20000..21000)
            .map(|p| mapping(Protocol::Tcp, p, p, None))
            .collect();
        mappings.extend((20000..20010).map(|p| mapping(Protocol::Udp, p, p, None)));
        mappings.push(mapping(Protocol::Tcp, 8080, 80, None));
        mappings.push(mapping(Protocol::Tcp, 8081, 81, None));
        mappings.extend((30000..30005).map(|p| mapping(Protocol::Tcp, p, p, Some("192.0.2.1"))));
        mappings.extend((30000..30003).map(|p| mapping(Protocol::Tcp, p, p, Some("2001:db8::1"))));
        Request {
            mappings,
            ..golden_request()
        }
    }

    /// Another container beside the golden one: its own ID, IP and ports.
    pub fn neighbour(id: &str, last_octet: u8) -> Plan {
        let mut req = golden_request();
        req.key.container_id = id.into();
        req.v4 = Some(addr(&format!("10.88.0.{last_octet}/16")));
        req.v6 = None;
        req.mappings.truncate(1);
        req.mappings[0].host_port = 20000 + u16::from(last_octet);
        Plan::new(&req)
    }

    fn dnat(proto: Protocol, host: u16, cont: u16, host_ip: Option<&str>) -> Dnat {
        Dnat {
            protocol: proto,
            host_port: host,
            host_ip: host_ip.map(|s| s.parse().expect("ip")),
            container_port: cont,
        }
    }

    #[test]
    fn golden_request_splits_by_family_and_skips_wrong_family_host_ips() {
        let plan = Plan::new(&golden_request());
        let v4 = plan.family(Family::V4).expect("v4");
        assert_eq!(
            v4.dnats,
            vec![
                dnat(Protocol::Tcp, 8080, 80, None),
                dnat(Protocol::Udp, 8080, 80, None),
                dnat(Protocol::Tcp, 9090, 90, Some("192.0.2.1")),
            ]
        );
        let v6 = plan.family(Family::V6).expect("v6");
        assert_eq!(
            v6.dnats,
            vec![
                dnat(Protocol::Tcp, 8080, 80, None),
                dnat(Protocol::Udp, 8080, 80, None),
                dnat(Protocol::Tcp, 9443, 443, Some("2001:db8::1")),
            ]
        );
        // Entry ports keep every mapping, also the skipped ones (upstream quirk).
        assert_eq!(plan.entry_ports[&Protocol::Tcp], vec![8080, 9090, 9443]);
        assert_eq!(plan.entry_ports[&Protocol::Udp], vec![8080]);
    }

    #[rstest]
    #[case::default_v4(true, false, Family::V4, vec![MasqSource::Container, MasqSource::Localhost])]
    #[case::default_v6_has_no_localhost(true, false, Family::V6, vec![MasqSource::Container])]
    #[case::masq_all_v4(true, true, Family::V4, vec![MasqSource::Any])]
    #[case::masq_all_v6(true, true, Family::V6, vec![MasqSource::Any])]
    #[case::snat_off_v4(false, false, Family::V4, vec![])]
    #[case::snat_off_beats_masq_all(false, true, Family::V6, vec![])]
    fn masquerade_sources(
        #[case] snat: bool,
        #[case] masq_all: bool,
        #[case] family: Family,
        #[case] expected: Vec<MasqSource>,
    ) {
        let req = Request {
            snat,
            masq_all,
            ..golden_request()
        };
        let plan = Plan::new(&req);
        assert_eq!(plan.family(family).expect("family").masquerade, expected);
        assert_eq!(plan.snat, snat);
    }

    #[rstest]
    #[case::v4_unspecified_means_any("0.0.0.0", Family::V4, Some(None))]
    #[case::v4_unspecified_skipped_for_v6("0.0.0.0", Family::V6, None)]
    #[case::v6_unspecified_means_any("::", Family::V6, Some(None))]
    #[case::v6_unspecified_skipped_for_v4("::", Family::V4, None)]
    #[case::v4_specific("192.0.2.7", Family::V4, Some(Some("192.0.2.7")))]
    #[case::v6_specific("2001:db8::7", Family::V6, Some(Some("2001:db8::7")))]
    fn host_ip_handling(
        #[case] host_ip: &str,
        #[case] family: Family,
        #[case] expected: Option<Option<&str>>,
    ) {
        let req = Request {
            mappings: vec![mapping(Protocol::Tcp, 80, 8080, Some(host_ip))],
            ..golden_request()
        };
        let plan = Plan::new(&req);
        let dnats = &plan.family(family).expect("family").dnats;
        let got = dnats.first().map(|d| d.host_ip);
        let want = expected.map(|o| o.map(|s| s.parse::<IpAddr>().expect("ip")));
        assert_eq!(got, want);
    }

    #[test]
    fn conditions_go_to_their_family() {
        let req = Request {
            conditions_v4: vec!["-s".into(), "192.0.2.0/24".into()],
            conditions_v6: vec!["-s".into(), "2001:db8::/32".into()],
            layout: Default::default(),
            iptables_layout: Default::default(),
            ..golden_request()
        };
        let plan = Plan::new(&req);
        assert_eq!(
            plan.family(Family::V4).expect("v4").conditions,
            req.conditions_v4
        );
        assert_eq!(
            plan.family(Family::V6).expect("v6").conditions,
            req.conditions_v6
        );
    }

    #[rstest]
    #[case::v4_only(Some("10.0.0.2/24"), None, vec![Family::V4])]
    #[case::v6_only(None, Some("fd00::2/64"), vec![Family::V6])]
    #[case::dual(Some("10.0.0.2/24"), Some("fd00::2/64"), vec![Family::V4, Family::V6])]
    #[case::none(None, None, vec![])]
    fn one_family_plan_per_container_address(
        #[case] v4: Option<&str>,
        #[case] v6: Option<&str>,
        #[case] expected: Vec<Family>,
    ) {
        let req = Request {
            v4: v4.map(addr),
            v6: v6.map(addr),
            ..golden_request()
        };
        let plan = Plan::new(&req);
        let got: Vec<Family> = plan.families.iter().map(|f| f.family).collect();
        assert_eq!(got, expected);
        assert_eq!(plan.is_empty(), expected.is_empty());
    }

    #[test]
    fn no_mappings_is_empty_plan() {
        let req = Request {
            mappings: vec![],
            ..golden_request()
        };
        let plan = Plan::new(&req);
        assert!(plan.is_empty());
        assert!(plan.entry_ports.is_empty());
    }

    fn run(proto: Protocol, first: u16, last: u16, cont: u16, host_ip: Option<&str>) -> Run {
        Run {
            protocol: proto,
            host_ip: host_ip.map(|s| s.parse().expect("ip")),
            first,
            last,
            container_port: cont,
        }
    }

    #[rstest]
    #[case::one(vec![dnat(Protocol::Tcp, 80, 80, None)], vec![run(Protocol::Tcp, 80, 80, 80, None)])]
    #[case::two_merge(
        vec![dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Tcp, 81, 81, None)],
        vec![run(Protocol::Tcp, 80, 81, 80, None)]
    )]
    #[case::not_consecutive(
        vec![dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Tcp, 82, 82, None)],
        vec![run(Protocol::Tcp, 80, 80, 80, None), run(Protocol::Tcp, 82, 82, 82, None)]
    )]
    #[case::descending_stays_apart(
        vec![dnat(Protocol::Tcp, 81, 81, None), dnat(Protocol::Tcp, 80, 80, None)],
        vec![run(Protocol::Tcp, 81, 81, 81, None), run(Protocol::Tcp, 80, 80, 80, None)]
    )]
    #[case::offsets_stay_per_port(
        vec![dnat(Protocol::Tcp, 8080, 80, None), dnat(Protocol::Tcp, 8081, 81, None)],
        vec![run(Protocol::Tcp, 8080, 8080, 80, None), run(Protocol::Tcp, 8081, 8081, 81, None)]
    )]
    #[case::an_offset_ends_a_run(
        vec![dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Tcp, 81, 81, None), dnat(Protocol::Tcp, 82, 92, None)],
        vec![run(Protocol::Tcp, 80, 81, 80, None), run(Protocol::Tcp, 82, 82, 92, None)]
    )]
    #[case::mixed_protocols(
        vec![dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Udp, 81, 81, None), dnat(Protocol::Udp, 82, 82, None)],
        vec![run(Protocol::Tcp, 80, 80, 80, None), run(Protocol::Udp, 81, 82, 81, None)]
    )]
    #[case::host_ips_differ(
        vec![dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Tcp, 81, 81, Some("192.0.2.1")), dnat(Protocol::Tcp, 82, 82, Some("192.0.2.1"))],
        vec![run(Protocol::Tcp, 80, 80, 80, None), run(Protocol::Tcp, 81, 82, 81, Some("192.0.2.1"))]
    )]
    #[case::duplicates_stay_apart(
        vec![dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Tcp, 80, 80, None), dnat(Protocol::Tcp, 81, 81, None)],
        vec![run(Protocol::Tcp, 80, 80, 80, None), run(Protocol::Tcp, 80, 81, 80, None)]
    )]
    #[case::top_port(
        vec![dnat(Protocol::Tcp, 65534, 65534, None), dnat(Protocol::Tcp, 65535, 65535, None), dnat(Protocol::Tcp, 1, 1, None)],
        vec![run(Protocol::Tcp, 65534, 65535, 65534, None), run(Protocol::Tcp, 1, 1, 1, None)]
    )]
    fn adjacent_consecutive_identity_mappings_make_runs(
        #[case] dnats: Vec<Dnat>,
        #[case] expected: Vec<Run>,
    ) {
        assert_eq!(runs(&dnats), expected);
    }

    #[test]
    fn five_thousand_consecutive_ports_are_one_run_per_family() {
        let req = Request {
            mappings: (20000..25000)
                .map(|p| mapping(Protocol::Tcp, p, p, None))
                .collect(),
            ..golden_request()
        };
        let plan = Plan::new(&req);
        for fam in &plan.families {
            assert_eq!(
                fam.runs(),
                vec![run(Protocol::Tcp, 20000, 24999, 20000, None)]
            );
        }
        let golden = Plan::new(&golden_request());
        let v4 = golden.family(Family::V4).expect("v4");
        assert!(
            v4.runs().iter().all(|r| !r.is_range()),
            "goldens: one rule per mapping"
        );
        assert_eq!(v4.runs().len(), v4.dnats.len());
    }

    #[test]
    fn the_maps_layout_takes_single_ports_on_any_host_ip_only() {
        let req = Request {
            layout: Layout::Maps,
            ..ranged_request()
        };
        let plan = Plan::new(&req);
        let v4 = plan.family(Family::V4).expect("v4");
        let elements = v4.element_runs();
        assert_eq!(
            elements,
            vec![
                run(Protocol::Tcp, 8080, 8080, 80, None),
                run(Protocol::Tcp, 8081, 8081, 81, None)
            ]
        );
        assert_eq!(v4.rule_runs().len() + elements.len(), v4.runs().len());
        assert!(v4.rule_runs().iter().all(|r| r.is_range()));
        let conditioned = Request {
            conditions_v4: vec!["iifname != \"lo\"".into()],
            ..req.clone()
        };
        let plan = Plan::new(&conditioned);
        assert!(plan
            .family(Family::V4)
            .expect("v4")
            .element_runs()
            .is_empty());
        let rules = Plan::new(&ranged_request());
        assert!(rules.families.iter().all(|f| f.element_runs().is_empty()));
        let dup = Request {
            mappings: vec![
                mapping(Protocol::Tcp, 80, 8080, None),
                mapping(Protocol::Tcp, 80, 9090, None),
            ],
            ..req
        };
        let v4 = Plan::new(&dup).family(Family::V4).cloned().expect("v4");
        assert_eq!(
            v4.element_runs(),
            vec![run(Protocol::Tcp, 80, 80, 8080, None)]
        );
        assert!(
            v4.rule_runs().is_empty(),
            "the shadowed duplicate is dropped"
        );
    }

    #[rstest]
    #[case("10.88.0.5/16", "10.88.0.0")]
    #[case("10.88.0.5/32", "10.88.0.5")]
    #[case("10.88.0.5/0", "0.0.0.0")]
    #[case("fd00:88::5/64", "fd00:88::")]
    #[case("fd00:88::5/0", "::")]
    fn container_network(#[case] cidr: &str, #[case] net: &str) {
        assert_eq!(addr(cidr).network(), net.parse::<IpAddr>().expect("ip"));
    }
}
