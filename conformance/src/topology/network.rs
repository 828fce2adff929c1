//! The address plan: the host's container networks (a bridge each), the
//! host's and containers' addresses on them, the host-only and remote
//! addresses, and the name a container's first interface gets. Plain
//! values: nothing here touches a namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const BRIDGE: &str = "br0";
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1);
/// Host-only addresses (on lo): `[0]` is used as hostIP, `[1]`
/// proves that other local addresses do not answer.
pub const EXTRA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2)];
pub const EXTRA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2),
];
pub const IFNAME: &str = "eth0";
/// The second network's bridge and host addresses.
pub const BRIDGE_B: &str = "br1";
pub const HOST_B_V4: Ipv4Addr = Ipv4Addr::new(10, 87, 0, 1);
pub const HOST_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x87, 0, 0, 0, 0, 0, 1);

/// One of the host's container networks: a bridge holding `.1` of a /24
/// and a /64. `Primary` is every scenario's; `Secondary` is made on first
/// use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// br0: 10.88.0.0/24, fd00:88::/64.
    Primary,
    /// br1: 10.87.0.0/24, fd00:87::/64.
    Secondary,
}

impl Network {
    pub fn bridge(self) -> &'static str {
        match self {
            Network::Primary => BRIDGE,
            Network::Secondary => BRIDGE_B,
        }
    }

    pub fn host_v4(self) -> Ipv4Addr {
        match self {
            Network::Primary => HOST_V4,
            Network::Secondary => HOST_B_V4,
        }
    }

    pub fn host_v6(self) -> Ipv6Addr {
        match self {
            Network::Primary => HOST_V6,
            Network::Secondary => HOST_B_V6,
        }
    }

    /// The host's address on this network, of one family.
    pub fn host(self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.host_v6())
        } else {
            IpAddr::V4(self.host_v4())
        }
    }

    /// A container's addresses `.last` on this network.
    pub fn addresses(self, last: u8) -> (Ipv4Addr, Ipv6Addr) {
        let [a, b, c, _] = self.host_v4().octets();
        let mut v6 = self.host_v6().segments();
        v6[7] = u16::from(last);
        (Ipv4Addr::new(a, b, c, last), Ipv6Addr::from(v6))
    }
}

/// A network beyond the host (10.77.0.0/24, routed through it), for
/// traffic that the host merely forwards.
pub const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
