//! Types and constants shared between userspace and the eBPF datapath (`agent-ebpf`).
//!
//! Every type here crosses the kernel boundary, so all of them follow one recipe: `#[repr(C)]`,
//! `Clone + Copy`, explicit fields with no implicit padding (integers, never `bool`, enums or
//! `Option`), and `aya::Pod` under the `user` feature. Map names, default capacities, flag bits
//! and slot indices are constants next to the types, so both sides read the same number.
//!
//! This module is `no_std`-clean: it must compile for `bpfel-unknown-none`.

// ---------------------------------------------------------------------------------------------
// Map names (the names the eBPF object defines and the agent looks up / pins).
// ---------------------------------------------------------------------------------------------

/// Endpoint information keyed by the ifindex of the host-side workload interface.
pub const MAP_ENDPOINTS: &str = "CATALYST_ENDPOINTS";
/// IPv4 ipcache: LPM trie from prefix to security identity, for prefixes shorter than /32.
pub const MAP_IPCACHE_V4: &str = "CATALYST_IPCACHE4";
/// IPv6 ipcache: LPM trie from prefix to security identity, for prefixes shorter than /128.
pub const MAP_IPCACHE_V6: &str = "CATALYST_IPCACHE6";
/// IPv4 ipcache entries of single addresses (/32): hash from the address (network byte order
/// `u32`) to its identity. Looked up before [`MAP_IPCACHE_V4`]: a /32 is the longest prefix an
/// address can match, so a hit here is what the longest-prefix lookup over both would answer.
pub const MAP_IPCACHE_HOST_V4: &str = "CATALYST_IPHOST4";
/// IPv6 ipcache entries of single addresses (/128), keyed by the address's four network byte
/// order words; looked up before [`MAP_IPCACHE_V6`].
pub const MAP_IPCACHE_HOST_V6: &str = "CATALYST_IPHOST6";
/// Policy map: LPM trie keyed by [`PolicyKey`], for entries shorter than
/// [`POLICY_PREFIX_FULL_BITS`] (any protocol, port ranges).
pub const MAP_POLICY: &str = "CATALYST_POLICY";
/// Policy entries of one protocol and one port (the full key): hash keyed by [`PolicyKey`],
/// looked up before [`MAP_POLICY`] (an exact key is the longest prefix a packet can match).
pub const MAP_POLICY_EXACT: &str = "CATALYST_POLICYX";
/// LRU connection tracking table of IPv6 connections: [`CtKey`] → [`CtConn`] (the name of the
/// single table of both families before layout schema 5).
pub const MAP_CONNTRACK: &str = "CATALYST_CT";
/// LRU connection tracking table of IPv4 connections: [`CtKey4`] → [`CtConn`]. A 16-byte key
/// hashes and compares in less than half the work of the 40-byte [`CtKey`], on every packet.
pub const MAP_CONNTRACK_V4: &str = "CATALYST_CT4";
/// Single-slot array holding the [`DatapathConfig`].
pub const MAP_CONFIG: &str = "CATALYST_CONFIG";
/// Per-CPU packet counters, indexed by [`counter_index`] and the `STAT_*` slots.
pub const MAP_COUNTERS: &str = "CATALYST_COUNTERS";
/// Ring buffer of [`FlowEvent`]s.
pub const MAP_EVENTS: &str = "CATALYST_EVENTS";
/// LRU table of datagrams in flight as IP fragments: [`FragKey`] → [`FragPorts`], written by a
/// first fragment, read by the later ones (which carry no L4 header), as Cilium's
/// `cilium_ipv4_frag_datagrams`.
pub const MAP_FRAGMENTS: &str = "CATALYST_FRAGS";

/// Names of every map, in the order the agent pins them.
pub const ALL_MAPS: [&str; 13] = [
    MAP_ENDPOINTS,
    MAP_IPCACHE_V4,
    MAP_IPCACHE_V6,
    MAP_IPCACHE_HOST_V4,
    MAP_IPCACHE_HOST_V6,
    MAP_POLICY,
    MAP_POLICY_EXACT,
    MAP_CONNTRACK_V4,
    MAP_CONNTRACK,
    MAP_CONFIG,
    MAP_COUNTERS,
    MAP_EVENTS,
    MAP_FRAGMENTS,
];

/// Program names in the eBPF object.
pub const PROG_FROM_ENDPOINT: &str = "catalyst_from_endpoint";
/// Program attached to the egress hook of the host-side interface (traffic towards the workload).
pub const PROG_TO_ENDPOINT: &str = "catalyst_to_endpoint";

// ---------------------------------------------------------------------------------------------
// Default capacities. The agent overrides them from configuration at load time.
// ---------------------------------------------------------------------------------------------

/// Default capacity of [`MAP_ENDPOINTS`].
pub const DEFAULT_ENDPOINTS_MAX: u32 = 4096;
/// Default capacity of each ipcache map (the tries and the single-address hashes).
pub const DEFAULT_IPCACHE_MAX: u32 = 65_536;
/// Default capacity of [`MAP_POLICY`] and of [`MAP_POLICY_EXACT`].
pub const DEFAULT_POLICY_MAX: u32 = 262_144;
/// Default capacity of each conntrack table ([`MAP_CONNTRACK_V4`], [`MAP_CONNTRACK`]).
pub const DEFAULT_CONNTRACK_MAX: u32 = 262_144;
/// Default capacity of [`MAP_FRAGMENTS`]: datagrams in flight as fragments at once (Cilium's
/// `bpf-fragments-map-max` default).
pub const DEFAULT_FRAGMENTS_MAX: u32 = 8192;
/// Default size of [`MAP_EVENTS`] in bytes (power of two, multiple of the page size).
pub const DEFAULT_EVENTS_BYTES: u32 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Reserved security identities (Cilium numbering).
// ---------------------------------------------------------------------------------------------

