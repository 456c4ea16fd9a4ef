//! Catalyst datapath: TC/TCX classifiers on the host side of every workload interface.
//!
//! `catalyst_from_endpoint` runs on the interface's ingress hook (packets the workload sends:
//! its egress), `catalyst_to_endpoint` on the egress hook (packets towards the workload: its
//! ingress). Both are thin wrappers around [`handle`], which returns an explicit verdict for
//! every path: pass (`TC_ACT_UNSPEC`, so TCX continues with the next program or passes) or
//! drop (`TC_ACT_SHOT`), each counted.
#![no_std]
#![no_main]

mod parse;
mod verdict;

use aya_ebpf::{
    bindings::{
        BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use catalyst_policy::datapath::{
    CFG_F_NO_DROP_EVENTS, CFG_F_NO_TRACE_EVENTS, CFG_F_NO_VERDICT_EVENTS, COUNTER_SLOTS,
    CT_EVENT_TICK_SHIFT, CT_F_CLOSING, CT_F_SEEN_REPLY, CT_F_SWAPPED, CT_TCP_FLAGS,
    CT_TCP_REPLY_SHIFT, CtConn, CtEntry, CtKey, CtKey4, CtTimeouts, DEFAULT_CONNTRACK_MAX,
    DEFAULT_CT_TIMEOUTS, DEFAULT_ENDPOINTS_MAX, DEFAULT_EVENTS_BYTES, DEFAULT_FRAGMENTS_MAX,
    DEFAULT_IPCACHE_MAX, DEFAULT_POLICY_MAX, DIR_EGRESS, DIR_INGRESS, DROP_CT_MAP_INSERTION_FAILED,
    DROP_FRAG_NOT_FOUND, DROP_INVALID_SOURCE_IP, DROP_NONE, DatapathConfig, EP_F_NO_SOURCE_CHECK,
    EV_F_END, EV_F_NEW, EV_F_REEVALUATED, EV_F_REPLY, EVENT_DROP, EVENT_POLICY_VERDICT,
    EVENT_TRACE, EndpointInfo, FlowEvent, FlowEvent4, FragKey, FragPorts, IpcacheEntry, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP, PolicyEntry, PolicyKey, STAT_AUDIT, STAT_CT_CREATED, STAT_CT_ENDED,
    STAT_CT_REEVALUATED, STAT_EVENTS_LOST, STAT_EVENTS_SENT, STAT_NO_ENDPOINT, STAT_NOT_POLICED,
    TRACE_ESTABLISHED, TRACE_NEW, TRACE_REPLY, VERDICT_AUDIT, VERDICT_DROPPED, counter_index,
    ct_expired, ct_expiry, ct_side,
};

use crate::{
    parse::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, PULL_LEN, Packet, Parsed},
    verdict::Decision,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NS_PER_S: u64 = 1_000_000_000;

#[map(name = "CATALYST_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(DEFAULT_ENDPOINTS_MAX, 0);
#[map(name = "CATALYST_IPCACHE4")]
static IPCACHE4: LpmTrie<[u8; 4], IpcacheEntry> = LpmTrie::pinned(DEFAULT_IPCACHE_MAX, 0);
#[map(name = "CATALYST_IPCACHE6")]
static IPCACHE6: LpmTrie<[u8; 16], IpcacheEntry> = LpmTrie::pinned(DEFAULT_IPCACHE_MAX, 0);
#[map(name = "CATALYST_IPHOST4")]
static IPHOST4: HashMap<u32, IpcacheEntry> =
    HashMap::pinned(DEFAULT_IPCACHE_MAX, BPF_F_NO_PREALLOC);
#[map(name = "CATALYST_IPHOST6")]
static IPHOST6: HashMap<[u32; 4], IpcacheEntry> =
    HashMap::pinned(DEFAULT_IPCACHE_MAX, BPF_F_NO_PREALLOC);
#[map(name = "CATALYST_POLICY")]
static POLICY: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(DEFAULT_POLICY_MAX, 0);
#[map(name = "CATALYST_POLICYX")]
static POLICY_EXACT: HashMap<PolicyKey, PolicyEntry> =
    HashMap::pinned(DEFAULT_POLICY_MAX, BPF_F_NO_PREALLOC);
// Per-CPU LRU lists (BPF_F_NO_COMMON_LRU): inserts of new connections do not contend on one
// global LRU lock. IPv4 connections have their own table with a 16-byte key: every packet hashes
// and compares its key, and that is most of an established packet's cost.
#[map(name = "CATALYST_CT4")]
static CONNTRACK4: LruHashMap<CtKey4, CtConn> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_MAX, BPF_F_NO_COMMON_LRU);
#[map(name = "CATALYST_CT")]
static CONNTRACK6: LruHashMap<CtKey, CtConn> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_MAX, BPF_F_NO_COMMON_LRU);
/// Where a new connection's element is put together before its insert (its 64 bytes would not
/// fit on the program's stack beside the rest). Holds nothing between packets; not pinned.
#[map(name = "CATALYST_CT_NEW")]
static CT_SCRATCH: PerCpuArray<CtConn> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "CATALYST_CONFIG")]
static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);
#[map(name = "CATALYST_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);
#[map(name = "CATALYST_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(DEFAULT_EVENTS_BYTES, 0);
#[map(name = "CATALYST_FRAGS")]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(DEFAULT_FRAGMENTS_MAX, 0);

