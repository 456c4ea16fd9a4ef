//! Prometheus metrics: Hubble-compatible `hubble_*` families computed from the flows, and
//! `catalyst_*` families from the datapath counters map.
//!
//! Label cardinality is bounded: every label takes its values from a closed set (verdicts, drop
//! reasons, directions, match types, flags, protocols) except `port`, whose distinct values are
//! capped by `metrics.max_ports` (further ports are counted as `port="other"`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use catalyst_policy::http::{HttpLimits, HttpRefusals};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use catalyst_policy::datapath::{
    COUNTER_REASONS, DIR_EGRESS, DIR_INGRESS, EV_F_REPLY, EVENT_DROP, EVENT_POLICY_VERDICT,
    FlowEvent, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, STAT_AUDIT,
    STAT_CT_CREATED, STAT_CT_ENDED, STAT_CT_REEVALUATED, STAT_EVENTS_LOST, STAT_EVENTS_SENT,
    STAT_NO_ENDPOINT, STAT_NOT_POLICED, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
    counter_index,
};

use crate::flow::{drop_reason_name, print};

/// Labels of `hubble_flows_processed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `Trace`, `Drop`, `PolicyVerdict`.
    pub r#type: &'static str,
    /// Observation point for traces (`to-endpoint`, `from-endpoint`), empty otherwise.
    pub subtype: &'static str,
    /// Verdict name.
    pub verdict: &'static str,
    /// L4 protocol name.
    pub protocol: &'static str,
}

/// Labels of `hubble_drop_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Drop reason name.
    pub reason: &'static str,
    /// L4 protocol name.
    pub protocol: &'static str,
}

/// Labels of `hubble_policy_verdicts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// Match type (`l3-l4`, `l3-only`, `all`, `none`, …).
    pub r#match: &'static str,
    /// `forwarded`, `dropped`, `audit`.
    pub action: &'static str,
}

/// Labels of `hubble_tcp_flags_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpFlagLabels {
    /// `SYN`, `SYN-ACK`, `FIN`, `RST`.
    pub flag: &'static str,
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
}

/// Labels of `hubble_port_distribution_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// L4 protocol name.
    pub protocol: &'static str,
    /// Destination port, or `other` past the cardinality cap.
    pub port: String,
}

/// Labels of `hubble_lost_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    /// `perf_event_ring_buffer`, `observer_events_queue`, `hubble_ring_buffer`.
    pub source: &'static str,
}

/// Labels of `catalyst_datapath_packets_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// `forwarded` or `dropped`.
    pub outcome: &'static str,
    /// Drop reason name, empty when forwarded.
    pub reason: &'static str,
}

/// Labels of `catalyst_datapath_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatLabels {
    /// What the counter counts.
    pub kind: &'static str,
}

/// The Hubble flow metrics.
#[derive(Clone)]
pub struct FlowMetrics {
    flows: Family<FlowLabels, Counter>,
    drops: Family<DropLabels, Counter>,
    policy: Family<PolicyLabels, Counter>,
    tcp_flags: Family<TcpFlagLabels, Counter>,
    ports: Family<PortLabels, Counter>,
    lost: Family<LostLabels, Counter>,
    max_ports: usize,
}

impl FlowMetrics {
    /// Registers the `hubble_*` families (the caller passes the `hubble`-prefixed registry).
    pub fn register(registry: &mut Registry, max_ports: usize) -> Self {
        let me = Self {
            flows: Family::default(),
            drops: Family::default(),
            policy: Family::default(),
            tcp_flags: Family::default(),
            ports: Family::default(),
            lost: Family::default(),
            max_ports,
        };
        registry.register(
            "flows_processed",
            "Total number of flows processed",
            me.flows.clone(),
        );
        registry.register("drop", "Number of drops", me.drops.clone());
        registry.register(
            "policy_verdicts",
            "Number of policy verdicts",
            me.policy.clone(),
        );
        registry.register("tcp_flags", "TCP flag occurrences", me.tcp_flags.clone());
        registry.register(
            "port_distribution",
            "Numbers of packets distributed by destination port",
            me.ports.clone(),
        );
        registry.register("lost_events", "Number of lost events", me.lost.clone());
        me
    }

