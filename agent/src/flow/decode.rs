//! Decoding of [`FlowEvent`]s and enrichment with what the agent knows (endpoints, identities,
//! the policies behind each rule id).

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, RwLock},
};

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, EV_F_REPLY, EVENT_DROP, EVENT_POLICY_VERDICT, FLOW_EVENT_SIZE,
    FLOW_EVENT4_SIZE, FlowEvent, FlowEvent4, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, TRACE_ESTABLISHED, TRACE_NEW, TRACE_REPLY, VERDICT_AUDIT, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};

use super::record::{EndpointRef, Flow, PolicyRefOut};

/// A local endpoint as flows show it.
#[derive(Debug, Clone, Default)]
pub struct EndpointMeta {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Host-side interface.
    pub interface: String,
    /// Workloads (controllers) the endpoint belongs to: `(name, kind)`.
    pub workloads: Vec<(String, String)>,
}

/// What enrichment needs; replaced as a whole on every policy or endpoint change.
#[derive(Debug, Clone, Default)]
pub struct EnrichState {
    /// Node name.
    pub node: String,
    /// Local endpoints by endpoint id.
    pub endpoints: BTreeMap<u32, EndpointMeta>,
    /// Identity → labels (`source:key=value`).
    pub identities: BTreeMap<u32, Vec<String>>,
    /// Rule id → policies.
    pub origins: Vec<Vec<PolicyRefOut>>,
    /// Interface names by ifindex.
    pub interfaces: BTreeMap<u32, String>,
    /// Local endpoint ids by address (to name the remote side of pod-to-pod flows).
    pub by_ip: BTreeMap<IpAddr, u32>,
    /// Cluster name (`Endpoint.cluster_name` of endpoints and identities of this cluster).
    pub cluster: String,
    /// Revision of the policy state (bumped by every [`Enricher::replace`]), reported in
    /// `Policy.revision`.
    pub revision: u64,
}

/// Shared, swappable enrichment state.
#[derive(Debug, Clone, Default)]
pub struct Enricher {
    state: Arc<RwLock<Arc<EnrichState>>>,
    clock_offset_ns: i128,
}

impl Enricher {
    /// A new enricher; computes the offset between the monotonic clock (what
    /// `bpf_ktime_get_ns` returns) and wall-clock time.
    pub fn new(state: EnrichState) -> Self {
        Self {
            state: Arc::new(RwLock::new(Arc::new(state))),
            clock_offset_ns: clock_offset_ns(),
        }
    }

    /// Replaces the state; its `revision` becomes one more than the previous state's.
    pub fn replace(&self, mut state: EnrichState) {
        let mut cur = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.revision = cur.revision.max(state.revision) + 1;
        *cur = Arc::new(state);
    }

    /// Current state.
    pub fn current(&self) -> Arc<EnrichState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Turns a raw event into a flow record.
    pub fn enrich(&self, ev: &FlowEvent) -> Flow {
        let st = self.current();
        enrich_with(&st, ev, self.wall_ns(ev))
    }

    /// Wall-clock time of an event, nanoseconds since the Unix epoch.
    pub fn wall_ns(&self, ev: &FlowEvent) -> i128 {
        i128::from(ev.ts_ns) + self.clock_offset_ns
    }
}

