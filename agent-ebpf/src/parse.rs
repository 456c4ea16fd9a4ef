//! Packet parsing: Ethernet → IPv4/IPv6 (with extension headers) → L4 ports, flags, ICMP type.
//!
//! Every read is bounds-checked against `data_end`; a packet that does not parse ends in an
//! explicit drop reason (or "not policed" for ARP and neighbour discovery), never a fault.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use catalyst_policy::datapath::{
    DROP_CT_INVALID_HEADER, DROP_INVALID_IPV6_EXT, DROP_INVALID_PACKET, DROP_UNSUPPORTED_L3,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const IPV6_HLEN: usize = 40;
/// Extension headers walked before giving up (drop 156).
const MAX_IPV6_EXT: usize = 6;
/// Furthest L4 offset accepted; keeps every offset provably bounded for the verifier.
const MAX_L4_OFFSET: usize = ETH_HLEN + IPV6_HLEN + 256;
/// Bytes made linear before parsing when the skb's linear part is shorter.
pub const PULL_LEN: u32 = 128;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_NONE: u8 = 59;
const NEXTHDR_DEST: u8 = 60;

/// ICMPv6 types that are neighbour/router discovery (133-137) or multicast listener
/// discovery (130-132, 143): link-local control traffic, not subject to policy.
const ICMPV6_MLD_FIRST: u8 = 130;
const ICMPV6_ND_LAST: u8 = 137;
const ICMPV6_MLDV2_REPORT: u8 = 143;
/// ICMP echo request / reply (v4) and (v6).
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMP errors that quote the packet they answer: destination unreachable (fragmentation
/// needed among them), time exceeded; ICMPv6 destination unreachable, packet too big, time
/// exceeded.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;

/// What the parser learnt about a packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub protocol: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    /// Conntrack ports (network byte order): L4 ports, or the ICMP echo identifier twice, or
    /// ICMP type/code for other ICMP messages.
    pub ct_sport_be: u16,
    pub ct_dport_be: u16,
    /// Host-order ports for events.
    pub sport: u16,
    pub dport: u16,
    /// Port (or ICMP type) the policy is evaluated on, host order.
    pub policy_port: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// An ICMP error whose quoted header parsed: `inner` holds the quoted packet's tuple.
    pub icmp_error: bool,
    /// Tuple of the packet an ICMP error quotes (the original sender's addresses and ports, in
    /// conntrack form), valid when `icmp_error`.
    pub inner: Inner,
    /// `FRAG_*`: whether the packet is a fragment of a larger datagram, and which.
    pub frag: u8,
    /// Identification of the datagram a fragment belongs to (valid when `frag` is not
    /// [`FRAG_NONE`]).
    pub frag_id: u32,
}

/// Not a fragment (or an atomic one: offset 0, no more fragments).
pub const FRAG_NONE: u8 = 0;
/// The first fragment: offset 0, more to come; it carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; its ports come from the first one ([`Packet::frag_id`]).
pub const FRAG_LATER: u8 = 2;

/// The quoted packet of an ICMP error.
#[derive(Clone, Copy)]
pub struct Inner {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
}

/// Outcome of parsing.
pub enum Parsed {
    /// An IP packet subject to policy.
    Ip(Packet),
    /// ARP or IPv6 neighbour discovery: passed without policy.
    NotPoliced,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, u8> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(DROP_INVALID_PACKET);
    }
    Ok((start + offset) as *const T)
}

/// A bounds-checked view of `N` packet bytes: one check against `data_end` for the whole header
/// (one check per header keeps the verifier's and the compiler's view of the bounds the same),
/// then field reads straight from the packet, without copying the header.
#[derive(Clone, Copy)]
struct View<const N: usize> {
    p: *const u8,
}

impl<const N: usize> View<N> {
    #[inline(always)]
    fn at(ctx: &TcContext, offset: usize, reason: u8) -> Result<Self, u8> {
        let p = ptr_at::<[u8; N]>(ctx, offset).map_err(|_| reason)?;
        Ok(Self { p: p.cast() })
    }

    #[inline(always)]
    fn u8(self, i: usize) -> u8 {
        debug_assert!(i < N);
        // SAFETY: `at` checked that N bytes from `p` lie inside the packet; i < N.
        unsafe { *self.p.add(i) }
    }

    #[inline(always)]
    fn be16(self, i: usize) -> u16 {
        debug_assert!(i + 2 <= N);
        // SAFETY: as above, i + 2 <= N.
        u16::from_be(unsafe { core::ptr::read_unaligned(self.p.add(i).cast::<u16>()) })
    }

