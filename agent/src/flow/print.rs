//! Printing of Hubble flows the way `hubble observe` does: compact lines, protobuf-JSON (proto
//! field names, enums by name) and the `dict` form.

use serde_json::{Map, Value, json};

use super::decode::rfc3339_nanos;
use crate::api::{
    flow::{self as pb, Flow},
    observer::{GetFlowsResponse, get_flows_response::ResponseTypes},
};

fn ports(f: &Flow) -> Option<(u32, u32)> {
    use pb::layer4::Protocol as P;
    match f.l4.as_ref()?.protocol.as_ref()? {
        P::Tcp(t) => Some((t.source_port, t.destination_port)),
        P::Udp(u) => Some((u.source_port, u.destination_port)),
        P::Sctp(s) => Some((s.source_port, s.destination_port)),
        P::IcmPv4(_) | P::IcmPv6(_) => None,
    }
}

/// Hubble's kebab-case name of an observation point (`to-endpoint`, …).
pub fn observation_point(p: i32) -> &'static str {
    match pb::TraceObservationPoint::try_from(p) {
        Ok(pb::TraceObservationPoint::ToProxy) => "to-proxy",
        Ok(pb::TraceObservationPoint::ToHost) => "to-host",
        Ok(pb::TraceObservationPoint::ToStack) => "to-stack",
        Ok(pb::TraceObservationPoint::ToOverlay) => "to-overlay",
        Ok(pb::TraceObservationPoint::FromEndpoint) => "from-endpoint",
        Ok(pb::TraceObservationPoint::FromProxy) => "from-proxy",
        Ok(pb::TraceObservationPoint::FromHost) => "from-host",
        Ok(pb::TraceObservationPoint::FromStack) => "from-stack",
        Ok(pb::TraceObservationPoint::FromOverlay) => "from-overlay",
        Ok(pb::TraceObservationPoint::FromNetwork) => "from-network",
        Ok(pb::TraceObservationPoint::ToNetwork) => "to-network",
        Ok(pb::TraceObservationPoint::ToEndpoint) => "to-endpoint",
        _ => "unknown",
    }
}

/// Hubble's names for `policy_match_type` as the compact form prints them (the one table is in
/// [`super::record::match_type_name`]).
pub fn match_type_name(m: u32) -> &'static str {
    u8::try_from(m).map_or("none", super::record::match_type_name)
}

/// Lower-case match type for metric labels.
pub fn match_type_label(m: u32) -> &'static str {
    match m {
        1 => "l3-only",
        2 => "l3-l4",
        3 => "l4-only",
        4 => "all",
        5 => "l3-proto",
        6 => "proto-only",
        _ => "none",
    }
}

/// Cilium's text for a drop reason.
pub fn drop_reason_text(code: i32) -> &'static str {
    match code {
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        137 => "CT: Unknown L4 protocol",
        139 => "Unsupported L3 protocol",
        142 => "Unknown L4 protocol",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        175 => "First logical datagram fragment not found",
        165 => "No configuration available to perform policy decision",
        171 => "Invalid identity",
        181 => "Policy denied by denylist",
        203 => "Endpoint not ready",
        _ => "Unknown drop reason",
    }
}

fn reserved_name(identity: u32) -> Option<&'static str> {
    Some(match identity {
        1 => "host",
        2 => "world",
        3 => "unmanaged",
        4 => "health",
        5 => "init",
        6 => "remote-node",
        7 => "kube-apiserver",
        8 => "ingress",
        9 => "world-ipv4",
        10 => "world-ipv6",
        _ => return None,
    })
}

fn side(ip: &str, port: Option<u32>, ep: Option<&pb::Endpoint>) -> String {
    let mut host = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ => ip.to_owned(),
    };
    if let Some(p) = port.filter(|p| *p != 0) {
        if host.contains(':') && ep.is_none_or(|e| e.pod_name.is_empty()) {
            host = format!("[{host}]");
        }
        host = format!("{host}:{p}");
    }
    match ep.map(|e| e.identity) {
        Some(0) | None => host,
        Some(id) => match reserved_name(id) {
            Some(name) => format!("{host} ({name})"),
            None => format!("{host} (ID:{id})"),
        },
    }
}