/// Wildcard identity in policy keys: the entry applies to every peer.
pub const IDENTITY_ANY: u32 = 0;
/// The local host.
pub const IDENTITY_HOST: u32 = 1;
/// Everything outside the cluster (no more specific identity known).
pub const IDENTITY_WORLD: u32 = 2;
/// Endpoints not managed by Catalyst.
pub const IDENTITY_UNMANAGED: u32 = 3;
/// Health endpoints.
pub const IDENTITY_HEALTH: u32 = 4;
/// Endpoints whose identity is not resolved yet.
pub const IDENTITY_INIT: u32 = 5;
/// Other nodes of the cluster.
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// The Kubernetes API server.
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
/// Ingress proxy.
pub const IDENTITY_INGRESS: u32 = 8;
/// World, IPv4 (dual-stack split of [`IDENTITY_WORLD`]).
pub const IDENTITY_WORLD_IPV4: u32 = 9;
/// World, IPv6 (dual-stack split of [`IDENTITY_WORLD`]).
pub const IDENTITY_WORLD_IPV6: u32 = 10;
/// First identity allocated for a label set.
pub const IDENTITY_USER_MIN: u32 = 256;
/// Local scope bit: CIDR identities are `IDENTITY_LOCAL_SCOPE | n`.
pub const IDENTITY_LOCAL_SCOPE: u32 = 1 << 24;

// ---------------------------------------------------------------------------------------------
// Directions, protocols, verdicts, drop reasons (Hubble numbering where Hubble has one).
// ---------------------------------------------------------------------------------------------

/// Traffic towards the workload (Hubble `TrafficDirection::INGRESS`).
pub const DIR_INGRESS: u8 = 1;
/// Traffic leaving the workload (Hubble `TrafficDirection::EGRESS`).
pub const DIR_EGRESS: u8 = 2;

/// Protocol wildcard in policy keys.
pub const PROTO_ANY: u8 = 0;
/// ICMP.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// Verdict: forwarded (Hubble `FORWARDED`).
pub const VERDICT_FORWARDED: u8 = 1;
/// Verdict: dropped (Hubble `DROPPED`).
pub const VERDICT_DROPPED: u8 = 2;
/// Verdict: would have been dropped, forwarded because of audit mode (Hubble `AUDIT`).
pub const VERDICT_AUDIT: u8 = 4;

/// No drop.
pub const DROP_NONE: u8 = 0;
/// Source address is not valid for the endpoint.
pub const DROP_INVALID_SOURCE_IP: u8 = 132;
/// No allow rule matched while the direction is enforced.
pub const DROP_POLICY_DENIED: u8 = 133;
/// The packet is malformed.
pub const DROP_INVALID_PACKET: u8 = 134;
/// Truncated or invalid L4 header.
pub const DROP_CT_INVALID_HEADER: u8 = 135;
/// Network protocol other than IPv4/IPv6 on a workload interface.
pub const DROP_UNSUPPORTED_L3: u8 = 139;
/// Connection-tracking entry could not be created.
pub const DROP_CT_MAP_INSERTION_FAILED: u8 = 155;
/// An IPv6 extension-header chain that cannot be walked.
pub const DROP_INVALID_IPV6_EXT: u8 = 156;
/// IP fragmentation not supported (kept for decoding; this datapath tracks fragments and
/// reports [`DROP_FRAG_NOT_FOUND`] instead).
pub const DROP_FRAG_NOT_SUPPORTED: u8 = 157;
/// A non-first fragment whose first fragment was never seen (or was forgotten): nothing to
/// attribute it to (Cilium's `FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND`).
pub const DROP_FRAG_NOT_FOUND: u8 = 175;
/// An explicit deny rule matched.
pub const DROP_POLICY_DENY: u8 = 181;

/// Policy entry action: allow.
pub const ACTION_ALLOW: u32 = 1;
/// Policy entry action: deny.
pub const ACTION_DENY: u32 = 2;

/// Policy match types, as Hubble's `policy_match_type` numbers them.
pub const MATCH_NONE: u8 = 0;
/// L3 only: a specific peer identity, any protocol and port.
pub const MATCH_L3_ONLY: u8 = 1;
/// L3 and L4: a specific peer identity and a port.
pub const MATCH_L3_L4: u8 = 2;
/// L4 only: any peer, a specific port.
pub const MATCH_L4_ONLY: u8 = 3;
/// Everything: any peer, any protocol.
pub const MATCH_ALL: u8 = 4;
/// L3 and protocol: a specific peer, a protocol, any port.
pub const MATCH_L3_PROTO: u8 = 5;
/// Protocol only: any peer, a protocol, any port.
pub const MATCH_PROTO_ONLY: u8 = 6;

// ---------------------------------------------------------------------------------------------
// Endpoints.
// ---------------------------------------------------------------------------------------------

