//! Hubble `FlowFilter` matching (`specs/hubble-observer-api.md`, "`FlowFilter`").
//!
//! Within one filter every non-empty field must match (AND) and a field matches when any of its
//! values does (OR). A request's result is: no whitelist or any whitelist filter matches, and no
//! blacklist filter matches. Filters are compiled once per request, so parse errors (a bad CIDR,
//! an unknown protocol, a bad label selector) reach the client as `InvalidArgument` before any
//! flow is sent.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::api::flow::{self as pb, Flow, FlowFilter};

/// A filter that cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// Not an IP address or CIDR.
    #[error("invalid IP or CIDR `{value}` in `{field}`")]
    Ip {
        /// Filter field.
        field: &'static str,
        /// Offending value.
        value: String,
    },
    /// Not a decimal port.
    #[error("invalid port `{value}` in `{field}`")]
    Port {
        /// Filter field.
        field: &'static str,
        /// Offending value.
        value: String,
    },
    /// Unknown protocol name.
    #[error(
        "unknown protocol `{0}` in `protocol` (expected tcp, udp, sctp, icmp, icmpv4, icmpv6, \
         http, dns or kafka)"
    )]
    Protocol(String),
    /// A pod or service filter that is empty.
    #[error("invalid empty `{0}` filter, expected `[namespace/]name-prefix` or `namespace/`")]
    EmptyName(&'static str),
    /// A label selector that does not parse.
    #[error("invalid label selector `{selector}`: {reason}")]
    Selector {
        /// The selector.
        selector: String,
        /// Why.
        reason: String,
    },
    /// A value of a field that does not fit the field's syntax.
    #[error("invalid value `{value}` in `{field}`: {reason}")]
    Value {
        /// Filter field.
        field: &'static str,
        /// Offending value.
        value: String,
        /// Expected syntax.
        reason: String,
    },
    /// A filter field this server cannot evaluate (refused rather than ignored, so a filter
    /// never matches more than the client asked for).
    #[error("filter field `{0}` is not supported by this server")]
    Unsupported(&'static str),
}

/// Compiled whitelist and blacklist of one request.
#[derive(Debug, Default)]
pub struct FlowFilters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FlowFilters {
    /// Compiles both lists.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        Ok(Self {
            whitelist: whitelist
                .iter()
                .map(Compiled::new)
                .collect::<Result<_, _>>()?,
            blacklist: blacklist
                .iter()
                .map(Compiled::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `flow` passes.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp4,
    Icmp6,
    /// An L7 protocol: matches flows whose L7 record is of that kind. This agent emits no L7
    /// flows (no L7 proxy), so these match no flow, as on a Cilium node without L7 visibility.
    L7,
}

/// `[namespace/]prefix`: namespace exact, name a prefix (empty prefix: the whole namespace).
#[derive(Debug)]
struct NameFilter {
    namespace: String,
    prefix: String,
}

#[derive(Debug)]
enum Op {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

/// One requirement of a label selector; `source` None matches labels of every source.
#[derive(Debug)]
struct Requirement {
    source: Option<String>,
    key: String,
    op: Op,
}

#[derive(Debug, Default)]
struct Compiled {
    uuid: Vec<String>,
    source_ip: Vec<IpNet>,
    destination_ip: Vec<IpNet>,
    source_pod: Vec<NameFilter>,
    destination_pod: Vec<NameFilter>,
    source_fqdn: Option<regex::Regex>,
    destination_fqdn: Option<regex::Regex>,
    source_label: Vec<Vec<Requirement>>,
    destination_label: Vec<Vec<Requirement>>,
    source_service: Vec<NameFilter>,
    destination_service: Vec<NameFilter>,
    source_workload: Vec<pb::Workload>,
    destination_workload: Vec<pb::Workload>,
    traffic_direction: Vec<i32>,
    verdict: Vec<i32>,
    drop_reason_desc: Vec<i32>,
    event_type: Vec<pb::EventTypeFilter>,
    protocol: Vec<Proto>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    reply: Vec<bool>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    tcp_flags: Vec<pb::TcpFlags>,
    node_name: Option<regex::Regex>,
    ip_version: Vec<i32>,
    interface: Vec<pb::NetworkInterface>,
    source_ip_xlated: Vec<IpNet>,
    source_cluster_name: Vec<String>,
    destination_cluster_name: Vec<String>,
    node_labels: Vec<Vec<Requirement>>,
    encrypted: Vec<bool>,
    /// Set when any field that only L7 flows or traced flows can satisfy is present
    /// (`http_*`, `dns_query`, `trace_id`, `ip_trace_id`): flows of this agent carry neither
    /// an L7 record nor a trace context, so such a filter matches no flow.
    needs_l7_or_trace: bool,
}

/// Hubble's `http_status_code` syntax: a full code (`404`) or a prefix followed by `+` (`4+`,
/// `40+`), first digit 1–5.
fn http_status(v: &str) -> Result<(), FilterError> {
    let digits = v.strip_suffix('+').unwrap_or(v);
    let ok = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (b'1'..=b'5').contains(&digits.as_bytes()[0])
        && (v.ends_with('+') || digits.len() == 3);
    if ok {
        Ok(())
    } else {
        Err(FilterError::Value {
            field: "http_status_code",
            value: v.to_owned(),
            reason: "expected a status code (`404`) or a prefix with `+` (`4+`, `40+`)".into(),
        })
    }
}

fn regexes(field: &'static str, values: &[String]) -> Result<(), FilterError> {
    for v in values {
        regex::Regex::new(v).map_err(|e| FilterError::Value {
            field,
            value: v.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn non_empty(field: &'static str, values: &[String]) -> Result<(), FilterError> {
    match values.iter().find(|v| v.trim().is_empty()) {
        Some(v) => Err(FilterError::Value {
            field,
            value: v.clone(),
            reason: "must not be empty".into(),
        }),
        None => Ok(()),
    }
}

/// Validates the fields only L7 or traced flows satisfy; true when any is set.
fn l7_or_trace_fields(f: &FlowFilter) -> Result<bool, FilterError> {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    for v in &f.http_status_code {
        http_status(v)?;
    }
    for m in &f.http_method {
        if !METHODS.iter().any(|x| x.eq_ignore_ascii_case(m)) {
            return Err(FilterError::Value {
                field: "http_method",
                value: m.clone(),
                reason: format!("expected one of {}", METHODS.join(", ")),
            });
        }
    }
    regexes("http_path", &f.http_path)?;
    regexes("http_url", &f.http_url)?;
    regexes("dns_query", &f.dns_query)?;
    non_empty("trace_id", &f.trace_id)?;
    if let Some(h) = f.http_header.iter().find(|h| h.key.trim().is_empty()) {
        return Err(FilterError::Value {
            field: "http_header",
            value: format!("{}:{}", h.key, h.value),
            reason: "the header key must not be empty".into(),
        });
    }
    Ok(!(f.http_status_code.is_empty()
        && f.http_method.is_empty()
        && f.http_path.is_empty()
        && f.http_url.is_empty()
        && f.http_header.is_empty()
        && f.dns_query.is_empty()
        && f.trace_id.is_empty()
        && f.ip_trace_id.is_empty()))
}

/// Any FQDN-like name (what an empty cluster or node pattern stands for).
const ANY_NAME: &str = "(?:[-0-9_a-z]+(?:\\.[-0-9_a-z]+)*)";

/// One FQDN pattern as a regular expression: trimmed, one trailing dot dropped, lower-cased;
/// `*` stands for any run of `[-.0-9a-z]` (it may cross dots), everything else is literal and
/// limited to `[-0-9_a-z.]`.
fn fqdn_pattern(field: &'static str, whole: &str, pattern: &str) -> Result<String, FilterError> {
    let bad = |reason: String| FilterError::Value {
        field,
        value: whole.to_owned(),
        reason,
    };
    let p = pattern.trim();
    let p = p.strip_suffix('.').unwrap_or(p).to_ascii_lowercase();
    if p.is_empty() {
        return Err(bad("empty pattern".into()));
    }
    if p.ends_with('.') {
        return Err(bad("multiple trailing dots".into()));
    }
    let mut re = String::new();
    for c in p.chars() {
        match c {
            '.' => re.push_str("\\."),
            '*' => re.push_str("[-.0-9a-z]*"),
            '-' | '_' | '0'..='9' | 'a'..='z' => re.push(c),
            other => return Err(bad(format!("invalid character `{other}`"))),
        }
    }
    Ok(re)
}

/// Compiles `node_name` patterns as Hubble does: `node`, `cluster/node`, `cluster/` (every node
/// of a cluster) or `/node`; either side empty matches any name. Flow node names without a
/// cluster prefix are taken to be in cluster `default`.
fn node_patterns(values: &[String]) -> Result<Option<regex::Regex>, FilterError> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut alts = Vec::new();
    for v in values {
        if v.is_empty() {
            return Err(FilterError::Value {
                field: "node_name",
                value: v.clone(),
                reason: "empty pattern".into(),
            });
        }
        let (cluster, node) = match v.split('/').collect::<Vec<_>>()[..] {
            [node] => ("", node),
            [cluster, node] => (cluster, node),
            _ => {
                return Err(FilterError::Value {
                    field: "node_name",
                    value: v.clone(),
                    reason: "too many slashes".into(),
                });
            }
        };
        let side = |p: &str| {
            if p.is_empty() {
                Ok(ANY_NAME.to_owned())
            } else {
                fqdn_pattern("node_name", v, p)
            }
        };
        alts.push(format!("{}/{}", side(cluster)?, side(node)?));
    }
    let re = format!("\\A(?:{})\\z", alts.join("|"));
    regex::Regex::new(&re)
        .map(Some)
        .map_err(|e| FilterError::Value {
            field: "node_name",
            value: values.join(","),
            reason: e.to_string(),
        })
}

/// Compiles FQDN patterns (`*.example.com`) into one expression matched against the names
/// of the flow's side.
fn fqdns(field: &'static str, values: &[String]) -> Result<Option<regex::Regex>, FilterError> {
    if values.is_empty() {
        return Ok(None);
    }
    let alts = values
        .iter()
        .map(|v| fqdn_pattern(field, v, v))
        .collect::<Result<Vec<_>, _>>()?;
    regex::Regex::new(&format!("\\A(?:{})\\z", alts.join("|")))
        .map(Some)
        .map_err(|e| FilterError::Value {
            field,
            value: values.join(","),
            reason: e.to_string(),
        })
}

fn node_match(re: &regex::Regex, node_name: &str) -> bool {
    if node_name.is_empty() {
        return false;
    }
    if node_name.contains('/') {
        re.is_match(node_name)
    } else {
        re.is_match(&format!("default/{node_name}"))
    }
}

fn nets(field: &'static str, values: &[String]) -> Result<Vec<IpNet>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| FilterError::Ip {
                    field,
                    value: v.clone(),
                })
        })
        .collect()
}

fn ports(field: &'static str, values: &[String]) -> Result<Vec<u16>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<u16>().map_err(|_| FilterError::Port {
                field,
                value: v.clone(),
            })
        })
        .collect()
}

