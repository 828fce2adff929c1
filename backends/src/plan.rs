//! Request → per-family rule plan. Pure: no I/O, so both backends render
//! the same plan and the plan itself is unit-tested once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::{ContainerAddr, ContainerKey, Family, MasqMark, Protocol, Request};

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