/// Ingress is enforced (a policy selecting the endpoint has an ingress section): default deny.
pub const EP_F_INGRESS_ENFORCED: u32 = 1 << 0;
/// Egress is enforced: default deny.
pub const EP_F_EGRESS_ENFORCED: u32 = 1 << 1;
/// Audit mode for this endpoint: would-be drops are forwarded and reported as AUDIT.
pub const EP_F_AUDIT: u32 = 1 << 2;
/// No source-address check for this endpoint: it may send from any address (workloads that
/// route or forward traffic of other addresses). Without it, a packet the workload sends from an
/// address other than [`EndpointInfo::ipv4`] / [`EndpointInfo::ipv6`] is dropped with
/// [`DROP_INVALID_SOURCE_IP`].
pub const EP_F_NO_SOURCE_CHECK: u32 = 1 << 3;
/// No policy entry of this endpoint denies the wildcard identity ([`IDENTITY_ANY`]) on ingress:
/// when the peer's own identity is allowed, the wildcard lookup cannot change the verdict and
/// the datapath skips it. (A negative flag: an endpoint written without it — by an older agent
/// — gets both lookups, never a missed deny.)
pub const EP_F_INGRESS_NO_ANY_DENY: u32 = 1 << 4;
/// [`EP_F_INGRESS_NO_ANY_DENY`] for egress.
pub const EP_F_EGRESS_NO_ANY_DENY: u32 = 1 << 5;

/// Value of [`MAP_ENDPOINTS`], keyed by the host-side ifindex (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Agent-assigned endpoint id; the first field of every [`PolicyKey`] of this endpoint.
    pub endpoint_id: u32,
    /// Security identity of the endpoint.
    pub identity: u32,
    /// `EP_F_*` bits.
    pub flags: u32,
    /// The endpoint's IPv4 address (network byte order), 0 when it has none: the only IPv4
    /// source it may send from (unless [`EP_F_NO_SOURCE_CHECK`]).
    pub ipv4: u32,
    /// The endpoint's IPv6 address (network byte order words), all zero when it has none.
    pub ipv6: [u32; 4],
}

// ---------------------------------------------------------------------------------------------
// ipcache.
// ---------------------------------------------------------------------------------------------

/// Value of the ipcache tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheEntry {
    /// Security identity of every address in the prefix.
    pub identity: u32,
    /// Reserved, zero.
    pub flags: u32,
}

// ---------------------------------------------------------------------------------------------
// Policy.
// ---------------------------------------------------------------------------------------------

/// Data part of the policy LPM key. Matching runs from the first byte's most significant bit:
/// `endpoint_id`, `identity` and `direction` are always matched whole (72 bits), then the
/// protocol (8 bits, absent for [`PROTO_ANY`]) and a prefix of the destination port in network
/// byte order. A port range is a set of prefixes.
///
/// The datapath looks up twice, once with the peer's identity and once with [`IDENTITY_ANY`], and
/// a deny from either wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    /// Endpoint id (host byte order; always matched whole).
    pub endpoint_id: u32,
    /// Peer identity, or [`IDENTITY_ANY`] (host byte order; always matched whole).
    pub identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol, or [`PROTO_ANY`] with a prefix length that stops before it.
    pub protocol: u8,
    /// Destination port (ICMP: type) in network byte order.
    pub dport_be: u16,
}

/// Bits of a [`PolicyKey`] that are always matched (endpoint id, identity, direction).
pub const POLICY_PREFIX_EXACT_BITS: u32 = 72;
/// Full length of a [`PolicyKey`] in bits.
pub const POLICY_PREFIX_FULL_BITS: u32 = 96;

