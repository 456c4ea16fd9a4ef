//! Finding a local pod's host-side interface through rtnetlink.
//!
//! Any veth-based CNI leaves one of two traces on the node:
//! - a route to the pod address whose output interface is the host side of the pod's veth
//!   (Calico, Cilium, kindnet, … install `/32` routes, `10.1.2.3 dev cali1234 scope link`);
//! - or a subnet route to a bridge (flannel, the bridge plugin: `10.244.1.0/24 dev cni0`), where
//!   the pod's MAC (neighbour table of the bridge) leads to the bridge port it was learned on
//!   (bridge FDB), which is the host side of the pod's veth.
//!
//! The kernel calls go through [`RouteTable`], so the resolution logic is unit-tested without
//! root; [`Netlink`] is the real implementation (one synchronous `NETLINK_ROUTE` socket per
//! request).

use std::{collections::BTreeMap, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Errors talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket operation failed.
    #[error("netlink {op} failed")]
    Socket {
        /// Operation (`open`, `send`, `recv`).
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered with an error other than "not found".
    #[error("netlink {request} failed: errno {errno}")]
    Kernel {
        /// Request (`RTM_GETROUTE`, …).
        request: &'static str,
        /// The kernel's errno.
        errno: i32,
    },
    /// A reply could not be decoded.
    #[error("netlink {request}: undecodable reply: {message}")]
    Decode {
        /// Request.
        request: &'static str,
        /// Why.
        message: String,
    },
}

/// What the resolution needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `netkit`, …; empty for physical devices).
    pub kind: String,
}

/// The kernel queries interface discovery makes. Tests replace it with a table.
pub trait RouteTable {
    /// Output interface and gateway of the route the kernel picks for `ip` (`ip route get`).
    fn route(&self, ip: IpAddr) -> Result<Option<Route>, NetlinkError>;
    /// The link with index `ifindex`, if it exists.
    fn link(&self, ifindex: u32) -> Result<Option<Link>, NetlinkError>;
    /// The MAC address of `ip` in the neighbour table of interface `ifindex`.
    fn neighbour_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError>;
    /// The port of bridge `bridge` on which `mac` was learned (bridge FDB).
    fn fdb_port(&self, bridge: u32, mac: [u8; 6]) -> Result<Option<u32>, NetlinkError>;
    /// The index of interface `name` (0 when it does not exist): the cheap check that a
    /// discovered interface is still there.
    fn index_of(&self, name: &str) -> u32;
}

/// A route lookup result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Output interface.
    pub oif: u32,
    /// Whether the route goes through a gateway (then it does not lead to a local pod).
    pub via_gateway: bool,
}

/// Outcome of resolving one pod address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The host-side interface.
    Found {
        /// Interface index.
        ifindex: u32,
        /// Interface name.
        name: String,
    },
    /// Not (yet) resolvable; retried later.
    NotFound {
        /// Why, for the log.
        reason: String,
    },
}

/// Link kinds that are the host side of a pod's point-to-point link.
const POD_LINK_KINDS: &[&str] = &["veth", "netkit"];

fn not_found(reason: impl Into<String>) -> Resolution {
    Resolution::NotFound {
        reason: reason.into(),
    }
}

/// Finds the host-side interface of the local pod with address `ip`.
pub fn resolve(table: &dyn RouteTable, ip: IpAddr) -> Result<Resolution, NetlinkError> {
    let Some(route) = table.route(ip)? else {
        return Ok(not_found("no route to the pod address"));
    };
    if route.via_gateway {
        return Ok(not_found(
            "the route to the pod address goes through a gateway",
        ));
    }
    let Some(link) = table.link(route.oif)? else {
        return Ok(not_found(format!(
            "route output interface {} vanished",
            route.oif
        )));
    };
    if POD_LINK_KINDS.contains(&link.kind.as_str()) {
        return Ok(Resolution::Found {
            ifindex: route.oif,
            name: link.name,
        });
    }
    if link.kind != "bridge" {
        return Ok(not_found(format!(
            "route leads to `{}` (kind `{}`), neither a veth nor a bridge",
            link.name, link.kind
        )));
    }
    let Some(mac) = table.neighbour_mac(route.oif, ip)? else {
        return Ok(not_found(format!(
            "no neighbour entry for the pod on bridge `{}` yet",
            link.name
        )));
    };
    let Some(port) = table.fdb_port(route.oif, mac)? else {
        return Ok(not_found(format!(
            "bridge `{}` has not learned the pod's MAC yet",
            link.name
        )));
    };
    match table.link(port)? {
        Some(l) if POD_LINK_KINDS.contains(&l.kind.as_str()) => Ok(Resolution::Found {
            ifindex: port,
            name: l.name,
        }),
        Some(l) => Ok(not_found(format!(
            "bridge port `{}` (kind `{}`) is not a veth",
            l.name, l.kind
        ))),
        None => Ok(not_found(format!("bridge port {port} vanished"))),
    }
}

