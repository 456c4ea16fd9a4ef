//! `catalyst-agent observe` and `catalyst-agent status`: gRPC clients of the Observer API that
//! behave like `hubble observe` and `hubble status`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::{
    api::{
        flow::{self as pb, EventTypeFilter, FlowFilter},
        observer::{
            GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes,
            observer_client::ObserverClient,
        },
    },
    flow::{print, timestamp},
    observer::HEALTH_SERVICE,
};

/// Default server: the agent's UNIX socket (reachable from any network namespace).
pub const DEFAULT_SERVER: &str = "unix:///var/run/catalyst/hubble.sock";

/// Connection flags shared by `observe` and `status`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Observer API address: `unix:///path`, `host:port` or `http://host:port`.
    #[arg(long, env = "CATALYST_OBSERVER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Connection and request timeout for non-streaming calls, seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// Connect with TLS (TCP servers; the agent's `observer.tls`).
    #[arg(long, env = "CATALYST_OBSERVER_TLS")]
    pub tls: bool,
    /// CA certificates (PEM files, comma-separated or repeated) that the server's certificate
    /// must chain to; default: the system's roots.
    #[arg(long = "tls-ca-cert-files", alias = "tls-ca", value_delimiter = ',')]
    pub tls_ca_cert_files: Vec<PathBuf>,
    /// Name to check the server's certificate against; default: the host of `--server`.
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "tls_client_key_file")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, requires = "tls_client_cert_file")]
    pub tls_client_key_file: Option<PathBuf>,
}

impl ServerArgs {
    /// Plaintext arguments for `server`.
    pub fn plain(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            timeout: 5,
            tls: false,
            tls_ca_cert_files: Vec::new(),
            tls_server_name: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }

    /// The client TLS configuration these flags ask for (`None` without `--tls`).
    pub fn tls_config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let tls_flag = self.tls_server_name.is_some()
            || self.tls_client_cert_file.is_some()
            || !self.tls_ca_cert_files.is_empty();
        if !self.tls {
            if tls_flag {
                bail!("--tls-* flags need --tls");
            }
            return Ok(None);
        }
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let mut t = ClientTlsConfig::new();
        if self.tls_ca_cert_files.is_empty() {
            t = t.with_native_roots();
        }
        for f in &self.tls_ca_cert_files {
            t = t.ca_certificate(Certificate::from_pem(read(f)?));
        }
        if let Some(name) = &self.tls_server_name {
            t = t.domain_name(name.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_client_cert_file, &self.tls_client_key_file) {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(t))
    }

    /// Connects as these flags say.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let timeout = Duration::from_secs(self.timeout);
        let Some(tls) = self.tls_config()? else {
            return connect(&self.server, timeout).await;
        };
        if self.server.starts_with("unix://") {
            bail!("--tls is for TCP servers; the UNIX socket is plaintext");
        }
        let host_port = self
            .server
            .strip_prefix("http://")
            .or_else(|| self.server.strip_prefix("https://"))
            .unwrap_or(&self.server);
        let uri = format!("https://{host_port}");
        Endpoint::try_from(uri.clone())?
            .tls_config(tls)
            .context("invalid TLS configuration")?
            .connect_timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {uri} with TLS"))
    }
}

/// Output formats of `observe`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `TIME [NODE]: SRC -> DST TYPE VERDICT (SUMMARY)` (the node with --print-node-name).
    Compact,
    /// Aligned columns `TIMESTAMP [NODE] SOURCE DESTINATION TYPE VERDICT SUMMARY`.
    Table,
    /// One protobuf-JSON `GetFlows` response per line.
    Json,
    /// Alias of `json`.
    Jsonpb,
    /// `KEY: value` blocks.
    Dict,
}