/// Value of [`MAP_POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEntry {
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`].
    pub action: u32,
    /// Index into the agent's table of rule origins (which policies produced the entry).
    pub rule_id: u32,
    /// `MATCH_*` type of the entry.
    pub match_type: u32,
    /// Reserved, zero.
    pub pad: u32,
}

// ---------------------------------------------------------------------------------------------
// Conntrack.
// ---------------------------------------------------------------------------------------------

/// Connection-tracking key. Addresses are 16 bytes for both families (IPv4 in the first word,
/// the rest zero). Both directions of a connection have the same key: the tuple in canonical
/// order ([`CtKey::canonical`]), so one lookup finds a connection from either direction, and
/// [`CT_F_SWAPPED`] in the entry tells which direction was the original. The key names no
/// endpoint: a connection between two endpoints of the node is one element ([`CtConn`]) with a
/// side for each, so the second endpoint's hook finds the element the first one just wrote.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Source address (network byte order words).
    pub saddr: [u32; 4],
    /// Destination address (network byte order words).
    pub daddr: [u32; 4],
    /// Source port (ICMP echo: identifier), network byte order.
    pub sport_be: u16,
    /// Destination port (ICMP echo: identifier), network byte order.
    pub dport_be: u16,
    /// IP protocol.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// Reserved, zero.
    pub pad: u16,
}

/// The tuple (addresses, ports) as given, or reversed when `swap`.
#[inline(always)]
fn ordered<A>(swap: bool, saddr: A, daddr: A, sport: u16, dport: u16) -> (A, A, u16, u16) {
    if swap {
        (daddr, saddr, dport, sport)
    } else {
        (saddr, daddr, sport, dport)
    }
}

impl CtKey {
    /// The key of a packet's connection, and whether the packet's tuple was swapped to make it:
    /// the endpoint with the lower (address, port) comes first (any fixed total order serves; this
    /// one compares the address words as stored, then the ports as stored). A packet whose
    /// `swapped` differs from its entry's [`CT_F_SWAPPED`] is a reply.
    #[inline(always)]
    #[must_use]
    pub fn canonical(
        saddr: [u32; 4],
        daddr: [u32; 4],
        sport_be: u16,
        dport_be: u16,
        protocol: u8,
        family: u8,
    ) -> (Self, bool) {
        let swap = if saddr[0] != daddr[0] {
            saddr[0] > daddr[0]
        } else if saddr[1] != daddr[1] {
            saddr[1] > daddr[1]
        } else if saddr[2] != daddr[2] {
            saddr[2] > daddr[2]
        } else if saddr[3] != daddr[3] {
            saddr[3] > daddr[3]
        } else {
            sport_be > dport_be
        };
        let (saddr, daddr, sport_be, dport_be) = ordered(swap, saddr, daddr, sport_be, dport_be);
        let key = Self {
            saddr,
            daddr,
            sport_be,
            dport_be,
            protocol,
            family,
            pad: 0,
        };
        (key, swap)
    }
}

/// Key of [`MAP_CONNTRACK_V4`]: the IPv4 form of [`CtKey`] (addresses as the packet carries
/// them, read as native `u32`s), in the same canonical order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey4 {
    /// Source address of the canonical tuple.
    pub saddr: u32,
    /// Destination address of the canonical tuple.
    pub daddr: u32,
    /// Source port (ICMP echo: identifier), network byte order.
    pub sport_be: u16,
    /// Destination port (ICMP echo: identifier), network byte order.
    pub dport_be: u16,
    /// IP protocol.
    pub protocol: u8,
    /// Reserved, zero. (Two scalar fields, not a 3-byte array: the eBPF build zeroes an array
    /// through a byte-loop `memset` subprogram, a call on every packet.)
    pub pad8: u8,
    /// Reserved, zero.
    pub pad16: u16,
}

impl CtKey4 {
    /// The IPv4 key of an IPv4 [`CtKey`] (its first address words; the order is kept, so a
    /// canonical key stays canonical).
    #[inline(always)]
    #[must_use]
    pub fn of(key: &CtKey) -> Self {
        Self {
            saddr: key.saddr[0],
            daddr: key.daddr[0],
            sport_be: key.sport_be,
            dport_be: key.dport_be,
            protocol: key.protocol,
            pad8: 0,
            pad16: 0,
        }
    }

    /// [`CtKey::canonical`] for IPv4 addresses.
    #[inline(always)]
    #[must_use]
    pub fn canonical(
        saddr: u32,
        daddr: u32,
        sport_be: u16,
        dport_be: u16,
        protocol: u8,
    ) -> (Self, bool) {
        let swap = if saddr == daddr {
            sport_be > dport_be
        } else {
            saddr > daddr
        };
        let (saddr, daddr, sport_be, dport_be) = ordered(swap, saddr, daddr, sport_be, dport_be);
        let key = Self {
            saddr,
            daddr,
            sport_be,
            dport_be,
            protocol,
            pad8: 0,
            pad16: 0,
        };
        (key, swap)
    }
}

/// Connection is being closed (FIN or RST seen).
pub const CT_F_CLOSING: u8 = 1 << 0;
/// A reply has been seen (the first one of a non-TCP flow is reported as a trace event).
pub const CT_F_SEEN_REPLY: u8 = 1 << 2;
/// The connection's original packet had its tuple swapped in the key ([`CtKey::canonical`]):
/// packets of the connection that are swapped the other way are its replies.
pub const CT_F_SWAPPED: u8 = 1 << 3;

/// The TCP flags [`CtEntry::tcp_flags_seen`] keeps (FIN, SYN, RST, as in the TCP header): the
/// connection-state transitions events are aggregated on.
pub const CT_TCP_FLAGS: u8 = 0x07;
/// Shift of the reply direction's flags in [`CtEntry::tcp_flags_seen`].
pub const CT_TCP_REPLY_SHIFT: u8 = 4;

/// `CLOCK_MONOTONIC` nanoseconds per tick of [`CtEntry::expires`] (2^26 ns, about 67 ms): a u32
/// of them spans about 9 years, and entries compare them with wrapping arithmetic.
pub const CT_EXPIRY_TICK_SHIFT: u32 = 26;
/// `CLOCK_MONOTONIC` nanoseconds per tick of [`CtEntry::last_event`] (2^20 ns, about 1 ms).
pub const CT_EVENT_TICK_SHIFT: u32 = 20;

/// The expiry tick of a connection whose last packet came at `now_ns` and that lives `lifetime_ns`
/// idle: the first tick that starts no earlier than `now_ns + lifetime_ns` (so an entry never
/// expires early, and at most two ticks late).
#[inline(always)]
#[must_use]
pub const fn ct_expiry(now_ns: u64, lifetime_ns: u64) -> u32 {
    let tick = 1u64 << CT_EXPIRY_TICK_SHIFT;
    ((now_ns >> CT_EXPIRY_TICK_SHIFT) + lifetime_ns.div_ceil(tick) + 1) as u32
}

/// Whether an entry expiring at tick `expires` is over at `now_ns` (wrapping comparison: right
/// while lifetimes and the time since expiry stay under about 4.5 years).
#[inline(always)]
#[must_use]
pub const fn ct_expired(expires: u32, now_ns: u64) -> bool {
    ((now_ns >> CT_EXPIRY_TICK_SHIFT) as u32)
        .wrapping_sub(expires)
        .cast_signed()
        >= 0
}

/// One endpoint's side of a connection ([`CtConn`]): the verdict cached for it and the state
/// its events are aggregated on. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// Host-side ifindex of the endpoint whose side this is; 0: the side is unused. A packet uses
    /// a side only at the hook of its own interface (a workload sending another's address on
    /// another's connection finds no side of its own and goes through the source check).
    pub ifindex: u32,
    /// Policy revision the cached verdict was computed under.
    pub revision: u32,
    /// Rule origin index of the policy entry that decided.
    pub rule_id: u32,
    /// Peer identity at decision time.
    pub peer_identity: u32,
    /// `VERDICT_*` of the connection.
    pub verdict: u8,
    /// `DROP_*` reason when dropped (or would-be reason under audit).
    pub drop_reason: u8,
    /// `MATCH_*` of the deciding entry.
    pub match_type: u8,
    /// Direction of the original packet (`DIR_*`).
    pub direction: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// The [`CT_TCP_FLAGS`] seen in the original direction (bits 0–2) and in the reply direction
    /// (bits 4–6, [`CT_TCP_REPLY_SHIFT`]).
    pub tcp_flags_seen: u8,
    /// Destination port (ICMP: type) the policy decision was made for, host byte order.
    pub policy_port: u16,
    /// When an event was last emitted for this entry, in ticks of 2^[`CT_EVENT_TICK_SHIFT`] ns of
    /// the `bpf_ktime_get_coarse_ns` clock (wrapping).
    pub last_event: u32,
    /// When the entry expires unless another packet comes ([`ct_expiry`]: the last packet's time
    /// plus the timeout of the connection's state, [`CtTimeouts`]), in ticks of
    /// 2^[`CT_EXPIRY_TICK_SHIFT`] ns of `CLOCK_MONOTONIC` (`bpf_ktime_get_coarse_ns`). A packet that
    /// finds an expired entry ([`ct_expired`]) starts a new connection.
    pub expires: u32,
}

/// Value of [`MAP_CONNTRACK_V4`] and [`MAP_CONNTRACK`]: a connection, with a side for each
/// endpoint of this node it involves ([`ct_side`]). A connection between two local workloads is
/// one element: the first hook inserts it, the other endpoint's hook fills its side in place
/// (no second insert, and the element is still in cache). 64 bytes: an IPv4 element (48 bytes
/// of kernel header, the 16-byte key, the value) is 128 bytes, exactly two cache lines of the
/// preallocated element array — the kernel's header and the key in one, both sides in the other
/// — against 2 × 104 bytes with one entry per endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtConn {
    /// Side 0: the endpoint with the key's first address; side 1: the other.
    pub sides: [CtEntry; 2],
}

/// The side of a [`CtConn`] that belongs to the endpoint at hook direction `dir` for a packet
/// whose tuple was `swapped` to make its key: the endpoint's address is the packet's source
/// leaving it (egress hook) and its destination arriving, and the source is the key's first
/// address unless swapped.
#[inline(always)]
#[must_use]
pub const fn ct_side(dir: u8, swapped: bool) -> usize {
    if (dir == DIR_EGRESS) == swapped { 1 } else { 0 }
}

/// Key of [`MAP_FRAGMENTS`]: one datagram in flight as fragments (the fields IP reassembly
/// keys on). Addresses as in [`CtKey`]; `id` is the IPv4 identification (host order, widened)
/// or the IPv6 fragment header's identification (as on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// Source address (network byte order words).
    pub saddr: [u32; 4],
    /// Destination address (network byte order words).
    pub daddr: [u32; 4],
    /// Datagram identification.
    pub id: u32,
    /// Upper-layer protocol.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// Reserved, zero.
    pub pad: u16,
}

/// Value of [`MAP_FRAGMENTS`]: what the first fragment's L4 header said, so later fragments
/// are attributed to the same flow and policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    /// Conntrack source port (ICMP echo: identifier; other ICMP: type/code), network order.
    pub sport_be: u16,
    /// Conntrack destination port, network order.
    pub dport_be: u16,
    /// Port (ICMP: type) the policy is evaluated on, host order.
    pub policy_port: u16,
    /// ICMP type and code of the first fragment (zero for other protocols).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
}

// ---------------------------------------------------------------------------------------------
// Global config.
// ---------------------------------------------------------------------------------------------

/// Global audit mode: every endpoint behaves as if [`EP_F_AUDIT`] were set.
pub const CFG_F_AUDIT: u32 = 1 << 0;
/// No [`EVENT_DROP`] events (drops are still counted). Cilium `bpf-events-drop-enabled=false`.
pub const CFG_F_NO_DROP_EVENTS: u32 = 1 << 1;
/// No [`EVENT_POLICY_VERDICT`] events for allowed (and audited) new connections. Cilium
/// `bpf-events-policy-verdict-enabled=false`.
pub const CFG_F_NO_VERDICT_EVENTS: u32 = 1 << 2;
/// No [`EVENT_TRACE`] events (TCP flag transitions, first replies). Cilium
/// `bpf-events-trace-enabled=false`.
pub const CFG_F_NO_TRACE_EVENTS: u32 = 1 << 3;

/// Layout schema of the pinned maps. Bump it whenever the meaning of a field of any pinned map
/// changes (a change of key or value size is detected on its own). A restarted agent adopts
/// pinned maps only when their schema (in [`DatapathConfig::schema`]) and sizes match, and
/// recreates them otherwise.
///
/// 1: the layout before versioning (16-byte config). 2: endpoint addresses for the source check,
/// schema and conntrack timeouts in the config, conntrack expiry. 3: single addresses and
/// full policy keys in their own hash maps ([`MAP_IPCACHE_HOST_V4`], [`MAP_IPCACHE_HOST_V6`],
/// [`MAP_POLICY_EXACT`]); the tries hold only the shorter prefixes. 4: conntrack entries without
/// per-connection packet and byte counts (nothing read them; two atomic adds per packet).
/// 5: one conntrack key for both directions of a connection ([`CtKey::canonical`],
/// [`CT_F_SWAPPED`]), a 32-byte entry (narrow fields, expiry and last event in coarse ticks), and
/// IPv4 connections in their own table with a 20-byte key ([`MAP_CONNTRACK_V4`]).
/// 6: keys without the endpoint's ifindex, values with a side per local endpoint ([`CtConn`]):
/// one element per connection also when both its ends are workloads of this node.
pub const DATAPATH_SCHEMA: u32 = 6;

/// Conntrack idle timeouts by protocol and state, seconds. A connection whose last packet is
/// older than the timeout of its state is over: the next packet on its tuple is a new
/// connection, evaluated against the policy in force.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP before the first reply (SYN sent, no answer yet). Cilium: 60 s.
    pub tcp_syn_s: u32,
    /// TCP once a reply was seen. Cilium: 21,600 s (6 h).
    pub tcp_established_s: u32,
    /// TCP after FIN or RST in either direction. Cilium: 10 s.
    pub tcp_closing_s: u32,
    /// UDP. Cilium (all non-TCP): 60 s.
    pub udp_s: u32,
    /// ICMP, ICMPv6, SCTP and every other protocol. Cilium (all non-TCP): 60 s.
    pub other_s: u32,
    /// Reserved, zero.
    pub pad: u32,
}

/// Cilium's default timeouts.
pub const DEFAULT_CT_TIMEOUTS: CtTimeouts = CtTimeouts {
    tcp_syn_s: 60,
    tcp_established_s: 21_600,
    tcp_closing_s: 10,
    udp_s: 60,
    other_s: 60,
    pad: 0,
};

impl Default for CtTimeouts {
    fn default() -> Self {
        DEFAULT_CT_TIMEOUTS
    }
}

/// Value of slot 0 of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// Current policy revision; conntrack entries from an older one are re-evaluated.
    pub policy_revision: u32,
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// Minimum interval between two events for the same connection (drops, re-reports), ns.
    pub event_interval_ns: u64,
    /// [`DATAPATH_SCHEMA`] of the agent that wrote the maps.
    pub schema: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// Conntrack timeouts.
    pub ct_timeouts: CtTimeouts,
}

// ---------------------------------------------------------------------------------------------
// Counters.
// ---------------------------------------------------------------------------------------------

/// Slots per direction in [`MAP_COUNTERS`]: one per reason code (0 = forwarded).
pub const COUNTER_REASONS: u32 = 256;
/// First of the `STAT_*` slots.
pub const STAT_BASE: u32 = 3 * COUNTER_REASONS;
/// Events that could not be written to the ring buffer.
pub const STAT_EVENTS_LOST: u32 = STAT_BASE;
/// Conntrack entries created.
pub const STAT_CT_CREATED: u32 = STAT_BASE + 1;
/// Conntrack entries re-evaluated after a policy revision change.
pub const STAT_CT_REEVALUATED: u32 = STAT_BASE + 2;
/// Packets forwarded under audit that policy would have dropped.
pub const STAT_AUDIT: u32 = STAT_BASE + 3;
/// Packets on interfaces without an endpoint entry (passed).
pub const STAT_NO_ENDPOINT: u32 = STAT_BASE + 4;
/// Packets not subject to policy (ARP, neighbour discovery), passed.
pub const STAT_NOT_POLICED: u32 = STAT_BASE + 5;
/// Events emitted.
pub const STAT_EVENTS_SENT: u32 = STAT_BASE + 6;
/// Conntrack entries ended by a packet: idle past their timeout, or a new TCP SYN on the tuple
/// of a closing connection (the packet then started a new, re-evaluated connection).
pub const STAT_CT_ENDED: u32 = STAT_BASE + 7;
/// Number of slots in [`MAP_COUNTERS`].
pub const COUNTER_SLOTS: u32 = STAT_BASE + 8;

/// Counter slot for a packet: `direction` is `DIR_*`, `reason` 0 for forwarded or a `DROP_*`.
#[inline(always)]
pub const fn counter_index(direction: u8, reason: u8) -> u32 {
    (direction as u32) * COUNTER_REASONS + reason as u32
}

// ---------------------------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------------------------

/// Event kind: a drop (Hubble event type 1).
pub const EVENT_DROP: u8 = 1;
/// Event kind: a trace (Hubble event type 4): TCP flag transitions, flow end.
pub const EVENT_TRACE: u8 = 4;
/// Event kind: the policy verdict for a new flow (Hubble event type 5).
pub const EVENT_POLICY_VERDICT: u8 = 5;

/// The packet is a reply of a tracked connection.
pub const EV_F_REPLY: u8 = 1 << 0;
/// The packet created the conntrack entry.
pub const EV_F_NEW: u8 = 1 << 1;
/// The packet ended the connection (FIN/RST).
pub const EV_F_END: u8 = 1 << 2;
/// The verdict was recomputed because the policy revision changed.
pub const EV_F_REEVALUATED: u8 = 1 << 3;

/// Trace reasons (Hubble `TraceReason`).
pub const TRACE_NEW: u8 = 1;
/// Established connection.
pub const TRACE_ESTABLISHED: u8 = 2;
/// Reply of a connection.
pub const TRACE_REPLY: u8 = 3;

/// One datapath event in [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` at the event (monotonic, boot-relative).
    pub ts_ns: u64,
    /// `EVENT_*`.
    pub kind: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `DROP_*` (also set for AUDIT: the would-be reason).
    pub drop_reason: u8,
    /// `DIR_*` from the endpoint's point of view.
    pub direction: u8,
    /// 4 or 6; 0 when not IP.
    pub family: u8,
    /// IP protocol.
    pub protocol: u8,
    /// TCP flags of the packet (FIN=1, SYN=2, RST=4, PSH=8, ACK=16, URG=32, ECE=64, CWR=128).
    pub tcp_flags: u8,
    /// `EV_F_*` bits.
    pub flags: u8,
    /// `MATCH_*` of the deciding policy entry.
    pub match_type: u8,
    /// `TRACE_*`.
    pub trace_reason: u8,
    /// ICMP type (ICMP and ICMPv6 only).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Host-side ifindex the packet was seen on.
    pub ifindex: u32,
    /// Endpoint id.
    pub endpoint_id: u32,
    /// Identity of the source.
    pub src_identity: u32,
    /// Identity of the destination.
    pub dst_identity: u32,
    /// Rule origin index of the deciding policy entry (0: none).
    pub rule_id: u32,
    /// Packet length in bytes.
    pub pkt_len: u32,
    /// Source address (network byte order words; IPv4 in the first).
    pub saddr: [u32; 4],
    /// Destination address.
    pub daddr: [u32; 4],
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Reserved, zero (keeps the size a multiple of 8 with no implicit tail padding).
    pub pad: [u32; 2],
}