/// The real [`RouteTable`]: rtnetlink requests on a fresh `NETLINK_ROUTE` socket each.
#[derive(Debug, Default, Clone, Copy)]
pub struct Netlink;

/// `ENODEV`, `ENETUNREACH`, `EHOSTUNREACH`, `ENOENT`: the thing asked for does not exist.
fn is_absent(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENODEV | libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENOENT | libc::ESRCH
    )
}

impl Netlink {
    /// Sends one request and collects the replies (until `NLMSG_DONE` for dumps). `Ok(None)`
    /// when the kernel answers that the object does not exist.
    fn request(
        request: &'static str,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Option<Vec<RouteNetlinkMessage>>, NetlinkError> {
        let sock_err = |op| move |source| NetlinkError::Socket { op, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err("open"))?;
        socket.bind_auto().map_err(sock_err("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(sock_err("connect"))?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = 1;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0).map_err(sock_err("send"))?;

        let mut out = Vec::new();
        loop {
            let (data, _) = socket.recv_from_full().map_err(sock_err("recv"))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode {
                        request,
                        message: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            return Ok(Some(out));
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(Some(out)),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(Some(out)),
                        Some(code) if is_absent(-code.get()) => return Ok(None),
                        Some(code) => {
                            return Err(NetlinkError::Kernel {
                                request,
                                errno: -code.get(),
                            });
                        }
                    },
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) | _ => {}
                }
            }
        }
    }

    fn neighbours(family: AddressFamily) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let replies = Self::request("RTM_GETNEIGH", RouteNetlinkMessage::GetNeighbour(msg), true)?;
        Ok(replies
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }
}

fn mac_of(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

impl RouteTable for Netlink {
    fn index_of(&self, name: &str) -> u32 {
        crate::state::ifindex(name)
    }

    fn route(&self, ip: IpAddr) -> Result<Option<Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        let (family, len, addr) = match ip {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(addr));
        let Some(replies) =
            Self::request("RTM_GETROUTE", RouteNetlinkMessage::GetRoute(msg), false)?
        else {
            return Ok(None);
        };
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })?;
                let via_gateway = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_)));
                Some(Route { oif, via_gateway })
            }
            _ => None,
        }))
    }

    fn link(&self, ifindex: u32) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let Some(replies) = Self::request("RTM_GETLINK", RouteNetlinkMessage::GetLink(msg), false)?
        else {
            return Ok(None);
        };
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                let mut link = Link {
                    name: String::new(),
                    kind: String::new(),
                };
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                if let LinkInfo::Kind(k) = i {
                                    link.kind = match k {
                                        InfoKind::Veth => "veth".to_owned(),
                                        InfoKind::Bridge => "bridge".to_owned(),
                                        InfoKind::Netkit => "netkit".to_owned(),
                                        other => other.to_string(),
                                    };
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Some(link)
            }
            _ => None,
        }))
    }

    fn neighbour_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
        let family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        Ok(Self::neighbours(family)?.iter().find_map(|n| {
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            })?;
            (n.header.ifindex == ifindex && dst == ip)
                .then(|| mac_of(n))
                .flatten()
        }))
    }

    fn fdb_port(&self, bridge: u32, mac: [u8; 6]) -> Result<Option<u32>, NetlinkError> {
        Ok(Self::neighbours(AddressFamily::Bridge)?
            .iter()
            .find_map(|n| {
                let master = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Controller(m) => Some(*m),
                    _ => None,
                })?;
                (master == bridge && n.header.ifindex != bridge && mac_of(n) == Some(mac))
                    .then_some(n.header.ifindex)
            }))
    }
}