/// `catalyst-agent observe` flags (a subset of `hubble observe`).
#[derive(Args, Debug, Clone)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Get the last N flows (default 20 unless --follow, --first, --since or --all).
    #[arg(long)]
    pub last: Option<u64>,
    /// Get the first N flows held by the server.
    #[arg(long, conflicts_with_all = ["last", "follow"])]
    pub first: Option<u64>,
    /// Get every flow held by the server.
    #[arg(long, conflicts_with_all = ["last", "first"])]
    pub all: bool,
    /// Follow new flows.
    #[arg(long, short)]
    pub follow: bool,
    /// Flows since this time: RFC 3339 or a duration ago (`5m`, `1h30m`, `90s`).
    #[arg(long)]
    pub since: Option<String>,
    /// Flows until this time: RFC 3339 or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Flows from a pod (`[namespace/]pod-prefix`; namespace `default` when omitted).
    #[arg(long)]
    pub from_pod: Vec<String>,
    /// Flows to a pod.
    #[arg(long)]
    pub to_pod: Vec<String>,
    /// Flows from or to a pod.
    #[arg(long)]
    pub pod: Vec<String>,
    /// Flows from or to every pod of a namespace.
    #[arg(long, short)]
    pub namespace: Vec<String>,
    /// Flows from endpoints with this label selector (`app=web`, `k8s:app in (a,b)`).
    #[arg(long)]
    pub from_label: Vec<String>,
    /// Flows to endpoints with this label selector.
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Flows from or to endpoints with this label selector.
    #[arg(long, short)]
    pub label: Vec<String>,
    /// Flows from an IP or CIDR.
    #[arg(long)]
    pub from_ip: Vec<String>,
    /// Flows to an IP or CIDR.
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Flows from or to an IP or CIDR.
    #[arg(long)]
    pub ip: Vec<String>,
    /// Flows from a port.
    #[arg(long)]
    pub from_port: Vec<String>,
    /// Flows to a port.
    #[arg(long)]
    pub to_port: Vec<String>,
    /// Flows from or to a port.
    #[arg(long)]
    pub port: Vec<String>,
    /// Flows from a security identity.
    #[arg(long)]
    pub from_identity: Vec<u32>,
    /// Flows to a security identity.
    #[arg(long)]
    pub to_identity: Vec<u32>,
    /// Flows from or to a security identity.
    #[arg(long)]
    pub identity: Vec<u32>,
    /// L4 protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Verdict: `FORWARDED`, `DROPPED`, `AUDIT`, …
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Event type: drop, trace, policy-verdict (optionally `:SUBTYPE`, e.g. `drop:133`).
    #[arg(long = "type", short = 't')]
    pub event_type: Vec<String>,
    /// Drop reason name (`POLICY_DENIED`, `POLICY_DENY`, …) or number.
    #[arg(long)]
    pub drop_reason: Vec<String>,
    /// Only replies (`--reply`), or only non-replies (`--reply=false`).
    #[arg(long, alias = "is-reply", num_args = 0..=1, default_missing_value = "true")]
    pub reply: Option<bool>,
    /// Traffic direction: ingress or egress.
    #[arg(long)]
    pub traffic_direction: Vec<String>,
    /// Node name patterns (`node`, `cluster/node`, `cluster/`, `*` wildcards).
    #[arg(long)]
    pub node_name: Vec<String>,
    /// Node label selector.
    #[arg(long)]
    pub node_label: Vec<String>,
    /// Flows from a fully qualified domain name (`*.example.com` patterns).
    #[arg(long)]
    pub from_fqdn: Vec<String>,
    /// Flows to a fully qualified domain name.
    #[arg(long)]
    pub to_fqdn: Vec<String>,
    /// Flows from or to a fully qualified domain name.
    #[arg(long)]
    pub fqdn: Vec<String>,
    /// Flows from a workload (`name` or `kind/name`).
    #[arg(long)]
    pub from_workload: Vec<String>,
    /// Flows to a workload.
    #[arg(long)]
    pub to_workload: Vec<String>,
    /// Flows from or to a workload.
    #[arg(long)]
    pub workload: Vec<String>,
    /// Flows from a cluster.
    #[arg(long)]
    pub from_cluster: Vec<String>,
    /// Flows to a cluster.
    #[arg(long)]
    pub to_cluster: Vec<String>,
    /// Flows from or to a cluster.
    #[arg(long)]
    pub cluster: Vec<String>,
    /// HTTP status code (`404`) or class (`4+`, `40+`) of L7 flows.
    #[arg(long)]
    pub http_status: Vec<String>,
    /// HTTP method of L7 flows.
    #[arg(long)]
    pub http_method: Vec<String>,
    /// HTTP path of L7 flows (regular expression).
    #[arg(long)]
    pub http_path: Vec<String>,
    /// HTTP URL of L7 flows (regular expression).
    #[arg(long)]
    pub http_url: Vec<String>,
    /// Flow uuid.
    #[arg(long)]
    pub uuid: Vec<String>,
    /// TCP flags that must all be set (`SYN`, `SYN,ACK`, …).
    #[arg(long)]
    pub tcp_flags: Vec<String>,
    /// IP version: `v4` or `v6`.
    #[arg(long)]
    pub ip_version: Vec<String>,
    /// Negate the next filter flag (`--not --pod web`): matching flows are left out. Filled
    /// by [`split_not`] from `--not FLAG [VALUE]`.
    #[arg(long = "not-filter", hide = true)]
    pub not_filters: Vec<String>,
    /// Print the node name of each flow (compact and table output).
    #[arg(long)]
    pub print_node_name: bool,
    /// Field mask paths (comma-separated) sent with the request instead of the output's
    /// default (`time,source.pod_name,verdict`).
    #[arg(long, value_delimiter = ',')]
    pub field_mask: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Compact)]
    pub output: Output,
}

