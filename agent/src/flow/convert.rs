//! Conversion of enriched [`Flow`] records into Hubble's `flow.Flow` protobuf.

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, VERDICT_FORWARDED,
};

use super::record::{EndpointRef, Flow, PolicyRefOut};
use crate::api::flow as pb;

/// Name reported in `Flow.emitter`.
pub const EMITTER: &str = "catalyst-agent";

/// A protobuf timestamp from nanoseconds since the Unix epoch.
pub fn timestamp(ns: i128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        // rem_euclid of 1e9 always fits.
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// Nanoseconds since the Unix epoch of a protobuf timestamp.
pub fn timestamp_ns(ts: &prost_types::Timestamp) -> i128 {
    i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos)
}

fn endpoint(r: EndpointRef) -> pb::Endpoint {
    pb::Endpoint {
        id: r.id,
        identity: r.identity,
        namespace: r.namespace,
        labels: r.labels,
        pod_name: r.pod_name,
        workloads: r
            .workloads
            .into_iter()
            .map(|(name, kind)| pb::Workload { name, kind })
            .collect(),
        cluster_name: r.cluster_name,
    }
}

/// Cilium's policy labels: where the rule came from (`derived-from`), its name and namespace.
fn policy_labels(p: &PolicyRefOut) -> Vec<String> {
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={}", p.kind),
        format!("k8s:io.cilium.k8s.policy.name={}", p.name),
    ];
    if !p.namespace.is_empty() {
        labels.push(format!(
            "k8s:io.cilium.k8s.policy.namespace={}",
            p.namespace
        ));
    }
    labels
}

fn policies(refs: Vec<PolicyRefOut>, revision: u64) -> Vec<pb::Policy> {
    refs.into_iter()
        .map(|p| pb::Policy {
            labels: policy_labels(&p),
            name: p.name,
            namespace: p.namespace,
            revision,
            kind: p.kind,
        })
        .collect()
}

/// A stable, unique flow id in UUID form (version 8, RFC 9562 custom layout): a hash of the
/// node, the wall-clock time and the raw event, so every read of a ring entry gives the same
/// id and distinct events get distinct ids.
pub fn flow_uuid(node: &str, wall_ns: i128, ev: &catalyst_policy::datapath::FlowEvent) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(wall_ns.to_le_bytes());
    // SAFETY: FlowEvent is repr(C) plain old data with no padding (layout-tested in the
    // policy crate), so viewing it as bytes reads only initialised memory.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(ev).cast::<u8>(),
            std::mem::size_of::<catalyst_policy::datapath::FlowEvent>(),
        )
    };
    h.update(bytes);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = b.iter().fold(String::with_capacity(32), |mut acc, x| {
        use std::fmt::Write as _;
        let _ = write!(acc, "{x:02x}");
        acc
    });
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Cilium's trace sub-types (`pkg/monitor/api`): `to-endpoint` 0, `from-endpoint` 5.
pub const TRACE_TO_ENDPOINT: i32 = 0;
/// Trace sub-type of packets leaving the workload.
pub const TRACE_FROM_ENDPOINT: i32 = 5;

/// Hubble's TCP flag message from the wire bits (FIN=1, SYN=2, RST=4, PSH=8, ACK=16, URG=32,
/// ECE=64, CWR=128).
pub fn tcp_flags(bits: u8) -> pb::TcpFlags {
    pb::TcpFlags {
        fin: bits & 0x01 != 0,
        syn: bits & 0x02 != 0,
        rst: bits & 0x04 != 0,
        psh: bits & 0x08 != 0,
        ack: bits & 0x10 != 0,
        urg: bits & 0x20 != 0,
        ece: bits & 0x40 != 0,
        cwr: bits & 0x80 != 0,
        ns: false,
    }
}

fn layer4(ev: &catalyst_policy::datapath::FlowEvent) -> Option<pb::Layer4> {
    use pb::layer4::Protocol;
    let (sport, dport) = (u32::from(ev.sport), u32::from(ev.dport));
    let p = match ev.protocol {
        PROTO_TCP => Protocol::Tcp(pb::Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(tcp_flags(ev.tcp_flags)),
        }),
        PROTO_UDP => Protocol::Udp(pb::Udp {
            source_port: sport,
            destination_port: dport,
        }),
        PROTO_SCTP => Protocol::Sctp(pb::Sctp {
            source_port: sport,
            destination_port: dport,
        }),
        PROTO_ICMP => Protocol::IcmPv4(pb::IcmPv4 {
            r#type: ev.icmp_type.into(),
            code: ev.icmp_code.into(),
        }),
        PROTO_ICMPV6 => Protocol::IcmPv6(pb::IcmPv6 {
            r#type: ev.icmp_type.into(),
            code: ev.icmp_code.into(),
        }),
        _ => return None,
    };
    Some(pb::Layer4 { protocol: Some(p) })
}