/// A fixed routing state: a [`RouteTable`] for tests and dry runs.
#[derive(Debug, Default, Clone)]
pub struct StaticTable {
    /// Route lookups by destination.
    pub routes: BTreeMap<IpAddr, Route>,
    /// Links by index.
    pub links: BTreeMap<u32, Link>,
    /// Neighbour entries by (interface, address).
    pub neighbours: BTreeMap<(u32, IpAddr), [u8; 6]>,
    /// Bridge FDB by (bridge, MAC) → port.
    pub fdb: BTreeMap<(u32, [u8; 6]), u32>,
}

impl StaticTable {
    /// Adds a pod behind veth `name` (index `ifindex`) with a host route to `ip`.
    #[must_use]
    pub fn with_veth_route(mut self, ip: IpAddr, ifindex: u32, name: &str) -> Self {
        self.links.insert(
            ifindex,
            Link {
                name: name.to_owned(),
                kind: "veth".to_owned(),
            },
        );
        self.routes.insert(
            ip,
            Route {
                oif: ifindex,
                via_gateway: false,
            },
        );
        self
    }
}

impl RouteTable for StaticTable {
    fn route(&self, ip: IpAddr) -> Result<Option<Route>, NetlinkError> {
        Ok(self.routes.get(&ip).copied())
    }
    fn link(&self, ifindex: u32) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links.get(&ifindex).cloned())
    }
    fn neighbour_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
        Ok(self.neighbours.get(&(ifindex, ip)).copied())
    }
    fn fdb_port(&self, bridge: u32, mac: [u8; 6]) -> Result<Option<u32>, NetlinkError> {
        Ok(self.fdb.get(&(bridge, mac)).copied())
    }
    fn index_of(&self, name: &str) -> u32 {
        self.links
            .iter()
            .find_map(|(i, l)| (l.name == name).then_some(*i))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: &str) -> Link {
        Link {
            name: name.into(),
            kind: kind.into(),
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

    fn table() -> StaticTable {
        let mut t = StaticTable::default();
        t.links.insert(1, link("eth0", ""));
        t.links.insert(10, link("cali1", "veth"));
        t.links.insert(20, link("cni0", "bridge"));
        t.links.insert(21, link("veth21", "veth"));
        t.links.insert(30, link("vxlan.calico", "vxlan"));
        let direct = |oif| Route {
            oif,
            via_gateway: false,
        };
        t.routes.insert("10.0.0.5".parse().unwrap(), direct(10));
        t.routes.insert("10.244.1.7".parse().unwrap(), direct(20));
        t.routes.insert("10.244.1.8".parse().unwrap(), direct(20));
        t.routes.insert("10.9.0.1".parse().unwrap(), direct(30));
        t.routes.insert(
            "10.1.0.9".parse().unwrap(),
            Route {
                oif: 1,
                via_gateway: true,
            },
        );
        t.neighbours
            .insert((20, "10.244.1.7".parse().unwrap()), MAC);
        t.fdb.insert((20, MAC), 21);
        t
    }

    fn found(r: Resolution) -> Option<(u32, String)> {
        match r {
            Resolution::Found { ifindex, name } => Some((ifindex, name)),
            Resolution::NotFound { .. } => None,
        }
    }

    #[test]
    fn host_route_to_a_veth_is_the_pod_interface() {
        let r = resolve(&table(), "10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(found(r), Some((10, "cali1".into())));
    }

    #[test]
    fn bridge_route_resolves_through_neighbour_and_fdb() {
        let r = resolve(&table(), "10.244.1.7".parse().unwrap()).unwrap();
        assert_eq!(found(r), Some((21, "veth21".into())));
    }

    #[test]
    fn unresolvable_addresses_say_why() {
        let t = table();
        for (ip, why) in [
            ("10.244.1.8", "no neighbour entry"),
            ("10.1.0.9", "gateway"),
            ("10.9.0.1", "neither a veth nor a bridge"),
            ("192.0.2.1", "no route"),
        ] {
            match resolve(&t, ip.parse().unwrap()).unwrap() {
                Resolution::NotFound { reason } => assert!(reason.contains(why), "{ip}: {reason}"),
                r @ Resolution::Found { .. } => panic!("{ip}: {r:?}"),
            }
        }
    }
}