/// Filter flags that take a value (what `--not` may precede).
const VALUE_FLAGS: &[&str] = &[
    "--from-pod",
    "--to-pod",
    "--pod",
    "--namespace",
    "-n",
    "--from-label",
    "--to-label",
    "--label",
    "-l",
    "--from-ip",
    "--to-ip",
    "--ip",
    "--from-port",
    "--to-port",
    "--port",
    "--from-identity",
    "--to-identity",
    "--identity",
    "--protocol",
    "--verdict",
    "--type",
    "-t",
    "--drop-reason",
    "--traffic-direction",
    "--node-name",
    "--node-label",
    "--from-fqdn",
    "--to-fqdn",
    "--fqdn",
    "--from-workload",
    "--to-workload",
    "--workload",
    "--from-cluster",
    "--to-cluster",
    "--cluster",
    "--http-status",
    "--http-method",
    "--http-path",
    "--http-url",
    "--uuid",
    "--tcp-flags",
    "--ip-version",
];

/// Rewrites `--not FLAG VALUE` (and `--not FLAG=VALUE`, `--not --reply`) into the hidden
/// `--not-filter=FLAG=VALUE` form, so that `observe` can put that filter in the blacklist as
/// `hubble observe --not` does.
///
/// # Errors
///
/// `--not` at the end, or before something that is not a filter flag.
pub fn split_not(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a != "--not" {
            out.push(a);
            continue;
        }
        let flag = it
            .next()
            .context("--not must be followed by a filter flag")?;
        let name = flag.split_once('=').map_or(flag.as_str(), |(n, _)| n);
        if flag.contains('=') || name == "--reply" || name == "--is-reply" {
            out.push(format!("--not-filter={flag}"));
        } else if VALUE_FLAGS.contains(&name) {
            let value = it
                .next()
                .with_context(|| format!("--not {flag} needs a value"))?;
            out.push(format!("--not-filter={flag}={value}"));
        } else {
            bail!("--not must be followed by a filter flag, not `{flag}`");
        }
    }
    Ok(out)
}

fn workload(s: &str) -> pb::Workload {
    match s.split_once('/') {
        Some((kind, name)) => pb::Workload {
            name: name.to_owned(),
            kind: kind.to_owned(),
        },
        None => pb::Workload {
            name: s.to_owned(),
            kind: String::new(),
        },
    }
}