    /// A recorder for the flow pipeline (its single writer): it resolves each label set once
    /// and keeps the counter, so counting an event costs a small-integer hash lookup.
    pub fn recorder(&self) -> FlowRecorder {
        FlowRecorder {
            metrics: self.clone(),
            cache: HashMap::new(),
            ports: HashSet::new(),
        }
    }

    /// Counts lost events from `source` (`perf_event_ring_buffer`, …).
    pub fn lost(&self, source: &'static str, n: u64) {
        self.lost.get_or_create(&LostLabels { source }).inc_by(n);
    }
}

/// Counts flow events into [`FlowMetrics`] straight from the datapath event.
pub struct FlowRecorder {
    metrics: FlowMetrics,
    /// Counter per packed label key (see [`FlowRecorder::observe`]).
    cache: HashMap<u64, Counter>,
    /// (protocol, port) pairs that have their own `port` label.
    ports: HashSet<(u8, u16)>,
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        VERDICT_FORWARDED => "FORWARDED",
        VERDICT_DROPPED => "DROPPED",
        VERDICT_AUDIT => "AUDIT",
        _ => "VERDICT_UNKNOWN",
    }
}

fn protocol_label(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        PROTO_ICMP => "ICMPv4",
        PROTO_ICMPV6 => "ICMPv6",
        _ => "",
    }
}

impl FlowRecorder {
    fn counter(&mut self, key: u64, make: impl FnOnce(&FlowMetrics) -> Counter) -> &Counter {
        let m = &self.metrics;
        self.cache.entry(key).or_insert_with(|| make(m))
    }