/// Size of a [`FlowEvent`] in bytes.
pub const FLOW_EVENT_SIZE: usize = core::mem::size_of::<FlowEvent>();

/// The record of an IPv4 event in [`MAP_EVENTS`]: a [`FlowEvent`] with 4-byte addresses and no
/// padding, 56 bytes, so that with the ring buffer's 8-byte header a record is one 64-byte cache
/// line (a [`FlowEvent`] record is 96 bytes). The reader tells the two apart by the record's
/// length ([`FLOW_EVENT4_SIZE`]) and widens it ([`FlowEvent4::widen`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent4 {
    /// As [`FlowEvent::ts_ns`].
    pub ts_ns: u64,
    pub kind: u8,
    pub verdict: u8,
    pub drop_reason: u8,
    pub direction: u8,
    /// Always 4.
    pub family: u8,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub flags: u8,
    pub match_type: u8,
    pub trace_reason: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub rule_id: u32,
    pub pkt_len: u32,
    /// Source address (network byte order).
    pub saddr: u32,
    /// Destination address (network byte order).
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

/// Size of a [`FlowEvent4`] in bytes.
pub const FLOW_EVENT4_SIZE: usize = core::mem::size_of::<FlowEvent4>();

impl FlowEvent4 {
    /// The same event as a [`FlowEvent`].
    pub fn widen(&self) -> FlowEvent {
        FlowEvent {
            ts_ns: self.ts_ns,
            kind: self.kind,
            verdict: self.verdict,
            drop_reason: self.drop_reason,
            direction: self.direction,
            family: self.family,
            protocol: self.protocol,
            tcp_flags: self.tcp_flags,
            flags: self.flags,
            match_type: self.match_type,
            trace_reason: self.trace_reason,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            ifindex: self.ifindex,
            endpoint_id: self.endpoint_id,
            src_identity: self.src_identity,
            dst_identity: self.dst_identity,
            rule_id: self.rule_id,
            pkt_len: self.pkt_len,
            saddr: [self.saddr, 0, 0, 0],
            daddr: [self.daddr, 0, 0, 0],
            sport: self.sport,
            dport: self.dport,
            pad: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], Copy, made only of integers and integer arrays,
    // and has no implicit padding (checked by the layout tests), so any byte pattern is valid.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::IpcacheEntry {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyEntry {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtKey4 {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::CtConn {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::FlowEvent4 {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EndpointInfo>(), 32);
        assert_eq!(size_of::<IpcacheEntry>(), 8);
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(size_of::<PolicyEntry>(), 16);
        assert_eq!(size_of::<CtKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<CtKey4>(), 4 + 4 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<CtEntry>(), 32);
        assert_eq!(size_of::<CtConn>(), 64);
        // The kernel's 48-byte LRU element header, key and value: two cache lines.
        assert_eq!(48 + size_of::<CtKey4>() + size_of::<CtConn>(), 128);
        assert_eq!(size_of::<FragKey>(), 16 + 16 + 4 + 1 + 1 + 2);
        assert_eq!(size_of::<FragPorts>(), 2 + 2 + 2 + 1 + 1);
        assert_eq!(size_of::<DatapathConfig>(), 24 + 24);
        assert_eq!(FLOW_EVENT_SIZE, 8 + 12 + 6 * 4 + 32 + 2 + 2 + 8);
        // One cache line with the ring buffer's 8-byte record header.
        assert_eq!(FLOW_EVENT4_SIZE, 8 + 12 + 6 * 4 + 8 + 2 + 2);
        assert_eq!(FLOW_EVENT4_SIZE + 8, 64);
        assert_eq!(POLICY_PREFIX_FULL_BITS as usize, size_of::<PolicyKey>() * 8);
    }