fn tcp_flags(s: &str) -> anyhow::Result<pb::TcpFlags> {
    let mut f = pb::TcpFlags::default();
    for name in s.split(',').map(str::trim) {
        match name.to_ascii_uppercase().as_str() {
            "FIN" => f.fin = true,
            "SYN" => f.syn = true,
            "RST" => f.rst = true,
            "PSH" => f.psh = true,
            "ACK" => f.ack = true,
            "URG" => f.urg = true,
            "ECE" => f.ece = true,
            "CWR" => f.cwr = true,
            "NS" => f.ns = true,
            other => bail!("unknown TCP flag `{other}` in --tcp-flags"),
        }
    }
    Ok(f)
}

fn pod_name(s: &str) -> String {
    if s.contains('/') {
        s.to_owned()
    } else {
        format!("default/{s}")
    }
}

fn enum_value(what: &str, name: &str, parse: impl Fn(&str) -> Option<i32>) -> anyhow::Result<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return Ok(n);
    }
    parse(&name.to_ascii_uppercase()).with_context(|| format!("unknown {what} `{name}`"))
}

fn event_type(s: &str) -> anyhow::Result<EventTypeFilter> {
    let (name, sub) = match s.split_once(':') {
        Some((n, sub)) => (n, Some(sub)),
        None => (s, None),
    };
    let ty = match name {
        "drop" => 1,
        "debug" => 2,
        "capture" => 3,
        "trace" => 4,
        "policy-verdict" => 5,
        "l7" => 129,
        "agent" => 130,
        n => n
            .parse()
            .with_context(|| format!("unknown event type `{n}`"))?,
    };
    let sub_type = match sub {
        Some(s) => Some(match s {
            "to-endpoint" => 0,
            _ => s
                .parse::<i32>()
                .with_context(|| format!("invalid sub type `{s}`"))?,
        }),
        None => None,
    };
    Ok(EventTypeFilter {
        r#type: ty,
        match_sub_type: sub_type.is_some(),
        sub_type: sub_type.unwrap_or(0),
    })
}