/// Packets leaving the workload (the host-side interface's ingress hook).
#[classifier]
pub fn catalyst_from_endpoint(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_EGRESS)
}

/// Packets towards the workload (the host-side interface's egress hook).
#[classifier]
pub fn catalyst_to_endpoint(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_INGRESS)
}

const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC at tick resolution: the one clock read of a packet's conntrack work
/// (expiry, event aggregation), much cheaper than [`now_ns`], which only events use.
#[inline(always)]
fn coarse_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The tick of [`CtEntry::last_event`] at `now` (coarse clock, nanoseconds).
#[inline(always)]
fn event_tick(now: u64) -> u32 {
    (now >> CT_EVENT_TICK_SHIFT) as u32
}

/// Idle lifetime of a connection after a packet, by protocol and state (as Cilium: a TCP
/// packet with SYN gets the SYN timeout, a closing connection the closing one).
#[inline(always)]
fn lifetime_ns(flags: u8, protocol: u8, tcp_flags: u8, t: &CtTimeouts) -> u64 {
    let s = if protocol == PROTO_TCP {
        if flags & CT_F_CLOSING != 0 {
            t.tcp_closing_s
        } else if tcp_flags & TCP_SYN != 0 {
            t.tcp_syn_s
        } else {
            t.tcp_established_s
        }
    } else if protocol == PROTO_UDP {
        t.udp_s
    } else {
        t.other_s
    };
    u64::from(s) * NS_PER_S
}

#[inline(always)]
fn handle(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Headers must be in the linear part for direct packet access; pull them in when the skb
    // is non-linear (rare on veth). A failed pull shows up as a parse drop below.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < PULL_LEN && ctx.len() > linear {
        let want = if ctx.len() < PULL_LEN {
            ctx.len()
        } else {
            PULL_LEN
        };
        let _ = ctx.pull_data(want);
    }
    match parse::parse(ctx) {
        Ok(Parsed::NotPoliced) => {
            count(STAT_NOT_POLICED);
            PASS
        }
        Ok(Parsed::Ip(mut pkt)) => {
            if pkt.frag != FRAG_NONE && !fragment(&mut pkt) {
                // A later fragment of a datagram whose first fragment was not seen: nothing to
                // attribute it to.
                let Some(ep) = endpoint(ifindex) else {
                    count(STAT_NO_ENDPOINT);
                    return PASS;
                };
                count(counter_index(dir, DROP_FRAG_NOT_FOUND));
                emit_unattributed(ctx, dir, ifindex, &ep, DROP_FRAG_NOT_FOUND, Some(&pkt));
                return DROP;
            }
            handle_ip(ctx, dir, ifindex, &pkt)
        }
        Err(reason) => {
            let Some(ep) = endpoint(ifindex) else {
                count(STAT_NO_ENDPOINT);
                return PASS;
            };
            count(counter_index(dir, reason));
            // Malformed packets are reported like other drops, without a flow to aggregate on.
            emit_unattributed(ctx, dir, ifindex, &ep, reason, None);
            DROP
        }
    }
}

