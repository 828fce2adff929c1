//! The nftables maps layout with real traffic: the reused-IP A/B case and
//! `migrate --layout` both ways, in namespaces each test creates.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use portmap_backends::nftables::{Nftables, MAP, MASQ_SET};
use portmap_backends::plan::Plan;
use portmap_backends::relayout::relayout;
use portmap_backends::{
    host, Attachment, Backend, ContainerAddr, ContainerKey, Known, Layout, LayoutChoice, MasqMark,
    PortMapping, Protocol, Request, Verdict,
};
use portmap_conformance::netns::{prerequisites, Netns};
use portmap_conformance::topology::{Container, Topology, HOST_V4, HOST_V6};
use portmap_conformance::traffic::{tcp_ask, EchoServer};

const NET: &str = "testnet";
const ECHO_PORT: u16 = 80;

struct Fixture {
    nft: Nftables,
    topo: Topology,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if !prerequisites(&["nft"]) {
            return None;
        }
        Some(Fixture {
            nft: Nftables::from_path().expect("nft in PATH"),
            topo: Topology::new().expect("topology"),
        })
    }

    fn host(&self) -> &Netns {
        &self.topo.host
    }

    fn add(&self, req: &Request) {
        let plan = Plan::new(req);
        self.host()
            .run(|| {
                self.nft.install(&plan, None)?;
                host::after_add(&plan).unwrap_or_else(|e| panic!("host side effects: {e}"));
                Ok::<_, portmap_backends::BackendError>(())
            })
            .expect("netns")
            .unwrap_or_else(|e| panic!("ADD: {e}: {}\n{}", e.details(), self.ruleset()));
    }

    fn check(&self, req: &Request) -> Verdict {
        let plan = Plan::new(req);
        self.host()
            .run(|| self.nft.check(&plan))
            .expect("netns")
            .expect("check")
    }

    fn del(&self, id: &str) {
        let key = ContainerKey {
            network: NET.into(),
            container_id: id.into(),
        };
        self.host()
            .run(|| self.nft.del(&key, &Known::default(), None))
            .expect("netns")
            .unwrap_or_else(|e| panic!("DEL {id}: {e}: {}", e.details()));
    }

    fn ruleset(&self) -> String {
        self.host()
            .exec("nft", &["list", "ruleset"])
            .unwrap_or_else(|e| format!("<{e}>"))
    }

    /// The host's own TCP connection to `ip:port` answered by container `tag`.
    fn expect_tag(&self, ip: IpAddr, port: u16, tag: &str) {
        self.expect_tag_from(self.host(), ip, port, tag);
    }

    /// [`Fixture::expect_tag`] from `client` (a container: hairpin).
    fn expect_tag_from(&self, client: &Netns, ip: IpAddr, port: u16, tag: &str) {
        let got =
            tcp_ask(client, SocketAddr::new(ip, port), Duration::from_secs(3)).expect("client");
        assert!(
            got.as_ref().is_some_and(|a| a.tag == tag),
            "tcp {ip}:{port} answered {got:?}, expected {tag}\n{}",
            self.ruleset()
        );
    }
}

fn request(c: &Container, id: &str, ports: &[u16], layout: Layout) -> Request {
    Request {
        key: ContainerKey {
            network: NET.into(),
            container_id: id.into(),
        },
        v4: Some(ContainerAddr {
            addr: c.addr(false),
            prefix_len: 24,
        }),
        v6: Some(ContainerAddr {
            addr: c.addr(true),
            prefix_len: 64,
        }),
        mappings: ports
            .iter()
            .map(|&host_port| PortMapping {
                host_port,
                container_port: ECHO_PORT,
                protocol: Protocol::Tcp,
                host_ip: None,
            })
            .collect(),
        snat: true,
        masq_all: false,
        mark: MasqMark::Bit(13),
        conditions_v4: vec![],
        conditions_v6: vec![],
        layout,
        iptables_layout: Default::default(),
    }
}

fn h4() -> IpAddr {
    IpAddr::V4(HOST_V4)
}
fn h6() -> IpAddr {
    IpAddr::V6(HOST_V6)
}