    /// Counts one datapath event. Keys pack a family tag (top byte) and the raw label values.
    #[expect(clippy::too_many_lines, reason = "one block per Hubble metric family")]
    pub fn observe(&mut self, ev: &FlowEvent) {
        let (kind, verdict, proto, dir) = (ev.kind, ev.verdict, ev.protocol, ev.direction);
        let raw = |tag: u64, a: u8, b: u8, c: u8, d: u8| {
            tag << 56 | u64::from(a) << 24 | u64::from(b) << 16 | u64::from(c) << 8 | u64::from(d)
        };
        self.counter(raw(1, kind, verdict, proto, dir), |m| {
            let (ty, subtype) = match (kind, dir) {
                (EVENT_DROP, _) => ("Drop", ""),
                (EVENT_POLICY_VERDICT, _) => ("PolicyVerdict", ""),
                (_, DIR_INGRESS) => ("Trace", "to-endpoint"),
                (_, DIR_EGRESS) => ("Trace", "from-endpoint"),
                _ => ("Trace", "unknown"),
            };
            let labels = FlowLabels {
                r#type: ty,
                subtype,
                verdict: verdict_name(verdict),
                protocol: protocol_label(proto),
            };
            m.flows.get_or_create(&labels).clone()
        })
        .inc();
        // A denied connection is one drop plus its policy-verdict event: count the drop once.
        if verdict == VERDICT_DROPPED && kind != EVENT_POLICY_VERDICT {
            let reason = ev.drop_reason;
            self.counter(raw(2, reason, proto, 0, 0), |m| {
                let labels = DropLabels {
                    reason: drop_reason_name(reason),
                    protocol: protocol_label(proto),
                };
                m.drops.get_or_create(&labels).clone()
            })
            .inc();
        }
        if kind == EVENT_POLICY_VERDICT {
            let mt = ev.match_type;
            self.counter(raw(3, dir, mt, verdict, 0), |m| {
                let direction = match dir {
                    DIR_INGRESS => "ingress",
                    DIR_EGRESS => "egress",
                    _ => "unknown",
                };
                let action = match verdict {
                    VERDICT_FORWARDED => "forwarded",
                    VERDICT_DROPPED => "dropped",
                    VERDICT_AUDIT => "audit",
                    _ => "unknown",
                };
                let labels = PolicyLabels {
                    direction,
                    r#match: print::match_type_label(u32::from(mt)),
                    action,
                };
                m.policy.get_or_create(&labels).clone()
            })
            .inc();
        }
        if proto == PROTO_TCP {
            let f = ev.tcp_flags;
            let flag = match (f & 0x02 != 0, f & 0x10 != 0, f & 0x01 != 0, f & 0x04 != 0) {
                (true, true, _, _) => Some("SYN-ACK"),
                (true, false, _, _) => Some("SYN"),
                (_, _, true, _) => Some("FIN"),
                (_, _, _, true) => Some("RST"),
                _ => None,
            };
            if let Some(flag) = flag {
                let family = ev.family;
                self.counter(
                    raw(4, family, 0, 0, 0) | u64::from(flag.len() as u8) << 32,
                    |m| {
                        let labels = TcpFlagLabels {
                            flag,
                            family: if family == 6 { "IPv6" } else { "IPv4" },
                        };
                        m.tcp_flags.get_or_create(&labels).clone()
                    },
                )
                .inc();
            }
        }
        // Port distribution counts new flows towards a port, not replies.
        if verdict == VERDICT_FORWARDED
            && ev.flags & EV_F_REPLY == 0
            && matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
        {
            let port = ev.dport;
            let own = self.ports.contains(&(proto, port))
                || (self.ports.len() < self.metrics.max_ports && self.ports.insert((proto, port)));
            let key = if own {
                raw(5, proto, 0, 0, 0) | u64::from(port) << 32
            } else {
                raw(6, proto, 0, 0, 0)
            };
            self.counter(key, |m| {
                let labels = PortLabels {
                    protocol: protocol_label(proto),
                    port: if own {
                        port.to_string()
                    } else {
                        "other".to_owned()
                    },
                };
                m.ports.get_or_create(&labels).clone()
            })
            .inc();
        }
    }
}

/// The `catalyst_*` families fed from the datapath counters map.
#[derive(Clone)]
pub struct DatapathMetrics {
    packets: Family<PacketLabels, Counter>,
    stats: Family<StatLabels, Counter>,
    revision: Gauge,
    ring_flows: Gauge,
    malformed: Counter,
    policy_delay: Histogram,
    policy_rejected: Counter,
    policy_entries: Gauge,
    conntrack_entries: Gauge,
    conntrack_gc_removed: Counter,
    last: Arc<Mutex<Vec<u64>>>,
}

impl DatapathMetrics {
    /// Registers the `catalyst_*` families (the caller passes the `catalyst`-prefixed registry).
    pub fn register(registry: &mut Registry) -> Self {
        let me = Self {
            packets: Family::default(),
            stats: Family::default(),
            revision: Gauge::default(),
            ring_flows: Gauge::default(),
            malformed: Counter::default(),
            // 1 ms … ~8 s.
            policy_delay: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            policy_rejected: Counter::default(),
            policy_entries: Gauge::default(),
            conntrack_entries: Gauge::default(),
            conntrack_gc_removed: Counter::default(),
            last: Arc::default(),
        };
        registry.register(
            "datapath_packets",
            "Packets seen by the datapath, by direction, outcome and drop reason",
            me.packets.clone(),
        );
        registry.register(
            "datapath_events",
            "Datapath statistics by kind",
            me.stats.clone(),
        );
        registry.register(
            "policy_revision",
            "Policy revision in force in the datapath",
            me.revision.clone(),
        );
        registry.register(
            "flow_ring_flows",
            "Flows held in the in-memory flow ring",
            me.ring_flows.clone(),
        );
        registry.register(
            "policy_implementation_delay_seconds",
            "Time from a policy or endpoint change being observed to the maps being updated",
            me.policy_delay.clone(),
        );
        registry.register(
            "policy_changes_rejected",
            "Configuration or policy changes rejected (the policy in force stayed)",
            me.policy_rejected.clone(),
        );
        registry.register(
            "policy_map_entries",
            "Entries in the policy map",
            me.policy_entries.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Live entries in the conntrack table at the last garbage-collection sweep",
            me.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_gc_removed",
            "Expired conntrack entries removed by the garbage collector",
            me.conntrack_gc_removed.clone(),
        );
        registry.register(
            "flow_events_malformed",
            "Ring-buffer records too short to be a flow event",
            me.malformed.clone(),
        );
        me
    }