/// The endpoint of `ifindex`. Looked up only off the established fast path: a conntrack hit
/// under the current policy revision needs nothing else. (Removing an endpoint bumps the
/// revision, so its connections come through here on their next packet.)
#[inline(always)]
fn endpoint(ifindex: u32) -> Option<EndpointInfo> {
    // SAFETY: map value pointer returned by a successful lookup, copied out at once.
    ENDPOINTS.get_ptr(ifindex).map(|p| unsafe { *p })
}

#[inline(always)]
fn config() -> DatapathConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => DatapathConfig {
            policy_revision: 0,
            flags: 0,
            event_interval_ns: 0,
            schema: 0,
            pad: 0,
            ct_timeouts: DEFAULT_CT_TIMEOUTS,
        },
    }
}

#[inline(always)]
fn handle_ip(ctx: &TcContext, dir: u8, ifindex: u32, pkt: &Packet) -> i32 {
    if pkt.icmp_error
        && related(ifindex, pkt)
        && (dir != DIR_EGRESS
            || endpoint(ifindex).is_none_or(|ep| source_ok(&ep, pkt.family, &pkt.saddr)))
    {
        // An ICMP error about a connection this endpoint has (path MTU discovery, unreachable,
        // time exceeded) belongs to that connection: it passes as related, like its replies.
        // One the workload sends from a foreign source goes on to the source check below.
        count(counter_index(dir, DROP_NONE));
        return PASS;
    }
    let cfg = config();
    // One key for both directions: one lookup finds the connection of a reply too.
    if pkt.family == 4 {
        let (key, swapped) = CtKey4::canonical(
            pkt.saddr[0],
            pkt.daddr[0],
            pkt.ct_sport_be,
            pkt.ct_dport_be,
            pkt.protocol,
        );
        track(ctx, dir, ifindex, pkt, &cfg, &CONNTRACK4, &key, swapped)
    } else {
        let (key, swapped) = CtKey::canonical(
            pkt.saddr,
            pkt.daddr,
            pkt.ct_sport_be,
            pkt.ct_dport_be,
            pkt.protocol,
            pkt.family,
        );
        track(ctx, dir, ifindex, pkt, &cfg, &CONNTRACK6, &key, swapped)
    }
}

/// The packet's connection in `map` under `key` (`swapped`: the packet's tuple was reversed to
/// make it): the verdict cached on this endpoint's side of a known connection, or a new one
/// (a new element, or this endpoint's side of an element the other endpoint made).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined hot path, one instance per address family"
)]
fn track<K>(
    ctx: &TcContext,
    dir: u8,
    ifindex: u32,
    pkt: &Packet,
    cfg: &DatapathConfig,
    map: &LruHashMap<K, CtConn>,
    key: &K,
    swapped: bool,
) -> i32 {
    let syn_only = pkt.protocol == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let side = ct_side(dir, swapped);
    let now = coarse_ns();
    // Unknown connection: a new element. Known: this endpoint's side, unless it is new.
    let mut at = NewFlowAt::Insert(map, key, side);
    if let Some(c) = map.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup; LRU elements stay valid for this program run.
        let c = unsafe { &mut *c };
        let e = if side == 0 {
            &mut c.sides[0]
        } else {
            &mut c.sides[1]
        };
        let mine = e.ifindex == ifindex;
        if mine && !ct_expired(e.expires, now) && !(syn_only && e.flags & CT_F_CLOSING != 0) {
            return established(ctx, dir, ifindex, pkt, cfg, e, swapped, now);
        }
        // This endpoint's side is new: the connection is known from its other end only (a
        // workload of this node whose hook saw it first), or this endpoint's connection is over
        // (idle past its timeout, or a new SYN on the tuple of a closing one) and this packet
        // starts a new one, evaluated against the policy in force.
        if mine {
            count(STAT_CT_ENDED);
        }
        at = NewFlowAt::Side(e);
    }
    let Some(ep) = endpoint(ifindex) else {
        // Without an endpoint an ended side of this interface is freed.
        if let NewFlowAt::Side(e) = at
            && e.ifindex == ifindex
        {
            e.ifindex = 0;
        }
        count(STAT_NO_ENDPOINT);
        return PASS;
    };
    new_flow(ctx, dir, ifindex, &ep, pkt, at, swapped, cfg, now)
}