    #[test]
    fn both_directions_of_a_connection_have_one_conntrack_key() {
        let v4 = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        let v6 = |last: u32| [0x0db8_0120, 0, 0, last.to_be()];
        let cases = [
            (v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), 40_000u16, 80u16, 4u8),
            (v4([192, 168, 1, 9]), v4([10, 0, 0, 2]), 80, 40_000, 4),
            // Same address (a connection to itself): the ports decide.
            (v4([127, 0, 0, 1]), v4([127, 0, 0, 1]), 5000, 4000, 4),
            // IPv6 addresses that differ only in their last word.
            (v6(2), v6(1), 443, 50_000, 6),
        ];
        for (s, d, sp, dp, family) in cases {
            let (fwd, fwd_swapped) =
                CtKey::canonical(s, d, sp.to_be(), dp.to_be(), PROTO_TCP, family);
            let (rev, rev_swapped) =
                CtKey::canonical(d, s, dp.to_be(), sp.to_be(), PROTO_TCP, family);
            assert_eq!(fwd, rev, "{s:?}:{sp} <-> {d:?}:{dp}");
            assert_ne!(fwd_swapped, rev_swapped, "{s:?}:{sp} <-> {d:?}:{dp}");
            // The key is one of the two tuples, complete.
            let own = CtKey {
                saddr: s,
                daddr: d,
                sport_be: sp.to_be(),
                dport_be: dp.to_be(),
                protocol: PROTO_TCP,
                family,
                pad: 0,
            };
            let flipped = CtKey {
                saddr: d,
                daddr: s,
                sport_be: dp.to_be(),
                dport_be: sp.to_be(),
                ..own
            };
            assert_eq!(fwd, if fwd_swapped { flipped } else { own });
            if family == 4 {
                let (k4, swapped4) =
                    CtKey4::canonical(s[0], d[0], sp.to_be(), dp.to_be(), PROTO_TCP);
                assert_eq!((k4, swapped4), (CtKey4::of(&fwd), fwd_swapped));
            }
        }
        // A tuple equal to its reverse is never swapped.
        let a = v4([10, 0, 0, 1]);
        assert!(!CtKey::canonical(a, a, 7, 7, PROTO_UDP, 4).1);
    }

    #[test]
    fn each_endpoint_of_a_connection_has_its_own_side_in_both_directions() {
        let ip = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        let (client, server) = (ip([10, 0, 0, 9]), ip([10, 0, 0, 2]));
        let (cp, sp) = (40_000u16.to_be(), 80u16.to_be());
        // The request leaves the client (its egress hook) and arrives at the server (its
        // ingress hook); the reply the other way round.
        let (_, req) = CtKey::canonical(client, server, cp, sp, PROTO_TCP, 4);
        let (_, rep) = CtKey::canonical(server, client, sp, cp, PROTO_TCP, 4);
        let client_side = ct_side(DIR_EGRESS, req);
        assert_eq!(
            ct_side(DIR_INGRESS, rep),
            client_side,
            "reply at the client"
        );
        let server_side = ct_side(DIR_INGRESS, req);
        assert_eq!(
            ct_side(DIR_EGRESS, rep),
            server_side,
            "reply from the server"
        );
        assert_ne!(client_side, server_side);
        // Side 0 is the endpoint with the key's first address (here the server's, the lower).
        assert_eq!(server_side, 0);
    }

    #[test]
    fn conntrack_expiry_is_never_early_and_at_most_two_ticks_late() {
        let tick = 1u64 << CT_EXPIRY_TICK_SHIFT;
        for now in [
            0,
            1,
            tick - 1,
            tick,
            5 * tick + 12_345,
            3_600 * 1_000_000_000,
        ] {
            for lifetime in [1_000_000_000u64, 60_000_000_000, 21_600_000_000_000, tick] {
                let e = ct_expiry(now, lifetime);
                assert!(
                    !ct_expired(e, now + lifetime - 1),
                    "early: {now} + {lifetime}"
                );
                assert!(
                    ct_expired(e, now + lifetime + 2 * tick),
                    "late: {now} + {lifetime}"
                );
            }
        }
        // Across the wrap of the u32 tick counter.
        let near_wrap = (u64::from(u32::MAX) - 3) << CT_EXPIRY_TICK_SHIFT;
        let e = ct_expiry(near_wrap, 10 * tick);
        assert!(!ct_expired(e, near_wrap + 5 * tick));
        assert!(ct_expired(e, near_wrap + 12 * tick));
    }

    #[test]
    fn counter_slots_do_not_overlap_stats() {
        assert!(counter_index(DIR_EGRESS, 255) < STAT_BASE);
        const { assert!(STAT_CT_ENDED < COUNTER_SLOTS) };
    }
}
