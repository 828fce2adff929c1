//! The localnet guard (issue #21). ADD with `snat` turns `route_localnet`
//! on for the host interface towards the containers, so that
//! 127.0.0.1:hostPort can be DNATed; that also makes the host accept
//! packets to 127.0.0.0/8 arriving from the containers' side, and a
//! container could reach services bound to the host's loopback
//! (CVE-2020-8558). Two attacks from a container, as its capabilities
//! allow: with NET_ADMIN it routes 127.0.0.1 out of its eth0 and connects
//! normally; with NET_RAW it forges the SYN on its link. Neither may
//! reach the host's 127.0.0.1, while containers are there and after the
//! last DEL (which leaves `route_localnet` on).

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::ctx::{always, ensure, maps, Ctx, Scenario};
use crate::forge::{self, Mac, Syn};
use crate::topology::{Container, BRIDGE, HOST_V4, IFNAME};
use crate::traffic::{udp_ask, EchoServer};

pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "localnet-guard",
        description: "a container cannot reach the host's 127.0.0.1 (re-routed or forged packets), before and after DEL",
        not_applicable: always,
        body: localnet_guard,
    }]
}

/// The host's own service, bound to 127.0.0.1 only.
const SERVICE: u16 = 9999;
/// Container A's ordinary mapping (it makes ADD turn route_localnet on).
const A_PORT: u16 = 8080;
/// Container B's mapping on hostIP 127.0.0.1.
const B_PORT: u16 = 8181;
/// How long an attack waits for an answer. Answers come within
/// milliseconds inside one host; this only bounds the silence.
const ATTACK_WAIT: Duration = Duration::from_millis(1500);
const OK_WAIT: Duration = Duration::from_secs(3);

fn localnet_guard(ctx: &Ctx) -> Result<(), String> {
    let lo = Ipv4Addr::LOCALHOST;
    let _service = EchoServer::start_on(ctx.host(), "host", SocketAddr::from((lo, SERVICE)))
        .map_err(|e| format!("host service on 127.0.0.1:{SERVICE}: {e}"))?;
    let a = ctx.container("a", 5)?;
    let b = ctx.container("b", 6)?;
    let _srv_b = EchoServer::start(&b.ns, "b", 80).map_err(|e| e.to_string())?;
    let cfg_a = ctx.config(a.prev_result(true, false), maps("tcp", [A_PORT]), json!({}));
    let on_lo = |proto: &str| -> Value {
        json!({"hostPort": B_PORT, "containerPort": 80, "protocol": proto, "hostIP": "127.0.0.1"})
    };
    let cfg_b = ctx.config(
        b.prev_result(true, false),
        json!([on_lo("tcp"), on_lo("udp")]),
        json!({}),
    );
    ctx.ok("ADD", "ctr-a", Some(&a), &cfg_a)?;
    ctx.ok("ADD", "ctr-b", Some(&b), &cfg_b)?;
    // The guard must not cost the host its own loopback, nor the
    // 127.0.0.1 hostIP mapping.
    host_reaches(ctx, SERVICE, "host")?;
    host_reaches(ctx, B_PORT, "b")?;
    let attacker = Attacker::arm(ctx, &a)?;
    let after_add = route_localnet(ctx);
    let mut reached = attacker.attack(
        &[
            (SERVICE, LOOPBACK_SERVICE),
            (B_PORT, "container b's hostPort on hostIP 127.0.0.1"),
        ],
        "with both containers added",
    )?;
    ctx.ok("DEL", "ctr-b", Some(&b), &cfg_b)?;
    ctx.ok("DEL", "ctr-a", Some(&a), &cfg_a)?;
    host_reaches(ctx, SERVICE, "host")?;
    let after_del = route_localnet(ctx);
    reached.extend(attacker.attack(
        &[
            (SERVICE, LOOPBACK_SERVICE),
            (B_PORT, "where container b's hostPort was"),
        ],
        "after the last DEL",
    )?);
    match reached.as_slice() {
        [] => Ok(()),
        [first, ..] => Err(format!(
            "{first} ({} of {} attacks reached the host's 127.0.0.1; route_localnet on \
             {BRIDGE}: {after_add} after ADD, {after_del} after the last DEL)\n  {}",
            reached.len(),
            attacker.made.load(Ordering::Relaxed),
            reached.join("\n  ")
        )),
    }
}