/// `Nov 26 03:41:30.123` (UTC), Hubble's compact time format.
pub fn compact_time(ts: Option<&prost_types::Timestamp>) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Some(ts) = ts else {
        return "N/A".to_owned();
    };
    let s = rfc3339_nanos(super::convert::timestamp_ns(ts));
    // s = YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ
    let month = s[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    let day = s[8..10].trim_start_matches('0');
    format!("{} {day:>2} {}", MONTHS[month - 1], &s[11..23])
}

/// `TIME [NODE]: SRC -> DST TYPE VERDICT (SUMMARY)`.
pub fn compact(f: &Flow) -> String {
    compact_with(f, true)
}

/// The compact line, with `[NODE]` only when `node` is set (`hubble observe
/// --print-node-name`).
pub fn compact_with(f: &Flow, node: bool) -> String {
    let (a, arrow, b) = sides(f);
    let kind = compact_kind(f);
    if node {
        format!(
            "{} [{}]: {a} {arrow} {b} {kind} ({})",
            compact_time(f.time.as_ref()),
            f.node_name,
            f.summary
        )
    } else {
        format!(
            "{}: {a} {arrow} {b} {kind} ({})",
            compact_time(f.time.as_ref()),
            f.summary
        )
    }
}

/// Source, arrow and destination as the compact form shows them (swapped for replies).
fn sides(f: &Flow) -> (String, &'static str, String) {
    let ip = f.ip.as_ref();
    let p = ports(f);
    let mut a = side(
        ip.map_or("", |i| &i.source),
        p.map(|x| x.0),
        f.source.as_ref(),
    );
    let mut b = side(
        ip.map_or("", |i| &i.destination),
        p.map(|x| x.1),
        f.destination.as_ref(),
    );
    let arrow = match f.is_reply {
        None => "<>",
        Some(true) => {
            std::mem::swap(&mut a, &mut b);
            "<-"
        }
        Some(false) => "->",
    };
    (a, arrow, b)
}

/// `policy-verdict:L3-L4 INGRESS ALLOWED`, `Policy denied DROPPED`, `to-endpoint FORWARDED`.
fn compact_kind(f: &Flow) -> String {
    let verdict = pb::Verdict::try_from(f.verdict).unwrap_or(pb::Verdict::Unknown);
    let direction = pb::TrafficDirection::try_from(f.traffic_direction)
        .unwrap_or(pb::TrafficDirection::Unknown)
        .as_str_name();
    match f.event_type.as_ref().map_or(0, |e| e.r#type) {
        5 => {
            let v = match verdict {
                pb::Verdict::Forwarded => "ALLOWED".to_owned(),
                pb::Verdict::Dropped => "DENIED".to_owned(),
                pb::Verdict::Audit => format!("AUDITED ({})", drop_reason_text(f.drop_reason_desc)),
                v => v.as_str_name().to_owned(),
            };
            format!(
                "policy-verdict:{} {direction} {v}",
                match_type_name(f.policy_match_type)
            )
        }
        1 => format!("{} DROPPED", drop_reason_text(f.drop_reason_desc)),
        _ => format!(
            "{} {}",
            observation_point(f.trace_observation_point),
            verdict.as_str_name()
        ),
    }
}

/// `-o table`: rows aligned in columns, as `hubble observe -o table` prints them.
#[derive(Debug)]
pub struct Table {
    node: bool,
    header: bool,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table, with a NODE column when `node` is set.
    pub fn new(node: bool) -> Self {
        Self {
            node,
            header: false,
            rows: Vec::new(),
        }
    }

    /// Adds a flow.
    pub fn push(&mut self, f: &Flow) {
        let (a, arrow, b) = sides(f);
        let (src, dst) = if arrow == "<-" { (b, a) } else { (a, b) };
        let verdict = pb::Verdict::try_from(f.verdict)
            .unwrap_or(pb::Verdict::Unknown)
            .as_str_name()
            .to_owned();
        let mut row = vec![compact_time(f.time.as_ref())];
        if self.node {
            row.push(f.node_name.clone());
        }
        row.extend([src, dst, compact_type(f), verdict, f.summary.clone()]);
        self.rows.push(row);
    }