/// A packet of a connection this endpoint's side knows: the cached verdict (re-evaluated after
/// a policy change), state transitions and their events, the side's expiry.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined hot path, the rest of track"
)]
fn established(
    ctx: &TcContext,
    dir: u8,
    ifindex: u32,
    pkt: &Packet,
    cfg: &DatapathConfig,
    e: &mut CtEntry,
    swapped: bool,
    now: u64,
) -> i32 {
    let reply = (e.flags & CT_F_SWAPPED != 0) != swapped;

    let mut ev_flags = if reply { EV_F_REPLY } else { 0 };
    if e.revision != cfg.policy_revision {
        // Policy changed since the verdict was cached: re-evaluate the connection in its
        // original direction (revocation is prompt; the fast path stays one lookup).
        let Some(ep) = endpoint(ifindex) else {
            // The interface is no longer an endpoint: stop enforcing its connections.
            count(STAT_NO_ENDPOINT);
            return PASS;
        };
        let (peer, peer_family) = original_peer(e, pkt, reply);
        let mut d = verdict::decide(
            &ep,
            e.direction,
            &peer,
            peer_family,
            pkt.protocol,
            e.policy_port,
            cfg,
        );
        // The endpoint's address may have changed: its connections keep passing only from its
        // current address.
        let own = if reply { &pkt.daddr } else { &pkt.saddr };
        if e.direction == DIR_EGRESS && !source_ok(&ep, pkt.family, own) {
            d.verdict = VERDICT_DROPPED;
            d.reason = DROP_INVALID_SOURCE_IP;
            d.audit = false;
        }
        let changed = e.verdict != d.verdict;
        store_decision(e, &d, cfg.policy_revision);
        count(STAT_CT_REEVALUATED);
        if changed {
            ev_flags |= EV_F_REEVALUATED;
            let kind = if d.verdict == VERDICT_DROPPED {
                EVENT_DROP
            } else {
                EVENT_POLICY_VERDICT
            };
            emit(
                ctx,
                kind,
                dir,
                ifindex,
                &ep,
                pkt,
                e,
                ev_flags,
                TRACE_ESTABLISHED,
            );
            e.last_event = event_tick(now);
        }
    }
    let first_reply = reply && e.flags & CT_F_SEEN_REPLY == 0;
    if first_reply {
        e.flags |= CT_F_SEEN_REPLY;
    }

    let verdict = e.verdict;
    if verdict == VERDICT_DROPPED {
        count(counter_index(dir, e.drop_reason));
        e.expires = ct_expiry(
            now,
            lifetime_ns(e.flags, pkt.protocol, pkt.tcp_flags, &cfg.ct_timeouts),
        );
        let tick = event_tick(now);
        if u64::from(tick.wrapping_sub(e.last_event)) << CT_EVENT_TICK_SHIFT
            >= cfg.event_interval_ns
        {
            e.last_event = tick;
            let trace = if reply {
                TRACE_REPLY
            } else {
                TRACE_ESTABLISHED
            };
            if let Some(ep) = endpoint(ifindex) {
                emit(ctx, EVENT_DROP, dir, ifindex, &ep, pkt, e, ev_flags, trace);
            }
        }
        return DROP;
    }

    if pkt.protocol == PROTO_TCP {
        let shift = if reply { CT_TCP_REPLY_SHIFT } else { 0 };
        let seen = (e.tcp_flags_seen >> shift) & CT_TCP_FLAGS;
        let new_bits = pkt.tcp_flags & CT_TCP_FLAGS & !seen;
        // Aggregation: report only the connection-state transitions (SYN, FIN, RST seen for the
        // first time in a direction), like Hubble's medium monitor aggregation.
        if new_bits != 0 {
            e.tcp_flags_seen |= new_bits << shift;
            if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                e.flags |= CT_F_CLOSING;
                ev_flags |= EV_F_END;
            }
            let trace = if reply {
                TRACE_REPLY
            } else {
                TRACE_ESTABLISHED
            };
            if let Some(ep) = endpoint(ifindex) {
                emit(ctx, EVENT_TRACE, dir, ifindex, &ep, pkt, e, ev_flags, trace);
            }
        }
    } else if first_reply {
        // First reply of a non-TCP flow: one trace event so replies are visible.
        if let Some(ep) = endpoint(ifindex) {
            emit(
                ctx,
                EVENT_TRACE,
                dir,
                ifindex,
                &ep,
                pkt,
                e,
                ev_flags,
                TRACE_REPLY,
            );
        }
    }
    e.expires = ct_expiry(
        now,
        lifetime_ns(e.flags, pkt.protocol, pkt.tcp_flags, &cfg.ct_timeouts),
    );
    if verdict == VERDICT_AUDIT {
        count(STAT_AUDIT);
    }
    count(counter_index(dir, DROP_NONE));
    PASS
}