fn names(field: &'static str, values: &[String]) -> Result<Vec<NameFilter>, FilterError> {
    values
        .iter()
        .map(|v| {
            if v.is_empty() {
                return Err(FilterError::EmptyName(field));
            }
            Ok(match v.split_once('/') {
                Some((ns, prefix)) => NameFilter {
                    namespace: ns.to_owned(),
                    prefix: prefix.to_owned(),
                },
                None => NameFilter {
                    namespace: String::new(),
                    prefix: v.clone(),
                },
            })
        })
        .collect()
}

fn protocol(name: &str) -> Result<Vec<Proto>, FilterError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "tcp" => vec![Proto::Tcp],
        "udp" => vec![Proto::Udp],
        "sctp" => vec![Proto::Sctp],
        "icmp" => vec![Proto::Icmp4, Proto::Icmp6],
        "icmpv4" => vec![Proto::Icmp4],
        "icmpv6" => vec![Proto::Icmp6],
        "http" | "dns" | "kafka" => vec![Proto::L7],
        _ => return Err(FilterError::Protocol(name.to_owned())),
    })
}

/// Splits `source:key` (a source prefix is only recognised before any `=`).
fn split_source(key: &str) -> (Option<String>, String) {
    match key.split_once(':') {
        Some(("any", k)) => (None, k.to_owned()),
        Some((src, k)) if !src.is_empty() => (Some(src.to_owned()), k.to_owned()),
        _ => (None, key.to_owned()),
    }
}