    /// The lines of the rows added since the last call (the header before the first), padded
    /// to the widest cell of each column among them (two spaces apart).
    pub fn take_lines(&mut self) -> Vec<String> {
        use std::fmt::Write as _;
        let mut rows = std::mem::take(&mut self.rows);
        if rows.is_empty() {
            return Vec::new();
        }
        if !self.header {
            self.header = true;
            let mut h = vec!["TIMESTAMP"];
            if self.node {
                h.push("NODE");
            }
            h.extend(["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]);
            rows.insert(0, h.into_iter().map(str::to_owned).collect());
        }
        let cols = rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        rows.iter()
            .map(|r| {
                let mut line = String::new();
                for (c, cell) in r.iter().enumerate() {
                    if c + 1 == cols {
                        line.push_str(cell);
                    } else {
                        let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                    }
                }
                line
            })
            .collect()
    }
}

fn ts_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| {
        Value::String(rfc3339_nanos(super::convert::timestamp_ns(t)))
    })
}

/// Inserts `v` unless it is the proto3 default (protojson omits defaults).
fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    };
    if !empty {
        m.insert(k.to_owned(), v);
    }
}

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        put(&mut m, k, v);
    }
    Value::Object(m)
}

fn endpoint_json(e: &pb::Endpoint) -> Value {
    obj(vec![
        ("ID", json!(e.id)),
        ("identity", json!(e.identity)),
        ("cluster_name", json!(e.cluster_name)),
        ("namespace", json!(e.namespace)),
        ("labels", json!(e.labels)),
        ("pod_name", json!(e.pod_name)),
        (
            "workloads",
            Value::Array(
                e.workloads
                    .iter()
                    .map(|w| obj(vec![("name", json!(w.name)), ("kind", json!(w.kind))]))
                    .collect(),
            ),
        ),
    ])
}

fn policies_json(p: &[pb::Policy]) -> Value {
    Value::Array(
        p.iter()
            .map(|p| {
                obj(vec![
                    ("name", json!(p.name)),
                    ("namespace", json!(p.namespace)),
                    ("labels", json!(p.labels)),
                    ("revision", json!(p.revision.to_string())),
                    ("kind", json!(p.kind)),
                ])
            })
            .collect(),
    )
}

