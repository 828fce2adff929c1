//! TCP/UDP echo servers inside container namespaces, and clients that ask
//! them who they are and who they think is calling. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what} {addr}: {source}")]
    Io {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

const POLL: Duration = Duration::from_millis(10);

/// An echo server answering `<tag> <peer-ip>\n` on TCP and UDP of one port
/// (dual-stack), stopped on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, tag: &str, port: u16) -> Result<EchoServer, TrafficError> {
        EchoServer::start_at(ns, tag, SocketAddr::from(([0u16; 8], port)))
    }

    /// A server on one address only: of two interfaces of a container, it
    /// answers for the one holding `addr` (which network a DNAT reached).
    pub fn start_at(ns: &Netns, tag: &str, addr: SocketAddr) -> Result<EchoServer, TrafficError> {
        let io = |what| move |source| TrafficError::Io { what, addr, source };
        let (tcp, udp) = ns.run(|| (TcpListener::bind(addr), UdpSocket::bind(addr)))?;
        let tcp = tcp.map_err(io("bind tcp"))?;
        let udp = udp.map_err(io("bind udp"))?;
        tcp.set_nonblocking(true).map_err(io("configure tcp"))?;
        udp.set_read_timeout(Some(POLL * 5))
            .map_err(io("configure udp"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tag_tcp = tag.to_string();
        let stop_tcp = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !stop_tcp.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(reply(&tag_tcp, peer).as_bytes());
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        });
        let tag_udp = tag.to_string();
        let stop_udp = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop_udp.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(reply(&tag_udp, peer).as_bytes(), peer);
                }
            }
        });
        Ok(EchoServer {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn reply(tag: &str, peer: SocketAddr) -> String {
    format!("{tag} {}\n", peer.ip().to_canonical())
}

/// What an echo server answered: its tag and the source address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub tag: String,
    pub peer: IpAddr,
}

fn parse_answer(text: &str) -> Option<Answer> {
    let (tag, peer) = text.trim().split_once(' ')?;
    Some(Answer {
        tag: tag.to_string(),
        peer: peer.parse().ok()?,
    })
}

/// Connects over TCP from inside `ns` and reads the answer; `None` when
/// nothing answers within `timeout`.
pub fn tcp_ask(
    ns: &Netns,
    to: SocketAddr,
    timeout: Duration,
) -> Result<Option<Answer>, TrafficError> {
    Ok(ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        parse_answer(&text)
    })?)
}

/// Sends one UDP datagram from inside `ns` (optionally from a fixed source
/// port, to keep one conntrack flow) and waits for the answer.
pub fn udp_ask(
    ns: &Netns,
    to: SocketAddr,
    from_port: u16,
    timeout: Duration,
) -> Result<Option<Answer>, TrafficError> {
    Ok(ns.run(|| {
        let local: SocketAddr = match to {
            SocketAddr::V4(_) => SocketAddr::from(([0u8; 4], from_port)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], from_port)),
        };
        let s = UdpSocket::bind(local).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.send_to(b"ping", to).ok()?;
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        parse_answer(&String::from_utf8_lossy(&buf[..n]))
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_over_loopback_in_a_namespace() {
        if !crate::netns::prerequisites(&[]) {
            return;
        }
        let ns = Netns::new("echo").expect("netns");
        let _server = EchoServer::start(&ns, "srv", 7000).expect("server");
        let t = Duration::from_secs(2);
        let v4: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let v6: SocketAddr = "[::1]:7000".parse().expect("addr");
        let want4 = Some(Answer {
            tag: "srv".into(),
            peer: "127.0.0.1".parse().expect("ip"),
        });
        assert_eq!(tcp_ask(&ns, v4, t).expect("tcp"), want4);
        assert_eq!(udp_ask(&ns, v4, 0, t).expect("udp"), want4);
        assert_eq!(
            tcp_ask(&ns, v6, t).expect("tcp6").map(|a| a.peer),
            Some("::1".parse().expect("ip"))
        );
        // Nothing listens on another port: a refusal, not a hang.
        let other: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        assert_eq!(tcp_ask(&ns, other, t).expect("tcp"), None);
    }
}