/// Fragment tracking (as Cilium's): a first fragment records its L4 ports under the datagram's
/// identity; a later fragment, which has no L4 header, takes them from there and is then handled
/// like any packet of its flow (conntrack, policy), so the fragments of an allowed datagram pass
/// and those of a denied one are dropped. Returns false for a later fragment whose first
/// fragment is unknown.
#[inline(always)]
fn fragment(pkt: &mut Packet) -> bool {
    let key = FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.frag_id,
        protocol: pkt.protocol,
        family: pkt.family,
        pad: 0,
    };
    if pkt.frag == FRAG_FIRST {
        let ports = FragPorts {
            sport_be: pkt.ct_sport_be,
            dport_be: pkt.ct_dport_be,
            policy_port: pkt.policy_port,
            icmp_type: pkt.icmp_type,
            icmp_code: pkt.icmp_code,
        };
        // A full table evicts the least recently used datagram (LRU map).
        let _ = FRAGMENTS.insert(&key, &ports, 0);
        return true;
    }
    if pkt.frag != FRAG_LATER {
        return true;
    }
    // SAFETY: pointer from a successful lookup, copied out at once.
    let Some(ports) = FRAGMENTS.get_ptr(&key).map(|p| unsafe { *p }) else {
        return false;
    };
    pkt.ct_sport_be = ports.sport_be;
    pkt.ct_dport_be = ports.dport_be;
    pkt.policy_port = ports.policy_port;
    pkt.icmp_type = ports.icmp_type;
    pkt.icmp_code = ports.icmp_code;
    let ported = matches!(pkt.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP);
    if ported {
        pkt.sport = u16::from_be(ports.sport_be);
        pkt.dport = u16::from_be(ports.dport_be);
    }
    true
}

/// Whether the packet an ICMP error quotes belongs to a tracked connection of `ifindex` that
/// is not dropped on the endpoint's side (the quoted packet may be the connection's original or
/// reply direction: both have the one key).
#[inline(always)]
fn related(ifindex: u32, pkt: &Packet) -> bool {
    let found = if pkt.family == 4 {
        let (key, _) = CtKey4::canonical(
            pkt.inner.saddr[0],
            pkt.inner.daddr[0],
            pkt.inner.sport_be,
            pkt.inner.dport_be,
            pkt.inner.protocol,
        );
        CONNTRACK4.get_ptr(&key)
    } else {
        let (key, _) = CtKey::canonical(
            pkt.inner.saddr,
            pkt.inner.daddr,
            pkt.inner.sport_be,
            pkt.inner.dport_be,
            pkt.inner.protocol,
            pkt.family,
        );
        CONNTRACK6.get_ptr(&key)
    };
    // SAFETY: pointer from a successful lookup, read at once.
    found.is_some_and(|c| {
        let sides = unsafe { &(*c).sides };
        (sides[0].ifindex == ifindex && sides[0].verdict != VERDICT_DROPPED)
            || (sides[1].ifindex == ifindex && sides[1].verdict != VERDICT_DROPPED)
    })
}

