//! `GetFlowsRequest.field_mask`: keep only the named fields of each flow.
//!
//! Paths use proto field names (`source.pod_name`, `IP`, `l4`) and are validated against
//! Hubble's `flow.Flow` message (Cilium 1.19): a path that names no field of it is refused, as
//! Hubble refuses it. A valid path naming a field this agent never fills (the CLI's default
//! mask asks for `l7`, for instance) selects nothing. Sub-paths are honoured for endpoints and
//! `IP`; other messages are kept whole when any sub-path of theirs is named.

use std::collections::BTreeMap;

use crate::api::flow::{Endpoint, Flow, Ip};

/// A compiled mask. An empty mask keeps everything.
#[derive(Debug, Default, Clone)]
pub struct FlowMask {
    /// Top-level field → sub-paths (`None`: the whole field).
    fields: BTreeMap<String, Option<Vec<String>>>,
}

/// A field-mask path that names no field of `flow.Flow`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid field_mask path `{path}`: {reason}")]
pub struct FieldMaskError {
    /// The path.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Fields of upstream `flow.Flow` and, for message fields, their sub-fields (`None`: a scalar,
/// no sub-path allowed; `Some(&[])`: a message whose sub-paths are not checked further).
const FLOW_FIELDS: &[(&str, Option<&[&str]>)] = &[
    ("time", Some(&["seconds", "nanos"])),
    ("uuid", None),
    ("emitter", Some(&["name", "version"])),
    ("verdict", None),
    ("drop_reason", None),
    ("auth_type", None),
    ("ethernet", Some(&["source", "destination"])),
    ("IP", Some(IP_FIELDS)),
    ("tunnel", Some(&[])),
    (
        "l4",
        Some(&["TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP"]),
    ),
    ("source", Some(ENDPOINT_FIELDS)),
    ("destination", Some(ENDPOINT_FIELDS)),
    ("Type", None),
    ("node_name", None),
    ("node_labels", None),
    ("source_names", None),
    ("destination_names", None),
    ("l7", Some(&["type", "latency_ns", "dns", "http", "kafka"])),
    ("reply", None),
    ("event_type", Some(&["type", "sub_type"])),
    ("source_service", Some(&["name", "namespace"])),
    ("destination_service", Some(&["name", "namespace"])),
    ("traffic_direction", None),
    ("policy_match_type", None),
    ("trace_observation_point", None),
    ("trace_reason", None),
    ("ip_trace_id", Some(&[])),
    ("drop_reason_desc", None),
    ("is_reply", Some(&["value"])),
    ("debug_capture_point", None),
    ("interface", Some(&["index", "name"])),
    ("proxy_port", None),
    ("trace_context", Some(&[])),
    ("sock_xlate_point", None),
    ("socket_cookie", None),
    ("cgroup_id", None),
    ("Summary", None),
    ("extensions", Some(&[])),
    ("egress_allowed_by", Some(POLICY_FIELDS)),
    ("ingress_allowed_by", Some(POLICY_FIELDS)),
    ("egress_denied_by", Some(POLICY_FIELDS)),
    ("ingress_denied_by", Some(POLICY_FIELDS)),
    ("policy_log", None),
    ("aggregate", Some(&[])),
];
const ENDPOINT_FIELDS: &[&str] = &[
    "ID",
    "identity",
    "cluster_name",
    "namespace",
    "labels",
    "pod_name",
    "workloads",
];
const IP_FIELDS: &[&str] = &[
    "source",
    "source_xlated",
    "destination",
    "ipVersion",
    "encrypted",
];
const POLICY_FIELDS: &[&str] = &["name", "namespace", "labels", "revision", "kind"];

fn validate(path: &str) -> Result<(), FieldMaskError> {
    let err = |reason: String| FieldMaskError {
        path: path.to_owned(),
        reason,
    };
    let mut parts = path.split('.');
    let head = parts.next().unwrap_or_default();
    let Some((_, subs)) = FLOW_FIELDS.iter().find(|(name, _)| *name == head) else {
        return Err(err(format!("`{head}` is not a field of flow.Flow")));
    };
    match (parts.next(), subs) {
        (Some(""), _) => Err(err("empty path element".to_owned())),
        (Some(sub), None) => Err(err(format!("`{head}` has no field `{sub}`"))),
        (Some(sub), Some(known)) if !known.is_empty() && !known.contains(&sub) => {
            Err(err(format!("`{head}` has no field `{sub}`")))
        }
        _ => Ok(()),
    }
}

impl FlowMask {
    /// Compiles the paths of a field mask, refusing paths that name no field of `flow.Flow`.
    pub fn new(paths: &[String]) -> Result<Self, FieldMaskError> {
        for p in paths {
            validate(p)?;
        }
        let mut fields: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
        for p in paths {
            let (head, rest) = match p.split_once('.') {
                Some((h, r)) => (h, Some(r.to_owned())),
                None => (p.as_str(), None),
            };
            let entry = fields
                .entry(head.to_owned())
                .or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), rest) {
                (Some(subs), Some(r)) => subs.push(r),
                (_, None) => *entry = None,
                (None, Some(_)) => {}
            }
        }
        Ok(Self { fields })
    }

    /// Whether the mask keeps everything.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The masked form of `f`, without a copy when nothing is masked.
    pub fn apply_cow(&self, f: std::borrow::Cow<'_, Flow>) -> Flow {
        if self.is_empty() {
            f.into_owned()
        } else {
            self.apply(&f)
        }
    }

    /// The masked copy of `f`.
    pub fn apply(&self, f: &Flow) -> Flow {
        if self.is_empty() {
            return f.clone();
        }
        let mut out = Flow::default();
        for (name, subs) in &self.fields {
            let subs = subs.as_deref();
            match name.as_str() {
                "time" => out.time = f.time,
                "uuid" => out.uuid.clone_from(&f.uuid),
                "emitter" => out.emitter.clone_from(&f.emitter),
                "verdict" => out.verdict = f.verdict,
                "drop_reason_desc" => out.drop_reason_desc = f.drop_reason_desc,
                "ethernet" => out.ethernet.clone_from(&f.ethernet),
                "IP" => out.ip = f.ip.as_ref().map(|ip| mask_ip(ip, subs)),
                "l4" => out.l4.clone_from(&f.l4),
                "source" => out.source = f.source.as_ref().map(|e| mask_endpoint(e, subs)),
                "destination" => {
                    out.destination = f.destination.as_ref().map(|e| mask_endpoint(e, subs));
                }
                "Type" => out.r#type = f.r#type,
                "node_name" => out.node_name.clone_from(&f.node_name),
                "node_labels" => out.node_labels.clone_from(&f.node_labels),
                "source_names" => out.source_names.clone_from(&f.source_names),
                "destination_names" => out.destination_names.clone_from(&f.destination_names),
                "event_type" => out.event_type = f.event_type,
                "source_service" => out.source_service.clone_from(&f.source_service),
                "destination_service" => out.destination_service.clone_from(&f.destination_service),
                "traffic_direction" => out.traffic_direction = f.traffic_direction,
                "policy_match_type" => out.policy_match_type = f.policy_match_type,
                "trace_observation_point" => {
                    out.trace_observation_point = f.trace_observation_point;
                }
                "trace_reason" => out.trace_reason = f.trace_reason,
                "is_reply" => out.is_reply = f.is_reply,
                "interface" => out.interface.clone_from(&f.interface),
                "socket_cookie" => out.socket_cookie = f.socket_cookie,
                "cgroup_id" => out.cgroup_id = f.cgroup_id,
                "Summary" => out.summary.clone_from(&f.summary),
                "egress_allowed_by" => out.egress_allowed_by.clone_from(&f.egress_allowed_by),
                "ingress_allowed_by" => out.ingress_allowed_by.clone_from(&f.ingress_allowed_by),
                "egress_denied_by" => out.egress_denied_by.clone_from(&f.egress_denied_by),
                "ingress_denied_by" => out.ingress_denied_by.clone_from(&f.ingress_denied_by),
                "policy_log" => out.policy_log.clone_from(&f.policy_log),
                "aggregate" => out.aggregate = f.aggregate,
                _ => {}
            }
        }
        out
    }
}