    /// Applies a fresh read of the counters map (summed over CPUs); counters grow by the delta.
    pub fn update_counters(&self, counters: &[u64]) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.len() != counters.len() {
            *last = vec![0; counters.len()];
        }
        let delta = |slot: u32, last: &mut Vec<u64>| {
            let i = slot as usize;
            let now = counters.get(i).copied().unwrap_or(0);
            let d = now.saturating_sub(last[i]);
            last[i] = now;
            d
        };
        for (dir, dname) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
            for reason in 0..COUNTER_REASONS {
                let d = delta(counter_index(dir, reason as u8), &mut last);
                if d == 0 {
                    continue;
                }
                let labels = if reason == 0 {
                    PacketLabels {
                        direction: dname,
                        outcome: "forwarded",
                        reason: "",
                    }
                } else {
                    PacketLabels {
                        direction: dname,
                        outcome: "dropped",
                        reason: drop_reason_name(reason as u8),
                    }
                };
                self.packets.get_or_create(&labels).inc_by(d);
            }
        }
        for (slot, kind) in [
            (STAT_EVENTS_SENT, "events_sent"),
            (STAT_EVENTS_LOST, "events_lost"),
            (STAT_CT_CREATED, "conntrack_created"),
            (STAT_CT_REEVALUATED, "conntrack_reevaluated"),
            (STAT_CT_ENDED, "conntrack_ended"),
            (STAT_AUDIT, "audited"),
            (STAT_NO_ENDPOINT, "no_endpoint"),
            (STAT_NOT_POLICED, "not_policed"),
        ] {
            let d = delta(slot, &mut last);
            if d > 0 {
                self.stats.get_or_create(&StatLabels { kind }).inc_by(d);
            }
        }
    }

    /// Sets the policy revision gauge.
    pub fn set_revision(&self, revision: u32) {
        self.revision.set(i64::from(revision));
    }

    /// Records one applied change: its implementation delay and the policy entries now in force.
    pub fn policy_applied(&self, delay: std::time::Duration, entries: usize) {
        self.policy_delay.observe(delay.as_secs_f64());
        self.set_policy_entries(entries);
    }

    /// Sets the number of policy entries in force.
    pub fn set_policy_entries(&self, entries: usize) {
        self.policy_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Records a conntrack garbage-collection sweep.
    pub fn conntrack_swept(&self, live: u64, removed: u64) {
        self.conntrack_entries
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        self.conntrack_gc_removed.inc_by(removed);
    }

    /// Counts a rejected configuration or policy change.
    pub fn policy_rejected(&self) {
        self.policy_rejected.inc();
    }

    /// Sets the number of flows held in the ring.
    pub fn set_ring_flows(&self, n: usize) {
        self.ring_flows.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts malformed ring-buffer records.
    pub fn malformed(&self) {
        self.malformed.inc();
    }
}

/// Every metric of the agent.
#[derive(Clone)]
pub struct Metrics {
    /// The registry to encode.
    pub registry: Arc<Registry>,
    /// `hubble_*`.
    pub flows: FlowMetrics,
    /// `catalyst_*`.
    pub datapath: DatapathMetrics,
    /// Flows processed (for status and logs).
    pub processed: Arc<AtomicU64>,
    /// `catalyst_nats_flows_*`.
    pub nats: crate::nats::ExportMetrics,
    /// `catalyst_signals_*`.
    pub signals: crate::nats::ExportMetrics,
    /// `catalyst_kubernetes_*` (zero in standalone mode).
    pub kubernetes: crate::k8s::KubernetesMetrics,
    /// `catalyst_http_refused_total`: refusals of the `/metrics` endpoint.
    pub http: HttpRefusals,
}

impl Metrics {
    /// A registry with both families.
    pub fn new(max_ports: usize) -> Self {
        let mut registry = Registry::default();
        let flows = FlowMetrics::register(registry.sub_registry_with_prefix("hubble"), max_ports);
        let catalyst = registry.sub_registry_with_prefix("catalyst");
        let datapath = DatapathMetrics::register(catalyst);
        let nats = crate::nats::ExportMetrics::register(catalyst, "nats_flows", "Flows");
        let signals =
            crate::nats::ExportMetrics::register(catalyst, "signals", "Compliance signals");
        let kubernetes = crate::k8s::KubernetesMetrics::register(catalyst);
        let http = HttpRefusals::register(catalyst);
        Self {
            registry: Arc::new(registry),
            flows,
            datapath,
            processed: Arc::default(),
            nats,
            signals,
            kubernetes,
            http,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Flows processed so far.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped, through the suite's HTTP
/// serve loop ([`catalyst_policy::http::serve`]) within `limits`; refusals are counted in
/// `catalyst_http_refused_total`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    limits: HttpLimits,
) -> std::io::Result<()> {
    use axum::{Router, http::header, routing::get};
    let refusals = metrics.http.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    catalyst_policy::http::serve(listener, app, limits, refusals, std::future::pending()).await
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use catalyst_policy::http::Refusal;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        max_request_bytes: 8192,
        max_connections: 2,
    };

    const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    async fn endpoint(limits: HttpLimits) -> (SocketAddr, Metrics) {
        let metrics = Metrics::new(16);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, metrics.clone(), limits));
        (addr, metrics)
    }

    /// Sends `request` and reads until the server closes (bounded by 10 s).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before reading all of an oversized request.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn metrics_endpoint_refuses_slow_oversized_and_excess_clients_and_counts_them() {
        let (addr, m) = endpoint(LIMITS).await;
        let ok = exchange(addr, GET_METRICS).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok:.200}");
        assert!(
            ok.contains("catalyst_http_refused_total{reason=\"timeout\"} 0"),
            "{ok}"
        );

        // A silent client and one that stops mid-head are disconnected, not answered.
        for (n, partial) in [(1, &b""[..]), (2, &b"GET /metrics HTTP/1.1\r\nHo"[..])] {
            let r = exchange(addr, partial).await;
            assert!(!r.contains(" 200 "), "answered an incomplete request: {r}");
            assert_eq!(m.http.get(Refusal::Timeout), n);
        }

        // A request head over max_request_bytes: 431 (or a reset that lost it), not an answer.
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(32 * 1024)
        );
        let r = exchange(addr, big.as_bytes()).await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r:.80}");
        assert_eq!(m.http.get(Refusal::TooLarge), 1);

        let e = exchange(addr, GET_METRICS).await;
        assert!(
            e.contains("catalyst_http_refused_total{reason=\"timeout\"} 2"),
            "{e}"
        );
        assert!(
            e.contains("catalyst_http_refused_total{reason=\"too_large\"} 1"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn metrics_endpoint_answers_503_over_max_connections() {
        let (addr, m) = endpoint(HttpLimits {
            // The held connections must outlive the refused one.
            request_timeout: Duration::from_secs(30),
            ..LIMITS
        })
        .await;
        let held = [
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        ];
        let r = exchange(addr, GET_METRICS).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert_eq!(m.http.get(Refusal::TooManyConnections), 1);
        drop(held);
    }
}