/// Whether `saddr` is an address the endpoint may send from (its own, or any when it opted
/// out of the source check).
#[inline(always)]
fn source_ok(ep: &EndpointInfo, family: u8, saddr: &[u32; 4]) -> bool {
    if ep.flags & EP_F_NO_SOURCE_CHECK != 0 {
        return true;
    }
    if family == 4 {
        ep.ipv4 != 0 && saddr[0] == ep.ipv4
    } else {
        let own = &ep.ipv6;
        (own[0] | own[1] | own[2] | own[3]) != 0
            && saddr[0] == own[0]
            && saddr[1] == own[1]
            && saddr[2] == own[2]
            && saddr[3] == own[3]
    }
}

/// The peer of the connection's original packet, from the current packet.
#[inline(always)]
fn original_peer(e: &CtEntry, pkt: &Packet, reply: bool) -> ([u32; 4], u8) {
    // Original packet: (s, d) = reply ? (pkt.d, pkt.s) : (pkt.s, pkt.d).
    // Its peer is the destination for egress connections, the source for ingress ones.
    let (osrc, odst) = if reply {
        (pkt.daddr, pkt.saddr)
    } else {
        (pkt.saddr, pkt.daddr)
    };
    let peer = if e.direction == DIR_EGRESS {
        odst
    } else {
        osrc
    };
    (peer, pkt.family)
}

#[inline(always)]
fn store_decision(e: &mut CtEntry, d: &Decision, revision: u32) {
    e.revision = revision;
    e.verdict = d.verdict;
    e.drop_reason = d.reason;
    e.rule_id = d.rule_id;
    e.match_type = d.match_type;
    e.peer_identity = d.peer_identity;
}

/// The peer of a connection seen at hook direction `dir`: the destination leaving the endpoint,
/// the source arriving at it.
#[inline(always)]
fn flow_peer(dir: u8, pkt: &Packet) -> [u32; 4] {
    if dir == DIR_EGRESS {
        pkt.daddr
    } else {
        pkt.saddr
    }
}

/// Where a new connection's side goes.
enum NewFlowAt<'a, K> {
    /// A new element under the key, with this side (`ct_side`) filled and the other unused.
    Insert(&'a LruHashMap<K, CtConn>, &'a K, usize),
    /// This endpoint's side of an element found (the other endpoint's, or an expired one).
    Side(&'a mut CtEntry),
}