/// Builds the whitelist: the flags without a side go in every filter; `--pod`, `--ip`, … make
/// one filter with them as source and one with them as destination (OR), like `hubble observe`.
pub fn filters(a: &ObserveArgs) -> anyhow::Result<Vec<FlowFilter>> {
    let mut base = FlowFilter {
        node_labels: a.node_label.clone(),
        source_fqdn: a.from_fqdn.clone(),
        destination_fqdn: a.to_fqdn.clone(),
        source_workload: a.from_workload.iter().map(|w| workload(w)).collect(),
        destination_workload: a.to_workload.iter().map(|w| workload(w)).collect(),
        source_cluster_name: a.from_cluster.clone(),
        destination_cluster_name: a.to_cluster.clone(),
        http_status_code: a.http_status.clone(),
        http_method: a.http_method.clone(),
        http_path: a.http_path.clone(),
        http_url: a.http_url.clone(),
        uuid: a.uuid.clone(),
        tcp_flags: a
            .tcp_flags
            .iter()
            .map(|t| tcp_flags(t))
            .collect::<anyhow::Result<_>>()?,
        protocol: a.protocol.clone(),
        reply: a.reply.into_iter().collect(),
        node_name: a.node_name.clone(),
        source_pod: a.from_pod.iter().map(|p| pod_name(p)).collect(),
        destination_pod: a.to_pod.iter().map(|p| pod_name(p)).collect(),
        source_label: a.from_label.clone(),
        destination_label: a.to_label.clone(),
        source_ip: a.from_ip.clone(),
        destination_ip: a.to_ip.clone(),
        source_port: a.from_port.clone(),
        destination_port: a.to_port.clone(),
        source_identity: a.from_identity.clone(),
        destination_identity: a.to_identity.clone(),
        ..FlowFilter::default()
    };
    for v in &a.verdict {
        base.verdict.push(enum_value("verdict", v, |s| {
            pb::Verdict::from_str_name(s).map(Into::into)
        })?);
    }
    for d in &a.drop_reason {
        base.drop_reason_desc
            .push(enum_value("drop reason", d, |s| {
                pb::DropReason::from_str_name(s).map(Into::into)
            })?);
    }
    for d in &a.traffic_direction {
        base.traffic_direction
            .push(enum_value("traffic direction", d, |s| {
                pb::TrafficDirection::from_str_name(s).map(Into::into)
            })?);
    }
    for t in &a.event_type {
        base.event_type.push(event_type(t)?);
    }
    for v in &a.ip_version {
        base.ip_version.push(match v.to_ascii_lowercase().as_str() {
            "v4" | "4" | "ipv4" => pb::IpVersion::IPv4.into(),
            "v6" | "6" | "ipv6" => pb::IpVersion::IPv6.into(),
            other => bail!("unknown IP version `{other}` (expected v4 or v6)"),
        });
    }
    let either_pods: Vec<String> = a
        .pod
        .iter()
        .map(|p| pod_name(p))
        .chain(a.namespace.iter().map(|n| format!("{n}/")))
        .collect();
    let either = !(either_pods.is_empty()
        && a.fqdn.is_empty()
        && a.workload.is_empty()
        && a.cluster.is_empty()
        && a.label.is_empty()
        && a.ip.is_empty()
        && a.port.is_empty()
        && a.identity.is_empty());
    if !either {
        return Ok(vec![base]);
    }
    let mut src = base.clone();
    src.source_pod.extend(either_pods.iter().cloned());
    src.source_label.extend(a.label.iter().cloned());
    src.source_ip.extend(a.ip.iter().cloned());
    src.source_port.extend(a.port.iter().cloned());
    src.source_identity.extend(a.identity.iter().copied());
    src.source_fqdn.extend(a.fqdn.iter().cloned());
    src.source_workload
        .extend(a.workload.iter().map(|w| workload(w)));
    src.source_cluster_name.extend(a.cluster.iter().cloned());
    let mut dst = base;
    dst.destination_pod.extend(either_pods);
    dst.destination_label.extend(a.label.iter().cloned());
    dst.destination_ip.extend(a.ip.iter().cloned());
    dst.destination_port.extend(a.port.iter().cloned());
    dst.destination_identity.extend(a.identity.iter().copied());
    dst.destination_fqdn.extend(a.fqdn.iter().cloned());
    dst.destination_workload
        .extend(a.workload.iter().map(|w| workload(w)));
    dst.destination_cluster_name
        .extend(a.cluster.iter().cloned());
    Ok(vec![src, dst])
}

/// Parses `5m`, `1h30m`, `90s`, `250ms` into a duration.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            Duration::from_millis(1)
        } else {
            match c {
                's' => Duration::from_secs(1),
                'm' => Duration::from_mins(1),
                'h' => Duration::from_hours(1),
                'd' => Duration::from_hours(24),
                _ => return None,
            }
        };
        total += unit * u32::try_from(n).ok()?;
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

/// Days since the Unix epoch of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses RFC 3339 (`2026-11-26T03:41:30Z`, fractional seconds and `+hh:mm` offsets allowed).
#[expect(
    clippy::many_single_char_names,
    reason = "date arithmetic reads best with y, m, d"
)]
fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    let mut rest = &s[19..];
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        rest = &frac[digits.len()..];
        let padded = format!("{digits:0<9}");
        nanos = padded[..9].parse().ok()?;
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// A `--since`/`--until` value as nanoseconds since the epoch.
pub fn parse_time(s: &str, now_ns: i128) -> anyhow::Result<i128> {
    if let Some(d) = parse_duration(s) {
        return Ok(now_ns - i128::try_from(d.as_nanos())?);
    }
    parse_rfc3339(s)
        .with_context(|| format!("invalid time `{s}`: expected RFC 3339 or a duration such as 5m"))
}