    /// The raw (network byte order) 16 bits at `i`.
    #[inline(always)]
    fn raw16(self, i: usize) -> u16 {
        debug_assert!(i + 2 <= N);
        // SAFETY: as above, i + 2 <= N.
        unsafe { core::ptr::read_unaligned(self.p.add(i).cast::<u16>()) }
    }

    /// The raw (network byte order) 32 bits at `i`, stored exactly as on the wire.
    #[inline(always)]
    fn word(self, i: usize) -> u32 {
        debug_assert!(i + 4 <= N);
        // SAFETY: as above, i + 4 <= N.
        unsafe { core::ptr::read_unaligned(self.p.add(i).cast::<u32>()) }
    }
}

/// Parses the packet in `ctx`.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, u8> {
    let ethertype = View::<ETH_HLEN>::at(ctx, 0, DROP_INVALID_PACKET)?.be16(12);
    let mut pkt = Packet {
        family: 0,
        protocol: 0,
        saddr: [0; 4],
        daddr: [0; 4],
        ct_sport_be: 0,
        ct_dport_be: 0,
        sport: 0,
        dport: 0,
        policy_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_error: false,
        inner: Inner {
            saddr: [0; 4],
            daddr: [0; 4],
            sport_be: 0,
            dport_be: 0,
            protocol: 0,
        },
        frag: FRAG_NONE,
        frag_id: 0,
    };
    let l4_off: usize;
    match ethertype {
        ETH_P_IP => {
            let ip = View::<20>::at(ctx, ETH_HLEN, DROP_INVALID_PACKET)?;
            let vihl = ip.u8(0);
            if vihl >> 4 != 4 {
                return Err(DROP_INVALID_PACKET);
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(DROP_INVALID_PACKET);
            }
            let frag = ip.be16(6);
            if frag & 0x1fff != 0 {
                pkt.frag = FRAG_LATER;
            } else if frag & 0x2000 != 0 {
                pkt.frag = FRAG_FIRST;
            }
            pkt.frag_id = u32::from(ip.be16(4));
            pkt.family = 4;
            pkt.protocol = ip.u8(9);
            pkt.saddr[0] = ip.word(12);
            pkt.daddr[0] = ip.word(16);
            l4_off = ETH_HLEN + ihl;
        }
        ETH_P_IPV6 => {
            let ip = View::<IPV6_HLEN>::at(ctx, ETH_HLEN, DROP_INVALID_PACKET)?;
            if ip.u8(0) >> 4 != 6 {
                return Err(DROP_INVALID_PACKET);
            }
            pkt.family = 6;
            let mut i = 0;
            while i < 4 {
                pkt.saddr[i] = ip.word(8 + i * 4);
                pkt.daddr[i] = ip.word(24 + i * 4);
                i += 1;
            }
            let mut next = ip.u8(6);
            let mut off = ETH_HLEN + IPV6_HLEN;
            let mut walked = 0;
            while walked <= MAX_IPV6_EXT {
                match next {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH
                    | NEXTHDR_FRAGMENT => {
                        if walked == MAX_IPV6_EXT || off > MAX_L4_OFFSET {
                            return Err(DROP_INVALID_IPV6_EXT);
                        }
                        let ext = View::<8>::at(ctx, off, DROP_INVALID_IPV6_EXT)?;
                        if next == NEXTHDR_FRAGMENT {
                            let frag = ext.be16(2);
                            if frag & 0xfff8 != 0 {
                                pkt.frag = FRAG_LATER;
                            } else if frag & 1 != 0 {
                                pkt.frag = FRAG_FIRST;
                            }
                            pkt.frag_id = ext.word(4);
                            off += 8;
                        } else if next == NEXTHDR_AUTH {
                            off += (ext.u8(1) as usize + 2) * 4;
                        } else {
                            off += (ext.u8(1) as usize + 1) * 8;
                        }
                        next = ext.u8(0);
                        if pkt.frag == FRAG_LATER {
                            // What follows is the middle of the datagram, not headers.
                            break;
                        }
                    }
                    NEXTHDR_NONE => return Err(DROP_INVALID_IPV6_EXT),
                    _ => break,
                }
                walked += 1;
            }
            if off > MAX_L4_OFFSET {
                return Err(DROP_INVALID_IPV6_EXT);
            }
            pkt.protocol = next;
            l4_off = off;
        }
        ETH_P_ARP => return Ok(Parsed::NotPoliced),
        _ => return Err(DROP_UNSUPPORTED_L3),
    }

    if pkt.frag == FRAG_LATER {
        // No L4 header: the caller attributes it through the first fragment's ports.
        return Ok(Parsed::Ip(pkt));
    }
    if l4_off > MAX_L4_OFFSET {
        return Err(DROP_INVALID_PACKET);
    }

    match pkt.protocol {
        PROTO_TCP => {
            let th = View::<20>::at(ctx, l4_off, DROP_CT_INVALID_HEADER)?;
            if th.u8(12) >> 4 < 5 {
                return Err(DROP_CT_INVALID_HEADER);
            }
            set_ports(&mut pkt, th.raw16(0), th.raw16(2));
            pkt.tcp_flags = th.u8(13);
        }
        PROTO_UDP => {
            let uh = View::<8>::at(ctx, l4_off, DROP_CT_INVALID_HEADER)?;
            set_ports(&mut pkt, uh.raw16(0), uh.raw16(2));
        }
        PROTO_SCTP => {
            let sh = View::<12>::at(ctx, l4_off, DROP_CT_INVALID_HEADER)?;
            set_ports(&mut pkt, sh.raw16(0), sh.raw16(2));
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let ih = View::<8>::at(ctx, l4_off, DROP_CT_INVALID_HEADER)?;
            let (ty, code) = (ih.u8(0), ih.u8(1));
            if pkt.protocol == PROTO_ICMPV6
                && ((ICMPV6_MLD_FIRST..=ICMPV6_ND_LAST).contains(&ty) || ty == ICMPV6_MLDV2_REPORT)
            {
                return Ok(Parsed::NotPoliced);
            }
            pkt.icmp_type = ty;
            pkt.icmp_code = code;
            pkt.policy_port = u16::from(ty);
            let echo = if pkt.protocol == PROTO_ICMP {
                ty == ICMP_ECHO || ty == ICMP_ECHO_REPLY
            } else {
                ty == ICMPV6_ECHO || ty == ICMPV6_ECHO_REPLY
            };
            if echo {
                let id = ih.raw16(4);
                pkt.ct_sport_be = id;
                pkt.ct_dport_be = id;
            } else {
                pkt.ct_sport_be = (u16::from(ty) << 8 | u16::from(code)).to_be();
                let error = if pkt.protocol == PROTO_ICMP {
                    ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED
                } else {
                    ty == ICMPV6_DEST_UNREACH || ty == ICMPV6_PKT_TOOBIG || ty == ICMPV6_TIME_EXCEED
                };
                // A quote that does not parse leaves the error to policy like any ICMP packet.
                if error && quoted(ctx, &mut pkt, l4_off + 8).is_ok() {
                    pkt.icmp_error = true;
                }
            }
        }
        _ => {
            // Other protocols: L3-only policy applies (no ports).
        }
    }
    Ok(Parsed::Ip(pkt))
}