/// Inserts a connection with only `side` in use; when the other endpoint's hook inserted it
/// meanwhile (on another CPU), fills `side` of that one. False when the table refused.
#[inline(always)]
fn insert_conn<K>(map: &LruHashMap<K, CtConn>, key: &K, side: usize, e: &CtEntry) -> bool {
    let Some(c) = CT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch slot, no concurrent user on this CPU.
    let c = unsafe { &mut *c };
    // The other side unused (interface 0) and zero: nothing of an earlier connection.
    if side == 0 {
        c.sides[0] = *e;
        c.sides[1] = CtEntry::default();
    } else {
        c.sides[0] = CtEntry::default();
        c.sides[1] = *e;
    }
    if map.insert(key, &*c, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    let Some(found) = map.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup; LRU elements stay valid for this program run.
    let found = unsafe { &mut *found };
    if side == 0 {
        found.sides[0] = *e;
    } else {
        found.sides[1] = *e;
    }
    true
}

/// A new connection (or this endpoint's new side of one): source check, the policy decision,
/// the conntrack side (at `at`, with `swapped` recorded) and its event.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined hot path; a struct would cost stack"
)]
fn new_flow<K>(
    ctx: &TcContext,
    dir: u8,
    ifindex: u32,
    ep: &EndpointInfo,
    pkt: &Packet,
    at: NewFlowAt<'_, K>,
    swapped: bool,
    cfg: &DatapathConfig,
    now: u64,
) -> i32 {
    let peer = flow_peer(dir, pkt);
    if dir == DIR_EGRESS && !source_ok(ep, pkt.family, &pkt.saddr) {
        // A spoofed source creates no conntrack entry (it must not fill the table).
        count(counter_index(dir, DROP_INVALID_SOURCE_IP));
        let e = CtEntry {
            verdict: VERDICT_DROPPED,
            drop_reason: DROP_INVALID_SOURCE_IP,
            direction: dir,
            peer_identity: verdict::peer_identity(&peer, pkt.family),
            ..CtEntry::default()
        };
        emit(
            ctx, EVENT_DROP, dir, ifindex, ep, pkt, &e, EV_F_NEW, TRACE_NEW,
        );
        return DROP;
    }
    let d = verdict::decide(
        ep,
        dir,
        &peer,
        pkt.family,
        pkt.protocol,
        pkt.policy_port,
        cfg,
    );
    let mut e = CtEntry {
        ifindex,
        revision: 0,
        verdict: 0,
        drop_reason: 0,
        rule_id: 0,
        match_type: 0,
        direction: dir,
        peer_identity: 0,
        flags: if swapped { CT_F_SWAPPED } else { 0 },
        tcp_flags_seen: pkt.tcp_flags & CT_TCP_FLAGS,
        policy_port: pkt.policy_port,
        last_event: event_tick(now),
        expires: 0,
    };
    if pkt.protocol == PROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        e.flags |= CT_F_CLOSING;
    }
    e.expires = ct_expiry(
        now,
        lifetime_ns(e.flags, pkt.protocol, pkt.tcp_flags, &cfg.ct_timeouts),
    );
    store_decision(&mut e, &d, cfg.policy_revision);
    let stored = match at {
        NewFlowAt::Insert(map, key, side) => insert_conn(map, key, side, &e),
        NewFlowAt::Side(side) => {
            *side = e;
            true
        }
    };
    if !stored {
        count(counter_index(dir, DROP_CT_MAP_INSERTION_FAILED));
        e.verdict = VERDICT_DROPPED;
        e.drop_reason = DROP_CT_MAP_INSERTION_FAILED;
        emit(
            ctx, EVENT_DROP, dir, ifindex, ep, pkt, &e, EV_F_NEW, TRACE_NEW,
        );
        return DROP;
    }
    count(STAT_CT_CREATED);
    if d.verdict == VERDICT_DROPPED {
        count(counter_index(dir, d.reason));
        emit(
            ctx, EVENT_DROP, dir, ifindex, ep, pkt, &e, EV_F_NEW, TRACE_NEW,
        );
        return DROP;
    }
    emit(
        ctx,
        EVENT_POLICY_VERDICT,
        dir,
        ifindex,
        ep,
        pkt,
        &e,
        EV_F_NEW,
        TRACE_NEW,
    );
    if d.audit {
        count(STAT_AUDIT);
    }
    count(counter_index(dir, DROP_NONE));
    PASS
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; fills one ring-buffer record"
)]
fn emit(
    ctx: &TcContext,
    kind: u8,
    dir: u8,
    ifindex: u32,
    ep: &EndpointInfo,
    pkt: &Packet,
    e: &CtEntry,
    flags: u8,
    trace_reason: u8,
) {
    if !event_enabled(kind) {
        return;
    }
    // Identities follow the packet: leaving the endpoint (egress hook direction) its source is
    // the endpoint, replies included.
    let (src_identity, dst_identity) = if dir == DIR_EGRESS {
        (ep.identity, e.peer_identity)
    } else {
        (e.peer_identity, ep.identity)
    };
    // The two records differ only in the width of the addresses (and the full one's padding).
    macro_rules! record {
        ($ty:ident { family: $family:expr, saddr: $saddr:expr, daddr: $daddr:expr $(, $field:ident: $val:expr)* }) => {
            $ty {
                ts_ns: now_ns(),
                kind,
                verdict: e.verdict,
                drop_reason: e.drop_reason,
                direction: dir,
                family: $family,
                protocol: pkt.protocol,
                tcp_flags: pkt.tcp_flags,
                flags,
                match_type: e.match_type,
                trace_reason,
                icmp_type: pkt.icmp_type,
                icmp_code: pkt.icmp_code,
                ifindex,
                endpoint_id: ep.endpoint_id,
                src_identity,
                dst_identity,
                rule_id: e.rule_id,
                pkt_len: ctx.len(),
                saddr: $saddr,
                daddr: $daddr,
                sport: pkt.sport,
                dport: pkt.dport,
                $($field: $val,)*
            }
        };
    }
    if pkt.family == 4 {
        // The compact IPv4 record: with its header, one cache line of the ring.
        let Some(mut slot) = EVENTS.reserve::<FlowEvent4>(0) else {
            count(STAT_EVENTS_LOST);
            return;
        };
        slot.write(record!(FlowEvent4 {
            family: 4,
            saddr: pkt.saddr[0],
            daddr: pkt.daddr[0]
        }));
        slot.submit(wakeup());
        count(STAT_EVENTS_SENT);
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(STAT_EVENTS_LOST);
        return;
    };
    slot.write(record!(FlowEvent {
        family: pkt.family,
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        pad: [0; 2]
    }));
    slot.submit(wakeup());
    count(STAT_EVENTS_SENT);
}