const LOOPBACK_SERVICE: &str = "a service bound to the host's loopback";

/// The host reaches 127.0.0.1:`port` over TCP and UDP, answered by `tag`.
fn host_reaches(ctx: &Ctx, port: u16, tag: &str) -> Result<(), String> {
    let lo = Ipv4Addr::LOCALHOST;
    ctx.expect_answer(ctx.host(), lo.into(), port, tag)?;
    let got =
        udp_ask(ctx.host(), SocketAddr::from((lo, port)), 0, OK_WAIT).map_err(|e| e.to_string())?;
    ensure(got.as_ref().is_some_and(|a| a.tag == tag), || {
        format!("udp 127.0.0.1:{port} from the host answered {got:?}, expected {tag}")
    })
}

/// `net.ipv4.conf.<bridge>.route_localnet` of the host namespace, for
/// the failure report.
fn route_localnet(ctx: &Ctx) -> String {
    let path = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet");
    match ctx.host().run(|| std::fs::read_to_string(&path)) {
        Ok(Ok(v)) => v.trim().to_string(),
        Ok(Err(e)) => format!("unreadable ({e})"),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// Container A, set up for both attacks: 127.0.0.1 routed via the
/// gateway out of its eth0 (loopback's address removed, route_localnet
/// on in the container so the answers are accepted), and the link
/// addresses for frames it forges.
struct Attacker<'a> {
    c: &'a Container,
    mac: Mac,
    gateway_mac: Mac,
    /// The forged SYNs' source ports, one per probe, above the kernel's
    /// ephemeral range (32768-60999) so no socket of A's own shares one.
    next_port: AtomicU16,
    /// Attacks made so far.
    made: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
enum Attack {
    /// (a) over TCP, through the container's own stack.
    Tcp,
    /// (a) over UDP.
    Udp,
    /// (b), from this source port.
    Syn(u16),
}

impl<'a> Attacker<'a> {
    fn arm(ctx: &Ctx, c: &'a Container) -> Result<Attacker<'a>, String> {
        let setup = |e: &dyn std::fmt::Display| format!("attack setup in container a: {e}");
        let gw = HOST_V4.to_string();
        c.ns.ip(&["addr", "del", "127.0.0.1/8", "dev", "lo"])
            .map_err(|e| setup(&e))?;
        c.ns.ip(&["route", "add", "127.0.0.1/32", "via", &gw, "dev", IFNAME])
            .map_err(|e| setup(&e))?;
        c.ns.sysctl(&format!("net.ipv4.conf.{IFNAME}.route_localnet"), "1")
            .map_err(|e| setup(&e))?;
        let route =
            c.ns.exec("ip", &["route", "get", "127.0.0.1"])
                .map_err(|e| setup(&e))?;
        ensure(route.contains(&format!("via {gw} dev {IFNAME}")), || {
            setup(&format!(
                "127.0.0.1 is not routed via {gw}: {}",
                route.trim()
            ))
        })?;
        Ok(Attacker {
            c,
            mac: forge::mac_of(&c.ns, IFNAME).map_err(|e| setup(&e))?,
            gateway_mac: forge::mac_of(ctx.host(), BRIDGE).map_err(|e| setup(&e))?,
            next_port: AtomicU16::new(61000),
            made: AtomicUsize::new(0),
        })
    }

    /// Every attack on every target (port, what is there), all at once
    /// (each waits for silence); what reached, one line each, in order.
    fn attack(&self, targets: &[(u16, &str)], when: &str) -> Result<Vec<String>, String> {
        let routed = format!("by routing 127.0.0.1 via {IFNAME}");
        let forged = format!("with a forged SYN on {IFNAME}");
        let mut jobs: Vec<(u16, &str, &str, Attack)> = Vec::new();
        for &(port, what) in targets {
            jobs.push((port, what, &routed, Attack::Tcp));
            jobs.push((port, what, &routed, Attack::Udp));
            let sport = self.next_port.fetch_add(1, Ordering::Relaxed);
            jobs.push((port, what, &forged, Attack::Syn(sport)));
        }
        self.made.fetch_add(jobs.len(), Ordering::Relaxed);
        let outcomes: Vec<Result<Option<String>, String>> = std::thread::scope(|s| {
            let running: Vec<_> = jobs
                .iter()
                .map(|&(port, _, _, attack)| s.spawn(move || self.make(attack, port)))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut reached = Vec::new();
        for ((port, what, how, _), outcome) in jobs.iter().zip(outcomes) {
            if let Some(got) = outcome? {
                reached.push(format!(
                    "{when}: container reached host 127.0.0.1:{port} ({what}) {how}: {got}"
                ));
            }
        }
        Ok(reached)
    }

    fn make(&self, attack: Attack, port: u16) -> Result<Option<String>, String> {
        match attack {
            Attack::Tcp => self.tcp_routed(port),
            Attack::Udp => self.udp_routed(port),
            Attack::Syn(sport) => self.forged_syn(port, sport),
        }
    }

    /// Attack (a) over TCP: a connection, or a refusal (the host's stack
    /// answered RST), reached the host.
    fn tcp_routed(&self, port: u16) -> Result<Option<String>, String> {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let outcome = self.c.ns.run(|| {
            let mut s = TcpStream::connect_timeout(&to, ATTACK_WAIT)?;
            s.set_read_timeout(Some(ATTACK_WAIT))?;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            Ok::<_, std::io::Error>(text)
        });
        match outcome.map_err(|e| e.to_string())? {
            Ok(text) => Ok(Some(format!("tcp connected, answered {:?}", text.trim()))),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Some(
                "tcp refused (the host's stack answered with RST)".to_string(),
            )),
            Err(e) if blocked(&e) => Ok(None),
            Err(e) => Err(format!(
                "attack could not be made: tcp connect from container a to {to}: {e}"
            )),
        }
    }

    /// Attack (a) over UDP: an answer, or a refusal (ICMP port
    /// unreachable from the host), reached the host.
    fn udp_routed(&self, port: u16) -> Result<Option<String>, String> {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let outcome = self.c.ns.run(|| {
            let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
            s.connect(to)?;
            s.set_read_timeout(Some(ATTACK_WAIT))?;
            s.send(b"ping")?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        match outcome.map_err(|e| e.to_string())? {
            Ok(text) => Ok(Some(format!("udp answered {:?}", text.trim()))),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Some(
                "udp refused (the host answered ICMP port unreachable)".to_string(),
            )),
            Err(e) if blocked(&e) => Ok(None),
            Err(e) => Err(format!(
                "attack could not be made: udp from container a to {to}: {e}"
            )),
        }
    }

    /// Attack (b): a SYN from A's own address to 127.0.0.1:`port`, framed
    /// for the gateway; any SYN-ACK or RST for it reached the host.
    fn forged_syn(&self, port: u16, sport: u16) -> Result<Option<String>, String> {
        let syn = Syn {
            src_mac: self.mac,
            dst_mac: self.gateway_mac,
            src: SocketAddrV4::new(self.c.v4, sport),
            dst: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            seq: 0x5eed_0000 | u32::from(sport),
        };
        let reply = self
            .c
            .ns
            .run(|| syn.probe(IFNAME, ATTACK_WAIT))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("attack could not be made: forged SYN from container a: {e}"))?;
        Ok(reply.map(|r| r.describe()))
    }
}

/// Errors that mean the packet went nowhere: silence, or an ICMP error
/// other than port unreachable (a guard that rejects instead of drops).
fn blocked(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::TimedOut
            | ErrorKind::WouldBlock
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
    )
}