fn mask_endpoint(e: &Endpoint, subs: Option<&[String]>) -> Endpoint {
    let Some(subs) = subs else { return e.clone() };
    let mut out = Endpoint::default();
    for s in subs {
        match s.split('.').next().unwrap_or_default() {
            "ID" => out.id = e.id,
            "identity" => out.identity = e.identity,
            "namespace" => out.namespace.clone_from(&e.namespace),
            "labels" => out.labels.clone_from(&e.labels),
            "pod_name" => out.pod_name.clone_from(&e.pod_name),
            "workloads" => out.workloads.clone_from(&e.workloads),
            "cluster_name" => out.cluster_name.clone_from(&e.cluster_name),
            _ => {}
        }
    }
    out
}

fn mask_ip(ip: &Ip, subs: Option<&[String]>) -> Ip {
    let Some(subs) = subs else { return ip.clone() };
    let mut out = Ip::default();
    for s in subs {
        match s.as_str() {
            "source" => out.source.clone_from(&ip.source),
            "destination" => out.destination.clone_from(&ip.destination),
            "ipVersion" => out.ip_version = ip.ip_version,
            "encrypted" => out.encrypted = ip.encrypted,
            "source_xlated" => out.source_xlated.clone_from(&ip.source_xlated),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_named_fields_and_subfields_only() {
        let f = Flow {
            node_name: "n".into(),
            summary: "TCP Flags: SYN".into(),
            uuid: "u".into(),
            source: Some(Endpoint {
                identity: 5,
                pod_name: "p".into(),
                labels: vec!["k8s:a=b".into()],
                ..Endpoint::default()
            }),
            ..Flow::default()
        };
        let m = FlowMask::new(&[
            "Summary".into(),
            "source.pod_name".into(),
            "source.identity".into(),
            "l7".into(),
        ])
        .expect("valid paths");
        let out = m.apply(&f);
        assert_eq!(out.summary, "TCP Flags: SYN");
        assert!(out.uuid.is_empty() && out.node_name.is_empty());
        let src = out.source.expect("source kept");
        assert_eq!((src.identity, src.pod_name.as_str()), (5, "p"));
        assert!(src.labels.is_empty());
        // The whole field wins over a sub-path.
        let m = FlowMask::new(&["source.pod_name".into(), "source".into()]).expect("valid");
        assert_eq!(m.apply(&f).source.expect("kept").labels.len(), 1);
        assert_eq!(FlowMask::new(&[]).expect("valid").apply(&f), f);
    }
}