/// A gets IP X and hostPort P and dies without a DEL; B gets X and P too:
/// B's elements (port and masquerade) replace A's, and A's late DEL leaves
/// B answering, the host and itself (hairpin, through the masquerade set).
#[test]
fn reused_ip_newest_add_wins_and_a_late_del_keeps_it() {
    let Some(f) = Fixture::new() else { return };
    let a = f.topo.container("a", 5).expect("container a");
    let req_a = request(&a, "ctr-a", &[8080], Layout::Maps);
    f.add(&req_a);
    drop(a);
    let b = f.topo.container("b", 5).expect("container b");
    let _srv = EchoServer::start(&b.ns, "b", ECHO_PORT).expect("echo");
    let req_b = request(&b, "ctr-b", &[8080, 8082], Layout::Maps);
    f.add(&req_b);
    f.expect_tag(h4(), 8080, "b");
    f.expect_tag(h6(), 8080, "b");

    f.del("ctr-a");

    for port in [8080, 8082] {
        f.expect_tag(h4(), port, "b");
        f.expect_tag(h6(), port, "b");
        f.expect_tag_from(&b.ns, h4(), port, "b");
        f.expect_tag_from(&b.ns, h6(), port, "b");
    }
    assert_eq!(f.check(&req_b), Verdict::Whole);
    let after = f.ruleset();
    assert!(!after.contains("\"ctr-a\""), "A survived:\n{after}");
    assert!(after.contains(MAP) && after.contains(MASQ_SET), "{after}");
    f.del("ctr-b");
    let left = f.ruleset();
    assert!(
        !left.contains("table ip cni_hostport {"),
        "the last DEL takes the table:\n{left}"
    );
}

fn relaid(f: &Fixture, journaled: &[Attachment], layout: Layout) -> Vec<String> {
    let report = f
        .host()
        .run(|| {
            relayout(
                &f.nft,
                journaled,
                None,
                LayoutChoice::Nftables(layout),
                false,
            )
        })
        .expect("netns");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    report.moved.into_iter().map(|m| m.container_id).collect()
}

/// Rules → maps → rules with traffic at each step: eligible mappings move
/// into the map and back (the map goes with its last element); a range
/// stays a rule throughout; a second pass finds nothing to do.
#[test]
fn migrate_layout_both_ways_keeps_traffic() {
    let Some(f) = Fixture::new() else { return };
    let a = f.topo.container("a", 5).expect("container a");
    let b = f.topo.container("b", 6).expect("container b");
    let _sa = EchoServer::start(&a.ns, "a", ECHO_PORT).expect("echo a");
    let _sb = EchoServer::start(&b.ns, "b", ECHO_PORT).expect("echo b");
    let req_a = request(&a, "ctr-a", &[8080], Layout::Rules);
    let mut req_b = request(&b, "ctr-b", &[9090, 80, 81], Layout::Rules);
    // 80-81 to the same ports: a run, kept as one range rule.
    req_b.mappings[2].container_port = 81;
    req_b.mappings[1].container_port = 80;
    f.add(&req_a);
    f.add(&req_b);
    let _srv81 = EchoServer::start(&b.ns, "b", 81).expect("echo b 81");
    let traffic = || {
        f.expect_tag(h4(), 8080, "a");
        f.expect_tag(h6(), 9090, "b");
        f.expect_tag(h4(), 81, "b");
    };
    traffic();
    let journaled: Vec<Attachment> = [(&req_a, &a), (&req_b, &b)]
        .iter()
        .map(|(r, c)| Attachment {
            key: r.key.clone(),
            addrs: vec![c.addr(false), c.addr(true)],
        })
        .collect();

    let moved = relaid(&f, &journaled, Layout::Maps);
    assert_eq!(moved, ["ctr-a", "ctr-b"]);
    traffic();
    let maps = |r: &Request| Request {
        layout: Layout::Maps,
        ..r.clone()
    };
    assert_eq!(f.check(&maps(&req_a)), Verdict::Whole);
    assert_eq!(f.check(&maps(&req_b)), Verdict::Whole);
    let listed = f.host().run(|| f.nft.list()).expect("netns").expect("list");
    assert!(listed.iter().all(|c| c.options.map_elements), "{listed:?}");
    let ruleset = f.ruleset();
    assert!(
        ruleset.contains("tcp . 8080 comment \"ctr-a\""),
        "{ruleset}"
    );
    assert!(
        ruleset.contains("tcp dport 80-81"),
        "the range stays a rule:\n{ruleset}"
    );
    assert!(
        relaid(&f, &journaled, Layout::Maps).is_empty(),
        "nothing left to move"
    );

    let moved = relaid(&f, &journaled, Layout::Rules);
    assert_eq!(moved, ["ctr-a", "ctr-b"]);
    traffic();
    assert_eq!(f.check(&req_a), Verdict::Whole);
    assert_eq!(f.check(&req_b), Verdict::Whole);
    let ruleset = f.ruleset();
    assert!(
        !ruleset.contains(MAP),
        "the map goes with its last element:\n{ruleset}"
    );
    f.del("ctr-a");
    f.del("ctr-b");
}