/// The `GetFlows` request for the flags.
pub fn request(a: &ObserveArgs) -> anyhow::Result<GetFlowsRequest> {
    let now = i128::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos(),
    )?;
    let since = a.since.as_deref().map(|s| parse_time(s, now)).transpose()?;
    let until = a.until.as_deref().map(|s| parse_time(s, now)).transpose()?;
    let (number, first) = match (a.first, a.last, a.all) {
        (Some(n), _, _) => (n, true),
        (None, _, true) => (u64::MAX, false),
        (None, Some(n), false) => (n, false),
        (None, None, false) if a.follow || since.is_some() => (0, false),
        (None, None, false) => (20, false),
    };
    let compact_mask = matches!(a.output, Output::Compact | Output::Table);
    let mask = if a.field_mask.is_empty() {
        compact_mask.then(default_mask)
    } else {
        Some(prost_types::FieldMask {
            paths: a.field_mask.clone(),
        })
    };
    let mut blacklist = Vec::new();
    if !a.not_filters.is_empty() {
        let mut argv = vec!["observe".to_owned()];
        for f in &a.not_filters {
            // `--flag=value` as one token keeps values that start with `-`.
            argv.push(f.clone());
        }
        let neg = <NotArgs as clap::Parser>::try_parse_from(&argv)
            .map_err(|e| anyhow::anyhow!("--not: {e}"))?;
        blacklist = filters(&neg.args)?;
    }
    Ok(GetFlowsRequest {
        number,
        first,
        follow: a.follow,
        blacklist,
        whitelist: filters(a)?,
        since: since.map(timestamp),
        until: until.map(timestamp),
        field_mask: mask,
    })
}

/// Parser of the negated filter flags.
#[derive(clap::Parser)]
struct NotArgs {
    #[command(flatten)]
    args: ObserveArgs,
}

/// The field mask of compact and table output (what `hubble observe` sends).
fn default_mask() -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: [
            "time",
            "source.identity",
            "source.namespace",
            "source.pod_name",
            "destination.identity",
            "destination.namespace",
            "destination.pod_name",
            "source_service",
            "destination_service",
            "l4",
            "IP",
            "ethernet",
            "l7",
            "Type",
            "node_name",
            "is_reply",
            "event_type",
            "verdict",
            "Summary",
            "traffic_direction",
            "policy_match_type",
            "drop_reason_desc",
            "trace_observation_point",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

/// Connects to `server` (`unix:///path`, `host:port`, `http://host:port`).
pub async fn connect(server: &str, timeout: Duration) -> anyhow::Result<Channel> {
    if let Some(path) = server.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        let p = path.clone();
        return Endpoint::try_from("http://[::]:4244")?
            .connect_timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to {}", path.display()));
    }
    let uri = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    Endpoint::try_from(uri.clone())?
        .connect_timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {uri}"))
}