/// Parses the packet an ICMP error quotes at `off`: its IP header (IPv4 with options, or IPv6
/// without extension headers) and the first 8 bytes of its L4 header (ports; the echo id for
/// ICMP echo).
#[inline(always)]
fn quoted(ctx: &TcContext, pkt: &mut Packet, off: usize) -> Result<(), u8> {
    let l4: usize;
    if pkt.family == 4 {
        let ip = View::<20>::at(ctx, off, DROP_CT_INVALID_HEADER)?;
        let vihl = ip.u8(0);
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < 20 || ip.be16(6) & 0x1fff != 0 {
            return Err(DROP_CT_INVALID_HEADER);
        }
        pkt.inner.protocol = ip.u8(9);
        pkt.inner.saddr[0] = ip.word(12);
        pkt.inner.daddr[0] = ip.word(16);
        l4 = off + ihl;
    } else {
        let ip = View::<IPV6_HLEN>::at(ctx, off, DROP_CT_INVALID_HEADER)?;
        if ip.u8(0) >> 4 != 6 {
            return Err(DROP_CT_INVALID_HEADER);
        }
        let mut i = 0;
        while i < 4 {
            pkt.inner.saddr[i] = ip.word(8 + i * 4);
            pkt.inner.daddr[i] = ip.word(24 + i * 4);
            i += 1;
        }
        pkt.inner.protocol = ip.u8(6);
        l4 = off + IPV6_HLEN;
    }
    if l4 > MAX_L4_OFFSET + 128 {
        return Err(DROP_CT_INVALID_HEADER);
    }
    let q = View::<8>::at(ctx, l4, DROP_CT_INVALID_HEADER)?;
    match pkt.inner.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            pkt.inner.sport_be = q.raw16(0);
            pkt.inner.dport_be = q.raw16(2);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = q.raw16(4);
            pkt.inner.sport_be = id;
            pkt.inner.dport_be = id;
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn set_ports(pkt: &mut Packet, sport_be: u16, dport_be: u16) {
    pkt.ct_sport_be = sport_be;
    pkt.ct_dport_be = dport_be;
    pkt.sport = u16::from_be(sport_be);
    pkt.dport = u16::from_be(dport_be);
    pkt.policy_port = pkt.dport;
}