/// Converts an enriched record (consumed: its strings move into the message).
#[expect(clippy::too_many_lines, reason = "one assignment per flow.Flow field")]
pub fn to_proto(flow: Flow) -> pb::Flow {
    let ev = flow.event;
    let verdict = match pb::Verdict::try_from(i32::from(ev.verdict)) {
        Ok(v) => v,
        Err(_) => pb::Verdict::Unknown,
    };
    // A forwarded flow has no drop reason even when the kernel kept the would-be one.
    let drop_reason = if ev.verdict == VERDICT_FORWARDED {
        0
    } else {
        i32::from(ev.drop_reason)
    };
    let direction = match ev.direction {
        DIR_INGRESS => pb::TrafficDirection::Ingress,
        DIR_EGRESS => pb::TrafficDirection::Egress,
        _ => pb::TrafficDirection::Unknown,
    };
    let event_type = match ev.kind {
        EVENT_DROP => pb::CiliumEventType {
            r#type: 1,
            sub_type: drop_reason,
        },
        EVENT_POLICY_VERDICT => pb::CiliumEventType {
            r#type: 5,
            sub_type: 0,
        },
        _ => pb::CiliumEventType {
            r#type: i32::from(EVENT_TRACE),
            sub_type: if ev.direction == DIR_EGRESS {
                TRACE_FROM_ENDPOINT
            } else {
                TRACE_TO_ENDPOINT
            },
        },
    };
    let observation = match (ev.kind, ev.direction) {
        (EVENT_TRACE, DIR_INGRESS) => pb::TraceObservationPoint::ToEndpoint,
        (EVENT_TRACE, DIR_EGRESS) => pb::TraceObservationPoint::FromEndpoint,
        _ => pb::TraceObservationPoint::UnknownPoint,
    };
    let ip = match ev.family {
        4 | 6 => Some(pb::Ip {
            source: flow.source_ip,
            destination: flow.destination_ip,
            ip_version: if ev.family == 4 {
                pb::IpVersion::IPv4
            } else {
                pb::IpVersion::IPv6
            }
            .into(),
            encrypted: false,
            source_xlated: String::new(),
        }),
        _ => None,
    };
    let (allowed, denied) = (
        policies(flow.allowed_by, flow.policy_revision),
        policies(flow.denied_by, flow.policy_revision),
    );
    let (
        mut egress_allowed_by,
        mut ingress_allowed_by,
        mut egress_denied_by,
        mut ingress_denied_by,
    ) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if direction == pb::TrafficDirection::Ingress {
        ingress_allowed_by = allowed;
        ingress_denied_by = denied;
    } else {
        egress_allowed_by = allowed;
        egress_denied_by = denied;
    }
    pb::Flow {
        time: Some(timestamp(flow.time_ns)),
        uuid: flow_uuid(&flow.node_name, flow.time_ns, &ev),
        emitter: Some(pb::Emitter {
            name: EMITTER.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
        verdict: verdict.into(),
        drop_reason_desc: drop_reason,
        ethernet: None,
        ip,
        l4: layer4(&ev),
        source: Some(endpoint(flow.source)),
        destination: Some(endpoint(flow.destination)),
        r#type: pb::FlowType::L3L4.into(),
        node_name: flow.node_name,
        node_labels: Vec::new(),
        source_names: Vec::new(),
        destination_names: Vec::new(),
        event_type: Some(event_type),
        source_service: None,
        destination_service: None,
        traffic_direction: direction.into(),
        policy_match_type: u32::from(flow.policy_match_type),
        trace_observation_point: observation.into(),
        trace_reason: i32::from(ev.trace_reason),
        is_reply: Some(flow.is_reply),
        interface: Some(pb::NetworkInterface {
            index: ev.ifindex,
            name: flow.interface,
        }),
        socket_cookie: 0,
        cgroup_id: 0,
        summary: flow.summary,
        egress_allowed_by,
        ingress_allowed_by,
        egress_denied_by,
        ingress_denied_by,
        policy_log: Vec::new(),
        aggregate: None,
    }
}
