//! The enriched flow record. Field names follow Hubble's `flow.Flow` JSON where Hubble has the
//! field, so `-o json` output reads the same.

use serde::Serialize;

/// One side of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndpointRef {
    /// Endpoint id (local endpoints only).
    #[serde(rename = "ID", skip_serializing_if = "is_zero")]
    pub id: u32,
    /// Security identity.
    pub identity: u32,
    /// Namespace (endpoints only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Labels of the identity, `source:key=value`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Pod (endpoint) name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Workloads `(name, kind)` of a local endpoint.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_workloads"
    )]
    pub workloads: Vec<(String, String)>,
    /// Cluster of the endpoint (empty for reserved identities such as world).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
}

fn serialize_workloads<S: serde::Serializer>(
    w: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    #[derive(Serialize)]
    struct Workload<'a> {
        name: &'a str,
        kind: &'a str,
    }
    let mut seq = s.serialize_seq(Some(w.len()))?;
    for (name, kind) in w {
        seq.serialize_element(&Workload { name, kind })?;
    }
    seq.end()
}

fn serialize_time<S: serde::Serializer>(ns: &i128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::decode::rfc3339_nanos(*ns))
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A policy that decided a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRefOut {
    /// Policy name.
    pub name: String,
    /// Namespace; empty for cluster-wide policies.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Kind (`CiliumNetworkPolicy`, …).
    pub kind: String,
}

impl From<&catalyst_policy::PolicyRef> for PolicyRefOut {
    fn from(r: &catalyst_policy::PolicyRef) -> Self {
        Self {
            name: r.name.clone(),
            namespace: r.namespace.clone().unwrap_or_default(),
            kind: r.kind.to_string(),
        }
    }
}

/// An enriched flow record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Wall-clock time in nanoseconds since the Unix epoch; serialised as RFC 3339 with
    /// nanoseconds (formatted only when a record is written out, not on the hot path).
    #[serde(rename = "time", serialize_with = "serialize_time")]
    pub time_ns: i128,
    /// Node name.
    pub node_name: String,
    /// `FORWARDED`, `DROPPED` or `AUDIT`.
    pub verdict: &'static str,
    /// Drop reason code (0 when none).
    pub drop_reason: u8,
    /// Drop reason name as Hubble spells it (`POLICY_DENIED`, `POLICY_DENY`, …).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub drop_reason_desc: &'static str,
    /// `policy-verdict`, `drop` or `trace`.
    pub event_type: &'static str,
    /// `INGRESS` or `EGRESS` from the local endpoint's point of view.
    pub traffic_direction: &'static str,
    /// Whether the packet is a reply of a tracked connection.
    pub is_reply: bool,
    /// `NEW`, `ESTABLISHED`, `REPLY`.
    pub trace_reason: &'static str,
    /// IP version 4 or 6 (0 when unknown).
    pub ip_version: u8,
    /// Source address.
    pub source_ip: String,
    /// Destination address.
    pub destination_ip: String,
    /// L4 protocol name (`TCP`, `UDP`, `SCTP`, `ICMPv4`, `ICMPv6`, or the number).
    pub protocol: std::borrow::Cow<'static, str>,
    /// Source port (0 when not applicable).
    pub source_port: u16,
    /// Destination port (0 when not applicable).
    pub destination_port: u16,
    /// TCP flags, e.g. `SYN`, `SYN, ACK`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tcp_flags: String,
    /// ICMP type and code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<(u8, u8)>,
    /// Source endpoint.
    pub source: EndpointRef,
    /// Destination endpoint.
    pub destination: EndpointRef,
    /// Hubble policy match type (0 none, 1 L3-only, 2 L3-L4, 3 L4-only, 4 all, …).
    pub policy_match_type: u8,
    /// Policies that allowed the flow (in the flow's direction).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<PolicyRefOut>,
    /// Policies that denied the flow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_by: Vec<PolicyRefOut>,
    /// Revision of the policy state the flow was decided under (`Policy.revision`).
    #[serde(skip)]
    pub policy_revision: u64,
    /// Host-side interface.
    pub interface: String,
    /// Hubble-style summary (`TCP Flags: SYN`, `ICMPv4 EchoRequest`, …).
    #[serde(rename = "Summary")]
    pub summary: String,
    /// The raw datapath event (numeric verdict, reason, flags) the record was built from.
    #[serde(skip)]
    pub event: catalyst_policy::datapath::FlowEvent,
}

impl Flow {
    /// Hubble's compact one-line form: `TIME [NODE]: SRC -> DST TYPE VERDICT (SUMMARY)`.
    pub fn compact(&self) -> String {
        let side = |ip: &str, port: u16, ep: &EndpointRef| {
            let host = if ep.pod_name.is_empty() {
                ip.to_owned()
            } else {
                format!("{}/{}", ep.namespace, ep.pod_name)
            };
            if port == 0 {
                host
            } else {
                format!("{host}:{port}")
            }
        };
        let arrow = if self.is_reply { "<-" } else { "->" };
        let (a, b) = if self.is_reply {
            (
                side(
                    &self.destination_ip,
                    self.destination_port,
                    &self.destination,
                ),
                side(&self.source_ip, self.source_port, &self.source),
            )
        } else {
            (
                side(&self.source_ip, self.source_port, &self.source),
                side(
                    &self.destination_ip,
                    self.destination_port,
                    &self.destination,
                ),
            )
        };
        let kind = match self.event_type {
            "policy-verdict" => format!(
                "policy-verdict:{} {}",
                match_type_name(self.policy_match_type),
                self.traffic_direction
            ),
            "drop" => format!("{} DROPPED", self.drop_reason_text()),
            _ => format!(
                "{} {}",
                trace_point_name(self.traffic_direction),
                self.traffic_direction
            ),
        };
        let verdict = match (self.event_type, self.verdict) {
            ("drop", _) => String::new(),
            ("policy-verdict", "FORWARDED") => " ALLOWED".to_owned(),
            ("policy-verdict", "AUDIT") => format!(" AUDITED ({})", self.drop_reason_text()),
            (_, v) => format!(" {v}"),
        };
        format!(
            "{} [{}]: {a} {arrow} {b} {kind}{verdict} ({})",
            super::decode::rfc3339_nanos(self.time_ns),
            self.node_name,
            self.summary
        )
    }

    fn drop_reason_text(&self) -> &'static str {
        match self.drop_reason {
            133 => "Policy denied",
            181 => "Policy denied by denylist",
            132 => "Invalid source ip",
            134 => "Invalid packet",
            135 => "CT: Truncated or invalid header",
            139 => "Unsupported L3 protocol",
            155 => "CT: Map insertion failed",
            156 => "Invalid IPv6 extension header",
            157 => "IP fragmentation not supported",
            175 => "First logical datagram fragment not found",
            _ => "Unknown drop reason",
        }
    }
}

/// The trace observation point of this agent's trace events as `hubble observe` names it:
/// packets towards the workload (ingress) are seen `to-endpoint`, packets from it `from-endpoint`.
pub fn trace_point_name(direction: &str) -> &'static str {
    match direction {
        "EGRESS" => "from-endpoint",
        _ => "to-endpoint",
    }
}

/// Hubble's names for `policy_match_type`.
pub fn match_type_name(m: u8) -> &'static str {
    match m {
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        5 => "L3-Proto",
        6 => "Proto-Only",
        _ => "none",
    }
}