/// Parses a Kubernetes label selector (`a=b,c!=d,e in (f,g),h notin (i),j,!k`).
fn selector(text: &str) -> Result<Vec<Requirement>, FilterError> {
    let err = |reason: &str| FilterError::Selector {
        selector: text.to_owned(),
        reason: reason.to_owned(),
    };
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(err("unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(err("unbalanced parentheses"));
    }
    parts.push(&text[start..]);
    let set = |s: &str| -> Result<Vec<String>, FilterError> {
        let inner = s
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| err("expected a parenthesised value list"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let mut reqs = Vec::new();
    for part in parts {
        let p = part.trim();
        if p.is_empty() {
            return Err(err("empty requirement"));
        }
        let (key, op) = if let Some(k) = p.strip_prefix('!') {
            (k.trim(), Op::NotExists)
        } else if let Some((k, v)) = p.split_once(" notin ") {
            (k.trim(), Op::NotIn(set(v)?))
        } else if let Some((k, v)) = p.split_once(" in ") {
            (k.trim(), Op::In(set(v)?))
        } else if let Some((k, v)) = p.split_once("!=") {
            (k.trim(), Op::NotIn(vec![v.trim().to_owned()]))
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            (k.trim(), Op::In(vec![v.trim().to_owned()]))
        } else {
            (p, Op::Exists)
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(err("invalid key"));
        }
        let (source, key) = split_source(key);
        reqs.push(Requirement { source, key, op });
    }
    Ok(reqs)
}

fn selectors(values: &[String]) -> Result<Vec<Vec<Requirement>>, FilterError> {
    values.iter().map(|v| selector(v)).collect()
}

impl Compiled {
    fn new(f: &FlowFilter) -> Result<Self, FilterError> {
        if f.experimental
            .as_ref()
            .is_some_and(|e| !e.cel_expression.is_empty())
        {
            return Err(FilterError::Unsupported("experimental.cel_expression"));
        }
        let needs_l7_or_trace = l7_or_trace_fields(f)?;
        Ok(Self {
            needs_l7_or_trace,
            source_ip_xlated: nets("source_ip_xlated", &f.source_ip_xlated)?,
            source_cluster_name: f.source_cluster_name.clone(),
            destination_cluster_name: f.destination_cluster_name.clone(),
            node_labels: selectors(&f.node_labels)?,
            encrypted: f.encrypted.clone(),
            uuid: f.uuid.clone(),
            source_ip: nets("source_ip", &f.source_ip)?,
            destination_ip: nets("destination_ip", &f.destination_ip)?,
            source_pod: names("source_pod", &f.source_pod)?,
            destination_pod: names("destination_pod", &f.destination_pod)?,
            source_fqdn: fqdns("source_fqdn", &f.source_fqdn)?,
            destination_fqdn: fqdns("destination_fqdn", &f.destination_fqdn)?,
            source_label: selectors(&f.source_label)?,
            destination_label: selectors(&f.destination_label)?,
            source_service: names("source_service", &f.source_service)?,
            destination_service: names("destination_service", &f.destination_service)?,
            source_workload: f.source_workload.clone(),
            destination_workload: f.destination_workload.clone(),
            traffic_direction: f.traffic_direction.clone(),
            verdict: f.verdict.clone(),
            drop_reason_desc: f.drop_reason_desc.clone(),
            event_type: f.event_type.clone(),
            protocol: f
                .protocol
                .iter()
                .map(|p| protocol(p))
                .collect::<Result<Vec<_>, _>>()?
                .concat(),
            source_port: ports("source_port", &f.source_port)?,
            destination_port: ports("destination_port", &f.destination_port)?,
            reply: f.reply.clone(),
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            tcp_flags: f.tcp_flags.clone(),
            node_name: node_patterns(&f.node_name)?,
            ip_version: f.ip_version.clone(),
            interface: f.interface.clone(),
        })
    }

    fn matches(&self, f: &Flow) -> bool {
        let src = f.source.as_ref();
        let dst = f.destination.as_ref();
        let ip = f.ip.as_ref();
        let l4 = f.l4.as_ref().and_then(|l| l.protocol.as_ref());
        !self.needs_l7_or_trace
            && any(&self.uuid, |u| *u == f.uuid)
            && any(&self.source_ip_xlated, |n| {
                ip_in(n, ip.map(|i| i.source_xlated.as_str()))
            })
            && any(&self.source_cluster_name, |c| {
                src.is_some_and(|e| e.cluster_name == *c)
            })
            && any(&self.destination_cluster_name, |c| {
                dst.is_some_and(|e| e.cluster_name == *c)
            })
            && any(&self.node_labels, |s| labels_match(s, &f.node_labels))
            && any(&self.encrypted, |e| ip.is_some_and(|i| i.encrypted == *e))
            && any(&self.source_ip, |n| ip_in(n, ip.map(|i| i.source.as_str())))
            && any(&self.destination_ip, |n| {
                ip_in(n, ip.map(|i| i.destination.as_str()))
            })
            && any(&self.source_pod, |n| {
                name_match(n, src.map(|e| (&*e.namespace, &*e.pod_name)))
            })
            && any(&self.destination_pod, |n| {
                name_match(n, dst.map(|e| (&*e.namespace, &*e.pod_name)))
            })
            && self
                .source_fqdn
                .as_ref()
                .is_none_or(|re| f.source_names.iter().any(|n| re.is_match(n)))
            && self
                .destination_fqdn
                .as_ref()
                .is_none_or(|re| f.destination_names.iter().any(|n| re.is_match(n)))
            && any(&self.source_label, |s| {
                labels_match(s, src.map_or(&[], |e| &e.labels))
            })
            && any(&self.destination_label, |s| {
                labels_match(s, dst.map_or(&[], |e| &e.labels))
            })
            && any(&self.source_service, |n| {
                name_match(
                    n,
                    f.source_service.as_ref().map(|s| (&*s.namespace, &*s.name)),
                )
            })
            && any(&self.destination_service, |n| {
                name_match(
                    n,
                    f.destination_service
                        .as_ref()
                        .map(|s| (&*s.namespace, &*s.name)),
                )
            })
            && any(&self.source_workload, |w| workload_match(w, src))
            && any(&self.destination_workload, |w| workload_match(w, dst))
            && any(&self.traffic_direction, |d| *d == f.traffic_direction)
            && any(&self.verdict, |v| *v == f.verdict)
            && any(&self.drop_reason_desc, |d| *d == f.drop_reason_desc)
            && any(&self.event_type, |t| {
                event_type_match(t, f.event_type.as_ref())
            })
            && any(&self.protocol, |p| Some(*p) == l4.map(proto_of))
            && any(&self.source_port, |p| {
                Some(*p) == l4.and_then(|l| ports_of(l).map(|x| x.0))
            })
            && any(&self.destination_port, |p| {
                Some(*p) == l4.and_then(|l| ports_of(l).map(|x| x.1))
            })
            && any(&self.reply, |r| reply_match(*r, f))
            && any(&self.source_identity, |i| {
                Some(*i) == src.map(|e| e.identity)
            })
            && any(&self.destination_identity, |i| {
                Some(*i) == dst.map(|e| e.identity)
            })
            && any(&self.tcp_flags, |t| tcp_flags_match(t, l4))
            && self
                .node_name
                .as_ref()
                .is_none_or(|re| node_match(re, &f.node_name))
            && any(&self.ip_version, |v| Some(*v) == ip.map(|i| i.ip_version))
            && any(&self.interface, |i| {
                interface_match(i, f.interface.as_ref())
            })
    }
}

/// An empty list matches everything; otherwise any value must match.
fn any<T>(values: &[T], pred: impl FnMut(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(pred)
}

fn ip_in(net: &IpNet, addr: Option<&str>) -> bool {
    addr.and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| net.contains(&a))
}

fn name_match(f: &NameFilter, actual: Option<(&str, &str)>) -> bool {
    let Some((ns, name)) = actual else {
        return false;
    };
    if name.is_empty() {
        return false;
    }
    f.namespace == ns && name.starts_with(&f.prefix)
}

fn workload_match(w: &pb::Workload, ep: Option<&pb::Endpoint>) -> bool {
    ep.is_some_and(|e| {
        e.workloads.iter().any(|x| {
            (w.name.is_empty() || w.name == x.name) && (w.kind.is_empty() || w.kind == x.kind)
        })
    })
}

fn event_type_match(t: &pb::EventTypeFilter, actual: Option<&pb::CiliumEventType>) -> bool {
    actual.is_some_and(|a| a.r#type == t.r#type && (!t.match_sub_type || a.sub_type == t.sub_type))
}

fn proto_of(p: &pb::layer4::Protocol) -> Proto {
    use pb::layer4::Protocol as P;
    match p {
        P::Tcp(_) => Proto::Tcp,
        P::Udp(_) => Proto::Udp,
        P::Sctp(_) => Proto::Sctp,
        P::IcmPv4(_) => Proto::Icmp4,
        P::IcmPv6(_) => Proto::Icmp6,
    }
}

fn ports_of(p: &pb::layer4::Protocol) -> Option<(u16, u16)> {
    use pb::layer4::Protocol as P;
    let (s, d) = match p {
        P::Tcp(t) => (t.source_port, t.destination_port),
        P::Udp(u) => (u.source_port, u.destination_port),
        P::Sctp(s) => (s.source_port, s.destination_port),
        P::IcmPv4(_) | P::IcmPv6(_) => return None,
    };
    Some((u16::try_from(s).ok()?, u16::try_from(d).ok()?))
}

/// A flow whose reply state is unknown counts as "not a reply" only when it was dropped.
fn reply_match(want: bool, f: &Flow) -> bool {
    match f.is_reply {
        Some(r) => r == want,
        None => !want && f.verdict == pb::Verdict::Dropped as i32,
    }
}

fn tcp_flags_match(want: &pb::TcpFlags, l4: Option<&pb::layer4::Protocol>) -> bool {
    let Some(pb::layer4::Protocol::Tcp(t)) = l4 else {
        return false;
    };
    let Some(have) = t.flags.as_ref() else {
        return false;
    };
    let pairs = [
        (want.fin, have.fin),
        (want.syn, have.syn),
        (want.rst, have.rst),
        (want.psh, have.psh),
        (want.ack, have.ack),
        (want.urg, have.urg),
        (want.ece, have.ece),
        (want.cwr, have.cwr),
        (want.ns, have.ns),
    ];
    pairs.iter().all(|(w, h)| !w || *h)
}

fn interface_match(want: &pb::NetworkInterface, have: Option<&pb::NetworkInterface>) -> bool {
    have.is_some_and(|h| {
        (want.index == 0 || want.index == h.index) && (want.name.is_empty() || want.name == h.name)
    })
}

/// Labels are `source:key=value` (or `source:key` for a label without value).
fn labels_match(reqs: &[Requirement], labels: &[String]) -> bool {
    let parsed: Vec<(&str, &str, &str)> = labels
        .iter()
        .map(|l| {
            let (src, rest) = l.split_once(':').unwrap_or(("", l));
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            (src, k, v)
        })
        .collect();
    reqs.iter().all(|r| {
        let mut values = parsed
            .iter()
            .filter(|(s, k, _)| *k == r.key && r.source.as_deref().is_none_or(|want| want == *s))
            .map(|(_, _, v)| *v);
        match &r.op {
            Op::Exists => values.next().is_some(),
            Op::NotExists => values.next().is_none(),
            Op::In(set) => values.any(|v| set.iter().any(|s| s == v)),
            Op::NotIn(set) => values.all(|v| !set.iter().any(|s| s == v)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::layer4::Protocol;

    /// shop/client:40000 (10.244.0.10, identity 300) -> shop/db:5432 (10.244.0.12, identity 302),
    /// TCP SYN, egress, dropped by a deny rule.
    fn sample() -> Flow {
        Flow {
            uuid: "u-1".into(),
            verdict: pb::Verdict::Dropped.into(),
            drop_reason_desc: pb::DropReason::PolicyDeny.into(),
            ip: Some(pb::Ip {
                source: "10.244.0.10".into(),
                destination: "10.244.0.12".into(),
                ip_version: pb::IpVersion::IPv4.into(),
                ..pb::Ip::default()
            }),
            l4: Some(pb::Layer4 {
                protocol: Some(Protocol::Tcp(pb::Tcp {
                    source_port: 40000,
                    destination_port: 5432,
                    flags: Some(pb::TcpFlags {
                        syn: true,
                        ..pb::TcpFlags::default()
                    }),
                })),
            }),
            source: Some(pb::Endpoint {
                identity: 300,
                namespace: "shop".into(),
                labels: vec![
                    "k8s:app=client".into(),
                    "k8s:io.kubernetes.pod.namespace=shop".into(),
                ],
                pod_name: "client".into(),
                ..pb::Endpoint::default()
            }),
            destination: Some(pb::Endpoint {
                identity: 302,
                namespace: "shop".into(),
                labels: vec!["k8s:app=db".into(), "k8s:tier=data".into()],
                pod_name: "db-0".into(),
                workloads: vec![pb::Workload {
                    name: "db".into(),
                    kind: "StatefulSet".into(),
                }],
                ..pb::Endpoint::default()
            }),
            node_name: "lab-node".into(),
            event_type: Some(pb::CiliumEventType {
                r#type: 1,
                sub_type: 181,
            }),
            traffic_direction: pb::TrafficDirection::Egress.into(),
            is_reply: Some(false),
            interface: Some(pb::NetworkInterface {
                index: 7,
                name: "cat-client".into(),
            }),
            ..Flow::default()
        }
    }

    fn world_reply() -> Flow {
        Flow {
            verdict: pb::Verdict::Forwarded.into(),
            ip: Some(pb::Ip {
                source: "198.51.100.10".into(),
                destination: "fd00::1".into(),
                ip_version: pb::IpVersion::IPv6.into(),
                ..pb::Ip::default()
            }),
            l4: Some(pb::Layer4 {
                protocol: Some(Protocol::IcmPv6(pb::IcmPv6 {
                    r#type: 129,
                    code: 0,
                })),
            }),
            source: Some(pb::Endpoint {
                identity: 2,
                labels: vec!["reserved:world".into()],
                ..pb::Endpoint::default()
            }),
            destination: Some(pb::Endpoint::default()),
            node_name: "other-node".into(),
            event_type: Some(pb::CiliumEventType {
                r#type: 4,
                sub_type: 0,
            }),
            traffic_direction: pb::TrafficDirection::Ingress.into(),
            is_reply: Some(true),
            ..Flow::default()
        }
    }

    fn f() -> FlowFilter {
        FlowFilter::default()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "the table is the spec")]
    fn each_field_matches_per_the_spec_table() {
        // (name, filter, matches sample(), matches world_reply())
        let cases: Vec<(&str, FlowFilter, bool, bool)> = vec![
            ("empty filter", f(), true, true),
            (
                "uuid",
                FlowFilter {
                    uuid: s(&["u-1"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "source ip exact",
                FlowFilter {
                    source_ip: s(&["10.244.0.10"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "source ip cidr",
                FlowFilter {
                    source_ip: s(&["10.244.0.0/16"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "source ip OR",
                FlowFilter {
                    source_ip: s(&["1.1.1.1", "198.51.100.0/24"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "destination ip v6 cidr",
                FlowFilter {
                    destination_ip: s(&["fd00::/8"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "pod ns/prefix",
                FlowFilter {
                    destination_pod: s(&["shop/db"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "pod ns/ only",
                FlowFilter {
                    source_pod: s(&["shop/"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "pod other ns",
                FlowFilter {
                    source_pod: s(&["other/client"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "pod no ns means empty ns",
                FlowFilter {
                    source_pod: s(&["client"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "pod prefix not suffix",
                FlowFilter {
                    destination_pod: s(&["shop/b"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "fqdn never set",
                FlowFilter {
                    source_fqdn: s(&["example.com"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "label k8s:app",
                FlowFilter {
                    source_label: s(&["k8s:app=client"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "label any source",
                FlowFilter {
                    source_label: s(&["app=client"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "label wrong source",
                FlowFilter {
                    source_label: s(&["reserved:app=client"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "label exists",
                FlowFilter {
                    destination_label: s(&["tier"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "label not exists",
                FlowFilter {
                    destination_label: s(&["!tier"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "label in",
                FlowFilter {
                    destination_label: s(&["app in (web, db)"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "label notin",
                FlowFilter {
                    destination_label: s(&["app notin (db)"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "label !=",
                FlowFilter {
                    destination_label: s(&["app!=web"]),
                    ..f()
                },
                true,
                true,
            ),
            (
                "label AND in selector",
                FlowFilter {
                    destination_label: s(&["app=db,tier=web"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "label reserved:world",
                FlowFilter {
                    source_label: s(&["reserved:world"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "service never set",
                FlowFilter {
                    destination_service: s(&["shop/db"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "workload name+kind",
                FlowFilter {
                    destination_workload: vec![pb::Workload {
                        name: "db".into(),
                        kind: "StatefulSet".into(),
                    }],
                    ..f()
                },
                true,
                false,
            ),
            (
                "workload kind only",
                FlowFilter {
                    destination_workload: vec![pb::Workload {
                        name: String::new(),
                        kind: "Deployment".into(),
                    }],
                    ..f()
                },
                false,
                false,
            ),
            (
                "direction",
                FlowFilter {
                    traffic_direction: vec![pb::TrafficDirection::Ingress.into()],
                    ..f()
                },
                false,
                true,
            ),
            (
                "verdict",
                FlowFilter {
                    verdict: vec![pb::Verdict::Dropped.into()],
                    ..f()
                },
                true,
                false,
            ),
            (
                "verdict OR",
                FlowFilter {
                    verdict: vec![pb::Verdict::Dropped.into(), pb::Verdict::Forwarded.into()],
                    ..f()
                },
                true,
                true,
            ),
            (
                "drop reason",
                FlowFilter {
                    drop_reason_desc: vec![pb::DropReason::PolicyDeny.into()],
                    ..f()
                },
                true,
                false,
            ),
            (
                "drop reason other",
                FlowFilter {
                    drop_reason_desc: vec![pb::DropReason::PolicyDenied.into()],
                    ..f()
                },
                false,
                false,
            ),
            (
                "event type",
                FlowFilter {
                    event_type: vec![pb::EventTypeFilter {
                        r#type: 1,
                        ..Default::default()
                    }],
                    ..f()
                },
                true,
                false,
            ),
            (
                "event sub type",
                FlowFilter {
                    event_type: vec![pb::EventTypeFilter {
                        r#type: 1,
                        match_sub_type: true,
                        sub_type: 133,
                    }],
                    ..f()
                },
                false,
                false,
            ),
            (
                "protocol tcp any case",
                FlowFilter {
                    protocol: s(&["TCP"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "protocol icmp is both",
                FlowFilter {
                    protocol: s(&["icmp"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "protocol icmpv4",
                FlowFilter {
                    protocol: s(&["icmpv4"]),
                    ..f()
                },
                false,
                false,
            ),
            (
                "source port",
                FlowFilter {
                    source_port: s(&["40000"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "destination port",
                FlowFilter {
                    destination_port: s(&["5432", "80"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "reply false",
                FlowFilter {
                    reply: vec![false],
                    ..f()
                },
                true,
                false,
            ),
            (
                "reply true",
                FlowFilter {
                    reply: vec![true],
                    ..f()
                },
                false,
                true,
            ),
            (
                "source identity",
                FlowFilter {
                    source_identity: vec![2],
                    ..f()
                },
                false,
                true,
            ),
            (
                "destination identity",
                FlowFilter {
                    destination_identity: vec![302],
                    ..f()
                },
                true,
                false,
            ),
            (
                "tcp flags subset",
                FlowFilter {
                    tcp_flags: vec![pb::TcpFlags {
                        syn: true,
                        ..Default::default()
                    }],
                    ..f()
                },
                true,
                false,
            ),
            (
                "tcp flags all required",
                FlowFilter {
                    tcp_flags: vec![pb::TcpFlags {
                        syn: true,
                        ack: true,
                        ..Default::default()
                    }],
                    ..f()
                },
                false,
                false,
            ),
            (
                "node exact",
                FlowFilter {
                    node_name: s(&["lab-node"]),
                    ..f()
                },
                true,
                false,
            ),
            (
                "node glob",
                FlowFilter {
                    node_name: s(&["*-node"]),
                    ..f()
                },
                true,
                true,
            ),
            (
                "node glob middle",
                FlowFilter {
                    node_name: s(&["o*r-n*"]),
                    ..f()
                },
                false,
                true,
            ),
            (
                "ip version",
                FlowFilter {
                    ip_version: vec![pb::IpVersion::IPv6.into()],
                    ..f()
                },
                false,
                true,
            ),
            (
                "interface index",
                FlowFilter {
                    interface: vec![pb::NetworkInterface {
                        index: 7,
                        name: String::new(),
                    }],
                    ..f()
                },
                true,
                false,
            ),
            (
                "interface name",
                FlowFilter {
                    interface: vec![pb::NetworkInterface {
                        index: 0,
                        name: "cat-web".into(),
                    }],
                    ..f()
                },
                false,
                false,
            ),
            (
                "fields are ANDed",
                FlowFilter {
                    source_pod: s(&["shop/client"]),
                    verdict: vec![pb::Verdict::Forwarded.into()],
                    ..f()
                },
                false,
                false,
            ),
        ];
        let (a, b) = (sample(), world_reply());
        for (name, filter, want_a, want_b) in cases {
            let c = Compiled::new(&filter).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.matches(&a), want_a, "{name} on sample");
            assert_eq!(c.matches(&b), want_b, "{name} on world_reply");
        }
    }

    #[test]
    fn whitelist_and_blacklist_combine() {
        let drops = FlowFilter {
            verdict: vec![pb::Verdict::Dropped.into()],
            ..f()
        };
        let v6 = FlowFilter {
            ip_version: vec![pb::IpVersion::IPv6.into()],
            ..f()
        };
        let (a, b) = (sample(), world_reply());
        let only = |w: &[FlowFilter], bl: &[FlowFilter]| {
            let ff = FlowFilters::new(w, bl).expect("compiles");
            (ff.matches(&a), ff.matches(&b))
        };
        assert_eq!(only(&[], &[]), (true, true));
        assert_eq!(only(std::slice::from_ref(&drops), &[]), (true, false));
        assert_eq!(only(&[drops.clone(), v6.clone()], &[]), (true, true));
        assert_eq!(only(&[], std::slice::from_ref(&drops)), (false, true));
        assert_eq!(only(&[drops.clone(), v6], &[drops]), (false, true));
    }

    #[test]
    fn unknown_reply_counts_as_false_only_when_dropped() {
        let mut a = sample();
        a.is_reply = None;
        let not_reply = Compiled::new(&FlowFilter {
            reply: vec![false],
            ..f()
        })
        .expect("compiles");
        assert!(not_reply.matches(&a));
        a.verdict = pb::Verdict::Forwarded.into();
        assert!(!not_reply.matches(&a));
    }

    #[test]
    fn bad_filters_are_rejected_with_the_offending_value() {
        let cases: Vec<(FlowFilter, FilterError)> = vec![
            (
                FlowFilter {
                    source_ip: s(&["10.0.0.300"]),
                    ..f()
                },
                FilterError::Ip {
                    field: "source_ip",
                    value: "10.0.0.300".into(),
                },
            ),
            (
                FlowFilter {
                    destination_port: s(&["http"]),
                    ..f()
                },
                FilterError::Port {
                    field: "destination_port",
                    value: "http".into(),
                },
            ),
            (
                FlowFilter {
                    protocol: s(&["gre"]),
                    ..f()
                },
                FilterError::Protocol("gre".into()),
            ),
            (
                FlowFilter {
                    source_pod: s(&[""]),
                    ..f()
                },
                FilterError::EmptyName("source_pod"),
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(FlowFilters::new(&[filter], &[]).unwrap_err(), want);
        }
        assert!(matches!(
            FlowFilters::new(
                &[FlowFilter {
                    source_label: s(&["app in (a"]),
                    ..f()
                }],
                &[]
            ),
            Err(FilterError::Selector { .. })
        ));
    }

    fn node_filter(patterns: &[&str]) -> Result<FlowFilters, FilterError> {
        FlowFilters::new(
            &[FlowFilter {
                node_name: patterns.iter().map(|p| (*p).to_owned()).collect(),
                ..FlowFilter::default()
            }],
            &[],
        )
    }

    fn on_node(name: &str) -> Flow {
        Flow {
            node_name: name.to_owned(),
            ..Flow::default()
        }
    }

    #[test]
    fn node_name_patterns_follow_hubble() {
        for (pattern, node, want) in [
            ("k8s*", "k8s-worker", true),
            ("k8s*", "eu1/k8s-worker", true),
            ("k8s*", "other", false),
            ("eu1/", "eu1/k8s-worker", true),
            ("eu1/", "k8s-worker", false),
            ("default/", "k8s-worker", true),
            ("eu1/*.example.com", "eu1/n1.example.com", true),
            ("eu1/*.example.com", "eu2/n1.example.com", false),
            ("*/n1", "us/n1", true),
            ("/n1", "us/n1", true),
            ("N1.", "n1", true),
            ("n*", "", false),
        ] {
            let f = node_filter(&[pattern]).expect(pattern);
            assert_eq!(f.matches(&on_node(node)), want, "{pattern} vs {node}");
        }
        for bad in ["", "a/b/c", "no spaces", "x/y!"] {
            let e = node_filter(&[bad]).expect_err(bad);
            assert!(e.to_string().contains("node_name"), "{e}");
        }
    }

    #[test]
    fn l7_and_trace_fields_are_validated_and_match_no_l3_l4_flow() {
        let flow = sample();
        let only = |f: FlowFilter| FlowFilters::new(&[f], &[]);
        let cases = [
            FlowFilter {
                http_status_code: vec!["4+".into(), "404".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                http_method: vec!["get".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                dns_query: vec![".*\\.example\\.com".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                protocol: vec!["HTTP".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                protocol: vec!["dns".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                trace_id: vec!["abc".into()],
                ..FlowFilter::default()
            },
        ];
        for f in cases {
            let compiled = only(f.clone()).expect("valid");
            assert!(!compiled.matches(&flow), "{f:?} matched an L3/L4 flow");
            // As a blacklist it removes nothing.
            assert!(FlowFilters::new(&[], &[f]).expect("valid").matches(&flow));
        }
        // `protocol: [tcp, http]` still matches TCP flows (values are OR-ed).
        assert!(
            only(FlowFilter {
                protocol: vec!["tcp".into(), "http".into()],
                ..FlowFilter::default()
            })
            .expect("valid")
            .matches(&flow)
        );
        for (f, field) in [
            (
                FlowFilter {
                    http_status_code: vec!["4x".into()],
                    ..FlowFilter::default()
                },
                "http_status_code",
            ),
            (
                FlowFilter {
                    http_method: vec!["FETCH".into()],
                    ..FlowFilter::default()
                },
                "http_method",
            ),
            (
                FlowFilter {
                    http_path: vec!["(".into()],
                    ..FlowFilter::default()
                },
                "http_path",
            ),
            (
                FlowFilter {
                    experimental: Some(pb::flow_filter::Experimental {
                        cel_expression: vec!["true".into()],
                    }),
                    ..FlowFilter::default()
                },
                "experimental.cel_expression",
            ),
        ] {
            let e = only(f).expect_err(field);
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn cluster_names_node_labels_and_encryption_are_matched() {
        let mut flow = sample();
        if let Some(s) = flow.source.as_mut() {
            s.cluster_name = "eu1".into();
        }
        flow.node_labels = vec!["k8s:zone=a".into()];
        let only = |f: FlowFilter| FlowFilters::new(&[f], &[]).expect("valid");
        assert!(
            only(FlowFilter {
                source_cluster_name: vec!["eu1".into()],
                node_labels: vec!["zone in (a,b)".into()],
                encrypted: vec![false],
                ..FlowFilter::default()
            })
            .matches(&flow)
        );
        assert!(
            !only(FlowFilter {
                destination_cluster_name: vec!["eu1".into()],
                ..FlowFilter::default()
            })
            .matches(&flow)
        );
        assert!(
            !only(FlowFilter {
                encrypted: vec![true],
                ..FlowFilter::default()
            })
            .matches(&flow)
        );
    }
}