fn l4_json(l: &pb::Layer4) -> Value {
    use pb::layer4::Protocol as P;
    let ports = |s: u32, d: u32| vec![("source_port", json!(s)), ("destination_port", json!(d))];
    match &l.protocol {
        Some(P::Tcp(t)) => {
            let mut v = ports(t.source_port, t.destination_port);
            if let Some(fl) = &t.flags {
                v.push((
                    "flags",
                    obj(vec![
                        ("FIN", json!(fl.fin)),
                        ("SYN", json!(fl.syn)),
                        ("RST", json!(fl.rst)),
                        ("PSH", json!(fl.psh)),
                        ("ACK", json!(fl.ack)),
                        ("URG", json!(fl.urg)),
                        ("ECE", json!(fl.ece)),
                        ("CWR", json!(fl.cwr)),
                        ("NS", json!(fl.ns)),
                    ]),
                ));
            }
            json!({ "TCP": obj(v) })
        }
        Some(P::Udp(u)) => json!({ "UDP": obj(ports(u.source_port, u.destination_port)) }),
        Some(P::Sctp(s)) => json!({ "SCTP": obj(ports(s.source_port, s.destination_port)) }),
        Some(P::IcmPv4(i)) => {
            json!({ "ICMPv4": obj(vec![("type", json!(i.r#type)), ("code", json!(i.code))]) })
        }
        Some(P::IcmPv6(i)) => {
            json!({ "ICMPv6": obj(vec![("type", json!(i.r#type)), ("code", json!(i.code))]) })
        }
        None => json!({}),
    }
}

fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(&E) -> &'static str) -> Value {
    if v == 0 {
        return Value::Null;
    }
    E::try_from(v).map_or_else(|_| json!(v), |e| json!(name(&e)))
}

/// A flow as protobuf JSON with the proto field names (what `hubble observe -o json` prints).
pub fn flow_json(f: &Flow) -> Value {
    let mut v = vec![
        ("time", ts_json(f.time.as_ref())),
        ("uuid", json!(f.uuid)),
        ("verdict", enum_name(f.verdict, pb::Verdict::as_str_name)),
        (
            "drop_reason_desc",
            enum_name(f.drop_reason_desc, pb::DropReason::as_str_name),
        ),
    ];
    if let Some(e) = &f.emitter {
        v.push((
            "emitter",
            obj(vec![("name", json!(e.name)), ("version", json!(e.version))]),
        ));
    }
    if let Some(ip) = &f.ip {
        v.push((
            "IP",
            obj(vec![
                ("source", json!(ip.source)),
                ("destination", json!(ip.destination)),
                (
                    "ipVersion",
                    enum_name(ip.ip_version, pb::IpVersion::as_str_name),
                ),
                ("encrypted", json!(ip.encrypted)),
            ]),
        ));
    }
    if let Some(l) = &f.l4 {
        v.push(("l4", l4_json(l)));
    }
    if let Some(e) = &f.source {
        v.push(("source", endpoint_json(e)));
    }
    if let Some(e) = &f.destination {
        v.push(("destination", endpoint_json(e)));
    }
    v.push(("Type", enum_name(f.r#type, pb::FlowType::as_str_name)));
    v.push(("node_name", json!(f.node_name)));
    if let Some(e) = &f.event_type {
        v.push((
            "event_type",
            obj(vec![
                ("type", json!(e.r#type)),
                ("sub_type", json!(e.sub_type)),
            ]),
        ));
    }
    v.push((
        "traffic_direction",
        enum_name(f.traffic_direction, pb::TrafficDirection::as_str_name),
    ));
    v.push(("policy_match_type", json!(f.policy_match_type)));
    v.push((
        "trace_observation_point",
        enum_name(
            f.trace_observation_point,
            pb::TraceObservationPoint::as_str_name,
        ),
    ));
    v.push((
        "trace_reason",
        enum_name(f.trace_reason, pb::TraceReason::as_str_name),
    ));
    if let Some(r) = f.is_reply {
        // A set wrapper is printed even when false.
        v.push(("is_reply", Value::String(String::new())));
        let last = v.len() - 1;
        v[last].1 = json!(r);
    }
    if let Some(i) = &f.interface {
        v.push((
            "interface",
            obj(vec![("index", json!(i.index)), ("name", json!(i.name))]),
        ));
    }
    v.push(("Summary", json!(f.summary)));
    v.push(("egress_allowed_by", policies_json(&f.egress_allowed_by)));
    v.push(("ingress_allowed_by", policies_json(&f.ingress_allowed_by)));
    v.push(("egress_denied_by", policies_json(&f.egress_denied_by)));
    v.push(("ingress_denied_by", policies_json(&f.ingress_denied_by)));
    let mut m = Map::new();
    for (k, val) in v {
        if k == "is_reply" {
            m.insert(k.to_owned(), val);
        } else {
            put(&mut m, k, val);
        }
    }
    Value::Object(m)
}

/// A lost-events message as protobuf JSON.
pub fn lost_json(l: &pb::LostEvent) -> Value {
    let mut v = obj(vec![
        (
            "source",
            enum_name(l.source, pb::LostEventSource::as_str_name),
        ),
        ("num_events_lost", json!(l.num_events_lost.to_string())),
        ("first", ts_json(l.first.as_ref())),
        ("last", ts_json(l.last.as_ref())),
    ]);
    if let (Some(cpu), Value::Object(m)) = (l.cpu, &mut v) {
        m.insert("cpu".to_owned(), json!(cpu));
    }
    v
}

/// A `GetFlows` response as protobuf JSON (`{"flow": …, "node_name": …, "time": …}`).
pub fn response_json(r: &GetFlowsResponse) -> Value {
    let mut m = Map::new();
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            m.insert("flow".into(), flow_json(f));
        }
        Some(ResponseTypes::LostEvents(l)) => {
            m.insert("lost_events".into(), lost_json(l));
        }
        Some(ResponseTypes::NodeStatus(n)) => {
            m.insert(
                "node_status".into(),
                json!({ "node_names": n.node_names, "message": n.message }),
            );
        }
        None => {}
    }
    put(&mut m, "node_name", json!(r.node_name));
    put(&mut m, "time", ts_json(r.time.as_ref()));
    Value::Object(m)
}

/// Hubble's `dict` form: one `KEY: value` line per field, flows separated by dashes.
pub fn dict(f: &Flow) -> String {
    let ip = f.ip.as_ref();
    let p = ports(f);
    let verdict = pb::Verdict::try_from(f.verdict)
        .unwrap_or(pb::Verdict::Unknown)
        .as_str_name();
    let mut rows = vec![
        ("TIMESTAMP", compact_time(f.time.as_ref())),
        (
            "SOURCE",
            side(
                ip.map_or("", |i| &i.source),
                p.map(|x| x.0),
                f.source.as_ref(),
            ),
        ),
        (
            "DESTINATION",
            side(
                ip.map_or("", |i| &i.destination),
                p.map(|x| x.1),
                f.destination.as_ref(),
            ),
        ),
        ("TYPE", compact_type(f)),
        ("VERDICT", verdict.to_owned()),
        ("SUMMARY", f.summary.clone()),
        ("NODE", f.node_name.clone()),
        (
            "IS_REPLY",
            match f.is_reply {
                Some(r) => r.to_string(),
                None => "unknown".to_owned(),
            },
        ),
    ];
    if f.drop_reason_desc != 0 {
        rows.push((
            "DROP_REASON",
            pb::DropReason::try_from(f.drop_reason_desc)
                .map_or("UNKNOWN", |d| d.as_str_name())
                .to_owned(),
        ));
    }
    rows.iter()
        .map(|(k, v)| format!("{k:>12}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn compact_type(f: &Flow) -> String {
    match f.event_type.as_ref().map_or(0, |e| e.r#type) {
        5 => format!("policy-verdict:{}", match_type_name(f.policy_match_type)),
        1 => "drop".to_owned(),
        _ => observation_point(f.trace_observation_point).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_795_651_200,
                nanos: 123_000_000,
            }),
            verdict: pb::Verdict::Forwarded.into(),
            ip: Some(pb::Ip {
                source: "10.244.0.10".into(),
                destination: "10.244.0.11".into(),
                ip_version: 1,
                ..Default::default()
            }),
            l4: Some(pb::Layer4 {
                protocol: Some(pb::layer4::Protocol::Tcp(pb::Tcp {
                    source_port: 40000,
                    destination_port: 80,
                    flags: Some(pb::TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            source: Some(pb::Endpoint {
                identity: 300,
                namespace: "shop".into(),
                pod_name: "client".into(),
                ..Default::default()
            }),
            destination: Some(pb::Endpoint {
                identity: 301,
                namespace: "shop".into(),
                pod_name: "web".into(),
                ..Default::default()
            }),
            node_name: "lab-node".into(),
            event_type: Some(pb::CiliumEventType {
                r#type: 5,
                sub_type: 0,
            }),
            traffic_direction: pb::TrafficDirection::Ingress.into(),
            policy_match_type: 2,
            is_reply: Some(false),
            summary: "TCP Flags: SYN".into(),
            ..Flow::default()
        }
    }

    #[test]
    fn compact_prints_policy_verdicts_drops_and_replies_like_hubble() {
        let f = flow();
        assert_eq!(
            compact(&f),
            "Nov 26 00:00:00.123 [lab-node]: shop/client:40000 (ID:300) -> shop/web:80 (ID:301) \
             policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)"
        );
        let mut d = flow();
        d.verdict = pb::Verdict::Dropped.into();
        d.drop_reason_desc = 133;
        d.event_type = Some(pb::CiliumEventType {
            r#type: 1,
            sub_type: 133,
        });
        assert!(
            compact(&d).ends_with("Policy denied DROPPED (TCP Flags: SYN)"),
            "{}",
            compact(&d)
        );
        let mut r = flow();
        r.is_reply = Some(true);
        r.event_type = Some(pb::CiliumEventType {
            r#type: 4,
            sub_type: 0,
        });
        r.trace_observation_point = pb::TraceObservationPoint::ToEndpoint.into();
        assert!(
            compact(&r).contains(
                "shop/web:80 (ID:301) <- shop/client:40000 (ID:300) to-endpoint FORWARDED"
            ),
            "{}",
            compact(&r)
        );
        r.is_reply = None;
        assert!(compact(&r).contains(" <> "));
    }

    #[test]
    fn json_uses_proto_field_names_and_enum_names() {
        let v = flow_json(&flow());
        assert_eq!(v["verdict"], "FORWARDED");
        assert_eq!(v["IP"]["ipVersion"], "IPv4");
        assert_eq!(v["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(v["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(v["traffic_direction"], "INGRESS");
        assert_eq!(v["is_reply"], false);
        assert_eq!(v["Summary"], "TCP Flags: SYN");
        assert_eq!(v["time"], "2026-11-26T00:00:00.123000000Z");
        assert!(v.get("drop_reason_desc").is_none());
    }
}