/// Whether events of `kind` are configured (`bpf_events` in the agent's configuration; all are
/// by default).
#[inline(always)]
fn event_enabled(kind: u8) -> bool {
    let off = match kind {
        EVENT_DROP => CFG_F_NO_DROP_EVENTS,
        EVENT_POLICY_VERDICT => CFG_F_NO_VERDICT_EVENTS,
        _ => CFG_F_NO_TRACE_EVENTS,
    };
    CONFIG.get(0).is_none_or(|c| c.flags & off == 0)
}

/// A drop event for a packet that belongs to no flow: malformed (no `pkt`), or a fragment
/// that cannot be attributed (addresses known, ports not).
#[inline(always)]
fn emit_unattributed(
    ctx: &TcContext,
    dir: u8,
    ifindex: u32,
    ep: &EndpointInfo,
    reason: u8,
    pkt: Option<&Packet>,
) {
    if !event_enabled(EVENT_DROP) {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(STAT_EVENTS_LOST);
        return;
    };
    let mut ev = FlowEvent {
        ts_ns: now_ns(),
        kind: EVENT_DROP,
        verdict: VERDICT_DROPPED,
        drop_reason: reason,
        direction: dir,
        ifindex,
        endpoint_id: ep.endpoint_id,
        pkt_len: ctx.len(),
        ..FlowEvent::default()
    };
    if dir == DIR_INGRESS {
        ev.dst_identity = ep.identity;
    } else {
        ev.src_identity = ep.identity;
    }
    if let Some(pkt) = pkt {
        ev.family = pkt.family;
        ev.protocol = pkt.protocol;
        ev.saddr = pkt.saddr;
        ev.daddr = pkt.daddr;
    }
    slot.write(ev);
    slot.submit(wakeup());
    count(STAT_EVENTS_SENT);
}

/// Wakeups of the agent's reader are batched: an event wakes it only when the data waiting in
/// the ring crosses an eighth of the ring; otherwise the reader drains the ring on its own timer
/// (`flow::reader`, every 10 ms). A wakeup per event cost a burst of new connections an
/// interrupt and a reader wakeup for every one of them (a wakeup is sent whenever the reader
/// had caught up); a wakeup per event above the mark would cost the same whenever the reader
/// falls behind. Records add at most `RECORD` bytes each (the compact IPv4 ones less), so a
/// window of two records above the mark sees every crossing, also with producers on several
/// CPUs.
#[inline(always)]
fn wakeup() -> u64 {
    const RECORD: u64 = core::mem::size_of::<FlowEvent>() as u64 + 8;
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let mark = EVENTS.query(u64::from(BPF_RB_RING_SIZE)) / 8;
    if waiting >= mark && waiting < mark + 2 * RECORD {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