/// `catalyst-agent observe`.
pub async fn observe(a: ObserveArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let req = request(&a)?;
    let channel = a.server.connect().await?;
    let mut client = ObserverClient::new(channel);
    let mut stream = client
        .get_flows(req)
        .await
        .map_err(|s| anyhow::anyhow!("GetFlows: {}", s.message()))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    let mut table = print::Table::new(a.print_node_name);
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("GetFlows: {}", s.message()))?
    {
        let line = match (&resp.response_types, a.output) {
            (_, Output::Json | Output::Jsonpb) => print::response_json(&resp).to_string(),
            (Some(ResponseTypes::Flow(f)), Output::Compact) => {
                print::compact_with(f, a.print_node_name)
            }
            (Some(ResponseTypes::Flow(f)), Output::Table) => {
                table.push(f);
                // Following: one aligned line at a time; otherwise aligned at the end.
                if !a.follow {
                    continue;
                }
                table.take_lines().join("\n")
            }
            (Some(ResponseTypes::Flow(f)), Output::Dict) => {
                let sep = if n == 0 { "" } else { "------------\n" };
                format!("{sep}{}", print::dict(f))
            }
            (Some(ResponseTypes::LostEvents(l)), _) => format!(
                "EVENTS LOST: {} {} (node {})",
                pb::LostEventSource::try_from(l.source).map_or("UNKNOWN", |s| s.as_str_name()),
                l.num_events_lost,
                resp.node_name
            ),
            (Some(ResponseTypes::NodeStatus(s)), _) => {
                format!("NODE STATUS: {} {:?}", s.message, s.node_names)
            }
            (None, _) => continue,
        };
        n += 1;
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): stop quietly like hubble does.
            return Ok(());
        }
    }
    for line in table.take_lines() {
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `catalyst-agent status`.
pub async fn status(a: ServerArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let channel = a.connect().await?;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: HEALTH_SERVICE.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("health check: {}", s.message()))?
        .into_inner();
    let ok = health.status == ServingStatus::Serving as i32;
    println!(
        "Healthcheck (via {}): {}",
        a.server,
        if ok { "Ok" } else { "Not serving" }
    );
    if !ok {
        bail!("{HEALTH_SERVICE} is not serving");
    }
    let s = ObserverClient::new(channel)
        .server_status(ServerStatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("ServerStatus: {}", s.message()))?
        .into_inner();
    #[expect(clippy::cast_precision_loss, reason = "a percentage for display")]
    let pct = if s.max_flows == 0 {
        0.0
    } else {
        100.0 * s.num_flows as f64 / s.max_flows as f64
    };
    println!(
        "Current/Max Flows: {}/{} ({pct:.2}%)",
        thousands(s.num_flows),
        thousands(s.max_flows)
    );
    println!("Flows/s: {:.2}", s.flows_rate);
    let connected = s.num_connected_nodes.unwrap_or(1);
    println!(
        "Connected Nodes: {connected}/{}",
        connected + s.num_unavailable_nodes.unwrap_or(0)
    );
    println!("Seen Flows: {}", thousands(s.seen_flows));
    println!(
        "Uptime: {:?}",
        Duration::from_secs(s.uptime_ns / 1_000_000_000)
    );
    println!("Version: {}", s.version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: ObserveArgs,
    }

    fn args(v: &[&str]) -> ObserveArgs {
        T::try_parse_from(std::iter::once("observe").chain(v.iter().copied()))
            .expect("parses")
            .a
    }

    #[test]
    fn time_parsing() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            parse_rfc3339("2026-11-26T00:00:00.5+01:00"),
            Some((1_795_651_200 - 3600) * 1_000_000_000 + 500_000_000)
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_mins(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(
            parse_time("10s", 20_000_000_000).expect("ok"),
            10_000_000_000
        );
        assert!(parse_time("yesterday", 0).is_err());
    }

    fn with_not(a: &[&str]) -> ObserveArgs {
        let mut argv: Vec<String> = vec!["observe".into()];
        argv.extend(a.iter().map(|s| (*s).to_owned()));
        let argv = split_not(argv).expect("split");
        args(&argv[1..].iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn not_puts_the_next_filter_in_the_blacklist() {
        let r = request(&with_not(&[
            "--verdict",
            "DROPPED",
            "--not",
            "--pod",
            "shop/web",
            "--not",
            "--reply",
            "--not",
            "--to-port=22",
        ]))
        .expect("ok");
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].verdict, [pb::Verdict::Dropped as i32]);
        // --pod is either side: two blacklist filters, each with every negated flag.
        assert_eq!(r.blacklist.len(), 2);
        assert_eq!(r.blacklist[0].source_pod, ["shop/web"]);
        assert_eq!(r.blacklist[1].destination_pod, ["shop/web"]);
        assert_eq!(r.blacklist[0].reply, [true]);
        assert_eq!(r.blacklist[0].destination_port, ["22"]);
        assert!(split_not(vec!["observe".into(), "--not".into()]).is_err());
        assert!(split_not(vec!["observe".into(), "--not".into(), "--follow".into()]).is_err());
    }

    #[test]
    fn l7_fqdn_workload_cluster_and_mask_flags() {
        let r = request(&args(&[
            "--to-fqdn",
            "*.example.com",
            "--http-status",
            "5+",
            "--http-method",
            "GET",
            "--from-workload",
            "Deployment/web",
            "--cluster",
            "eu1",
            "--tcp-flags",
            "SYN,ACK",
            "--ip-version",
            "v6",
            "--field-mask",
            "time,verdict",
        ]))
        .expect("ok");
        assert_eq!(r.whitelist.len(), 2);
        let f = &r.whitelist[0];
        assert_eq!(f.destination_fqdn, ["*.example.com"]);
        assert_eq!(f.http_status_code, ["5+"]);
        assert_eq!(f.http_method, ["GET"]);
        assert_eq!(f.source_workload[0].kind, "Deployment");
        assert_eq!(f.source_cluster_name, ["eu1"]);
        assert_eq!(r.whitelist[1].destination_cluster_name, ["eu1"]);
        assert!(f.tcp_flags[0].syn && f.tcp_flags[0].ack && !f.tcp_flags[0].fin);
        assert_eq!(f.ip_version, [pb::IpVersion::IPv6 as i32]);
        assert_eq!(r.field_mask.expect("mask").paths, ["time", "verdict"]);
        assert!(request(&args(&["--tcp-flags", "XYZ"])).is_err());
    }

    #[test]
    fn table_output_aligns_columns_like_hubble() {
        let f = pb::Flow {
            time: Some(timestamp(1_795_651_200_000_000_000)),
            node_name: "n1".into(),
            verdict: pb::Verdict::Forwarded.into(),
            summary: "TCP Flags: SYN".into(),
            is_reply: Some(false),
            ip: Some(pb::Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.22".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut t = print::Table::new(true);
        t.push(&f);
        t.push(&f);
        let lines = t.take_lines();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIMESTAMP"), "{lines:?}");
        assert!(lines[0].contains("NODE") && lines[0].ends_with("SUMMARY"));
        let col = |l: &str, w: &str| l.find(w).expect(w);
        assert_eq!(col(&lines[0], "DESTINATION"), col(&lines[1], "10.0.0.22"));
        assert!(lines[1].contains("FORWARDED"));
        assert!(!print::compact_with(&f, false).contains("[n1]"));
        assert!(print::compact_with(&f, true).contains("[n1]"));
    }

    #[test]
    fn flags_build_hubble_like_filters() {
        let r = request(&args(&[
            "--pod",
            "shop/web",
            "--verdict",
            "dropped",
            "--type",
            "drop",
            "--reply=false",
        ]))
        .expect("ok");
        assert_eq!(r.number, 20);
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, vec!["shop/web"]);
        assert_eq!(r.whitelist[1].destination_pod, vec!["shop/web"]);
        for f in &r.whitelist {
            assert_eq!(f.verdict, vec![pb::Verdict::Dropped as i32]);
            assert_eq!(f.event_type[0].r#type, 1);
            assert_eq!(f.reply, vec![false]);
        }
        assert!(r.field_mask.is_some());
        let r = request(&args(&[
            "--from-pod",
            "client",
            "--to-port",
            "80",
            "-f",
            "-o",
            "json",
        ]))
        .expect("ok");
        assert_eq!((r.number, r.follow), (0, true));
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].source_pod, vec!["default/client"]);
        assert_eq!(r.whitelist[0].destination_port, vec!["80"]);
        assert!(r.field_mask.is_none());
        let r = request(&args(&["--first", "5", "--drop-reason", "POLICY_DENY"])).expect("ok");
        assert_eq!((r.number, r.first), (5, true));
        assert_eq!(r.whitelist[0].drop_reason_desc, vec![181]);
        assert!(request(&args(&["--verdict", "maybe"])).is_err());
    }
}