fn clock_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and writable timespec.
        unsafe { libc::clock_gettime(clock, &raw mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// Reads a [`FlowEvent`] from ring-buffer bytes: a record of [`FLOW_EVENT4_SIZE`] bytes is the
/// compact IPv4 form, widened; any other record at least [`FLOW_EVENT_SIZE`] long is a full
/// event (older programs wrote every event that way). `None` when the record is too short.
pub fn decode_event(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() == FLOW_EVENT4_SIZE {
        // SAFETY: FlowEvent4 is a repr(C) plain-old-data type (aya::Pod) of exactly this length;
        // read_unaligned copes with any alignment.
        let ev: FlowEvent4 = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        return Some(ev.widen());
    }
    if bytes.len() < FLOW_EVENT_SIZE {
        return None;
    }
    // SAFETY: FlowEvent is a repr(C) plain-old-data type (aya::Pod); the length is checked and
    // read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// Hubble's name for a drop reason.
pub fn drop_reason_name(code: u8) -> &'static str {
    match code {
        0 => "",
        132 => "INVALID_SOURCE_IP",
        133 => "POLICY_DENIED",
        134 => "INVALID_PACKET_DROPPED",
        135 => "CT_TRUNCATED_OR_INVALID_HEADER",
        137 => "CT_UNKNOWN_L4_PROTOCOL",
        139 => "UNSUPPORTED_L3_PROTOCOL",
        142 => "UNKNOWN_L4_PROTOCOL",
        155 => "CT_MAP_INSERTION_FAILED",
        156 => "INVALID_IPV6_EXTENSION_HEADER",
        157 => "IP_FRAGMENTATION_NOT_SUPPORTED",
        175 => "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
        165 => "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
        171 => "INVALID_IDENTITY",
        181 => "POLICY_DENY",
        203 => "DROP_EP_NOT_READY",
        _ => "DROP_REASON_UNKNOWN",
    }
}

fn addr(family: u8, words: [u32; 4]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        6 => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn tcp_flag_names(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn protocol_name(p: u8) -> Cow<'static, str> {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        PROTO_ICMP => "ICMPv4".into(),
        PROTO_ICMPV6 => "ICMPv6".into(),
        0 => "".into(),
        n => n.to_string().into(),
    }
}

fn icmp_summary(proto: u8, ty: u8, code: u8) -> String {
    let name = match (proto, ty) {
        (PROTO_ICMP, 8) | (PROTO_ICMPV6, 128) => "EchoRequest".to_owned(),
        (PROTO_ICMP, 0) | (PROTO_ICMPV6, 129) => "EchoReply".to_owned(),
        (PROTO_ICMP, 3) | (PROTO_ICMPV6, 1) => format!("DestinationUnreachable({code})"),
        _ => format!("type {ty} code {code}"),
    };
    format!("{} {name}", protocol_name(proto))
}

fn endpoint_ref(
    st: &EnrichState,
    identity: u32,
    local_id: Option<u32>,
    ip: Option<IpAddr>,
) -> EndpointRef {
    let local_id = local_id.or_else(|| ip.and_then(|a| st.by_ip.get(&a).copied()));
    let labels = st.identities.get(&identity).cloned().unwrap_or_default();
    // Reserved identities (world, host, …) below 256 belong to no cluster, as in Cilium.
    let cluster_name = if identity >= 256 || local_id.is_some() {
        st.cluster.clone()
    } else {
        String::new()
    };
    let mut r = EndpointRef {
        identity,
        labels,
        cluster_name,
        ..EndpointRef::default()
    };
    if let Some(id) = local_id
        && let Some(ep) = st.endpoints.get(&id)
    {
        r.id = id;
        r.namespace.clone_from(&ep.namespace);
        r.pod_name.clone_from(&ep.name);
        r.workloads.clone_from(&ep.workloads);
    } else if let Some(ns) = r
        .labels
        .iter()
        .find_map(|l| l.strip_prefix("k8s:io.kubernetes.pod.namespace="))
    {
        r.namespace = ns.to_owned();
    }
    r
}

/// An address as text; IPv4 without going through `fmt` (this runs for every flow read).
fn ip_string(a: IpAddr) -> String {
    let IpAddr::V4(v4) = a else {
        return a.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            s.push(char::from(b'0' + octet / 10 % 10));
        }
        s.push(char::from(b'0' + octet % 10));
    }
    s
}

/// Formats nanoseconds since the Unix epoch as RFC 3339 UTC with nanoseconds.
pub fn rfc3339_nanos(ns: i128) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    // Outside years -9999..=9999 (no flow has such a time) the nearest representable instant.
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or_else(|_| {
        if ns < 0 {
            time::PrimitiveDateTime::MIN.assume_utc()
        } else {
            time::PrimitiveDateTime::MAX.assume_utc()
        }
    });
    t.format(FORMAT).unwrap_or_default()
}

/// The policies that allowed or denied `ev`. As Hubble: the allowing policies go on
/// policy-verdict events of new connections only, the denying ones on policy-verdict and drop
/// events; trace events and replies carry none.
fn deciding_policies(
    st: &EnrichState,
    ev: &FlowEvent,
    reply: bool,
) -> (Vec<PolicyRefOut>, Vec<PolicyRefOut>) {
    if ev.rule_id == 0 || reply {
        return (Vec::new(), Vec::new());
    }
    let origins = || {
        st.origins
            .get(ev.rule_id as usize)
            .cloned()
            .unwrap_or_default()
    };
    if ev.drop_reason == 181 && ev.verdict != VERDICT_FORWARDED {
        if matches!(ev.kind, EVENT_DROP | EVENT_POLICY_VERDICT) {
            (Vec::new(), origins())
        } else {
            (Vec::new(), Vec::new())
        }
    } else if ev.kind == EVENT_POLICY_VERDICT {
        (origins(), Vec::new())
    } else {
        (Vec::new(), Vec::new())
    }
}

/// Builds the flow record of `ev` from enrichment state `st`.
pub fn enrich_with(st: &EnrichState, ev: &FlowEvent, wall_ns: i128) -> Flow {
    let reply = ev.flags & EV_F_REPLY != 0;
    // The local endpoint is the destination of ingress packets and the source of egress ones.
    let (src_local, dst_local) = match ev.direction {
        DIR_INGRESS => (None, Some(ev.endpoint_id)),
        DIR_EGRESS => (Some(ev.endpoint_id), None),
        _ => (None, None),
    };
    let saddr = addr(ev.family, ev.saddr);
    let daddr = addr(ev.family, ev.daddr);
    let source = endpoint_ref(st, ev.src_identity, src_local, saddr);
    let destination = endpoint_ref(st, ev.dst_identity, dst_local, daddr);
    let (allowed_by, denied_by) = deciding_policies(st, ev, reply);
    let tcp_flags = if ev.protocol == PROTO_TCP {
        tcp_flag_names(ev.tcp_flags)
    } else {
        String::new()
    };
    let summary = match ev.protocol {
        PROTO_TCP => format!("TCP Flags: {tcp_flags}"),
        PROTO_ICMP | PROTO_ICMPV6 => icmp_summary(ev.protocol, ev.icmp_type, ev.icmp_code),
        PROTO_UDP => "UDP".to_owned(),
        p => protocol_name(p).into_owned(),
    };
    let verdict = match ev.verdict {
        VERDICT_FORWARDED => "FORWARDED",
        VERDICT_DROPPED => "DROPPED",
        VERDICT_AUDIT => "AUDIT",
        _ => "VERDICT_UNKNOWN",
    };
    let event_type = match ev.kind {
        EVENT_DROP => "drop",
        EVENT_POLICY_VERDICT => "policy-verdict",
        _ => "trace",
    };
    let icmp =
        matches!(ev.protocol, PROTO_ICMP | PROTO_ICMPV6).then_some((ev.icmp_type, ev.icmp_code));
    Flow {
        time_ns: wall_ns,
        node_name: st.node.clone(),
        verdict,
        drop_reason: ev.drop_reason,
        drop_reason_desc: drop_reason_name(if ev.verdict == VERDICT_FORWARDED {
            0
        } else {
            ev.drop_reason
        }),
        event_type,
        traffic_direction: match ev.direction {
            DIR_INGRESS => "INGRESS",
            DIR_EGRESS => "EGRESS",
            _ => "TRAFFIC_DIRECTION_UNKNOWN",
        },
        is_reply: reply,
        trace_reason: match ev.trace_reason {
            TRACE_NEW => "NEW",
            TRACE_ESTABLISHED => "ESTABLISHED",
            TRACE_REPLY => "REPLY",
            _ => "TRACE_REASON_UNKNOWN",
        },
        ip_version: ev.family,
        source_ip: saddr.map(ip_string).unwrap_or_default(),
        destination_ip: daddr.map(ip_string).unwrap_or_default(),
        protocol: protocol_name(ev.protocol),
        source_port: if icmp.is_some() { 0 } else { ev.sport },
        destination_port: if icmp.is_some() { 0 } else { ev.dport },
        tcp_flags,
        icmp,
        source,
        destination,
        // Only policy-verdict events carry a match type (Hubble leaves it 0 elsewhere).
        policy_match_type: if ev.kind == EVENT_POLICY_VERDICT {
            ev.match_type
        } else {
            0
        },
        allowed_by,
        denied_by,
        policy_revision: st.revision,
        interface: st
            .interfaces
            .get(&ev.ifindex)
            .cloned()
            .unwrap_or_else(|| ev.ifindex.to_string()),
        summary,
        event: *ev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw bytes of a plain-old-data event as the ring buffer holds it.
    fn raw<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is one of the repr(C) event types, without padding; read as bytes.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn compact_ipv4_records_decode_as_the_full_event() {
        let full = FlowEvent {
            ts_ns: 123_456_789,
            kind: EVENT_POLICY_VERDICT,
            verdict: VERDICT_FORWARDED,
            direction: DIR_INGRESS,
            family: 4,
            protocol: PROTO_TCP,
            tcp_flags: 0x12,
            flags: EV_F_REPLY,
            match_type: 3,
            trace_reason: TRACE_REPLY,
            ifindex: 9,
            endpoint_id: 7,
            src_identity: 300,
            dst_identity: 301,
            rule_id: 2,
            pkt_len: 60,
            saddr: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            daddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            sport: 40000,
            dport: 80,
            ..FlowEvent::default()
        };
        let compact = FlowEvent4 {
            ts_ns: full.ts_ns,
            kind: full.kind,
            verdict: full.verdict,
            direction: full.direction,
            family: 4,
            protocol: full.protocol,
            tcp_flags: full.tcp_flags,
            flags: full.flags,
            match_type: full.match_type,
            trace_reason: full.trace_reason,
            ifindex: full.ifindex,
            endpoint_id: full.endpoint_id,
            src_identity: full.src_identity,
            dst_identity: full.dst_identity,
            rule_id: full.rule_id,
            pkt_len: full.pkt_len,
            saddr: full.saddr[0],
            daddr: full.daddr[0],
            sport: full.sport,
            dport: full.dport,
            ..FlowEvent4::default()
        };
        assert_eq!(decode_event(&raw(&compact)), Some(full));
        // Full records (IPv6, and every event of older programs) still decode; anything
        // shorter than a full event that is not exactly a compact one does not.
        assert_eq!(decode_event(&raw(&full)), Some(full));
        assert_eq!(decode_event(&raw(&compact)[..FLOW_EVENT4_SIZE - 1]), None);
        assert_eq!(decode_event(&raw(&full)[..FLOW_EVENT_SIZE - 1]), None);
    }

    #[test]
    fn ipv4_text_matches_display() {
        for a in ["0.0.0.0", "10.244.0.10", "192.168.100.255", "1.20.3.109"] {
            let ip: IpAddr = a.parse().expect("address");
            assert_eq!(ip_string(ip), a);
        }
        assert_eq!(ip_string("fd00::1".parse().expect("v6")), "fd00::1");
    }

    #[test]
    fn rfc3339_clamps_instants_beyond_year_9999() {
        // The hand-written arithmetic printed a five-digit year, which is not RFC 3339.
        assert_eq!(rfc3339_nanos(i128::MAX), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_795_651_200_000_000_123),
            "2026-11-26T00:00:00.000000123Z"
        );
    }

    #[test]
    fn drop_by_deny_rule_names_the_policy_and_reason() {
        let st = EnrichState {
            node: "n1".into(),
            endpoints: [(
                7,
                EndpointMeta {
                    name: "web".into(),
                    namespace: "shop".into(),
                    interface: "v7".into(),
                    workloads: vec![("web".into(), "Deployment".into())],
                },
            )]
            .into(),
            identities: [
                (300, vec!["k8s:app=web".into()]),
                (301, vec!["k8s:app=db".into()]),
            ]
            .into(),
            origins: vec![
                vec![],
                vec![PolicyRefOut {
                    name: "deny-db".into(),
                    namespace: "shop".into(),
                    kind: "CiliumNetworkPolicy".into(),
                }],
            ],
            interfaces: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            ..EnrichState::default()
        };
        let ev = FlowEvent {
            kind: EVENT_DROP,
            verdict: VERDICT_DROPPED,
            drop_reason: 181,
            direction: DIR_EGRESS,
            family: 4,
            protocol: PROTO_TCP,
            tcp_flags: 0x02,
            endpoint_id: 7,
            src_identity: 300,
            dst_identity: 301,
            rule_id: 1,
            saddr: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            daddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            sport: 40000,
            dport: 5432,
            ..FlowEvent::default()
        };
        let f = enrich_with(&st, &ev, 0);
        assert_eq!(f.verdict, "DROPPED");
        assert_eq!(f.drop_reason_desc, "POLICY_DENY");
        assert_eq!(f.denied_by[0].name, "deny-db");
        assert_eq!(f.source.pod_name, "web");
        assert_eq!(f.destination_ip, "10.0.0.2");
        assert_eq!(f.summary, "TCP Flags: SYN");
        assert!(
            f.compact()
                .contains("shop/web:40000 -> 10.0.0.2:5432 Policy denied by denylist DROPPED"),
            "{}",
            f.compact()
        );
    }
}
