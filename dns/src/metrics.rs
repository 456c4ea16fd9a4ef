//! Prometheus metrics (`catalyst_dns_*`). Query counters are created up front for every
//! (rcode, type) pair so the hot path is one atomic add.

use std::sync::Arc;

use catalyst_policy::http::{HttpLimits, HttpRefusals};
use hickory_proto::{op::ResponseCode, rr::RecordType};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(String, String)>;

const RCODES: &[&str] = &[
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
];
const QTYPES: &[&str] = &[
    "A", "AAAA", "CNAME", "MX", "NS", "SOA", "TXT", "SRV", "PTR", "CAA", "ANY", "DS", "OTHER",
];

fn rcode_index(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

fn qtype_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::MX => 3,
        RecordType::NS => 4,
        RecordType::SOA => 5,
        RecordType::TXT => 6,
        RecordType::SRV => 7,
        RecordType::PTR => 8,
        RecordType::CAA => 9,
        RecordType::ANY => 10,
        RecordType::DS => 11,
        _ => 12,
    }
}

/// Health-check metrics.
#[derive(Clone, Debug)]
pub struct HealthMetrics {
    checks: Family<Labels, Counter>,
    up: Family<Labels, Gauge>,
    /// Health events dropped because the queue to the publisher was full.
    pub events_dropped: Counter,
}

impl HealthMetrics {
    /// Register under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let checks = Family::<Labels, Counter>::default();
        let up = Family::<Labels, Gauge>::default();
        registry.register(
            "health_checks",
            "Health checks run, by target and result",
            checks.clone(),
        );
        registry.register(
            "health_up",
            "Health state by target (1 up, 0 down)",
            up.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "health_events_dropped",
            "Health events dropped because the queue to the publisher (health.events_buffer) was full",
            events_dropped.clone(),
        );
        Self {
            checks,
            up,
            events_dropped,
        }
    }

    /// Record one check result and the resulting state.
    pub fn observe(&self, target: &crate::health::Target, ok: bool, up: bool) {
        let t = target.to_string();
        self.checks
            .get_or_create(&vec![
                ("target".into(), t.clone()),
                (
                    "result".into(),
                    if ok { "success" } else { "failure" }.into(),
                ),
            ])
            .inc();
        self.up
            .get_or_create(&vec![("target".into(), t)])
            .set(i64::from(up));
    }
}

/// DNS server metrics.
#[derive(Debug)]
pub struct DnsMetrics {
    queries: Vec<Vec<Counter>>,
    /// Answers served from the answer cache.
    pub cache_hits: Counter,
    /// Queries answered by the full path.
    pub cache_misses: Counter,
    /// LUA evaluations.
    pub lua_evaluations: Counter,
    /// Malformed queries dropped or answered FORMERR.
    pub malformed: Counter,
    reloads: Family<Labels, Counter>,
    /// LUA records loaded.
    pub lua_records: Gauge,
    /// Static records loaded.
    pub static_records: Gauge,
    /// LUA records that failed to load (answering SERVFAIL), by zone.
    lua_records_failed: Family<Labels, Gauge>,
    /// Health metrics.
    pub health: HealthMetrics,
    /// Refusals of the metrics endpoint (`catalyst_dns_http_refused_total`).
    pub http: HttpRefusals,
}

impl DnsMetrics {
    /// Register under `registry` (give it a `catalyst_dns` prefixed sub-registry).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let family = Family::<Labels, Counter>::default();
        registry.register(
            "queries",
            "DNS queries answered, by rcode and type",
            family.clone(),
        );
        let queries = RCODES
            .iter()
            .map(|r| {
                QTYPES
                    .iter()
                    .map(|t| {
                        family
                            .get_or_create(&vec![
                                ("rcode".into(), (*r).into()),
                                ("qtype".into(), (*t).into()),
                            ])
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Answers served from the answer cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Queries answered by the full path",
            cache_misses.clone(),
        );
        let lua_evaluations = Counter::default();
        registry.register(
            "lua_evaluations",
            "Answers that evaluated LUA records",
            lua_evaluations.clone(),
        );
        let malformed = Counter::default();
        registry.register("malformed_queries", "Malformed queries", malformed.clone());
        let reloads = Family::<Labels, Counter>::default();
        registry.register("zone_reloads", "Zone reloads by result", reloads.clone());
        let lua_records = Gauge::default();
        registry.register("lua_records", "LUA records loaded", lua_records.clone());
        let static_records = Gauge::default();
        registry.register(
            "static_records",
            "Static records loaded",
            static_records.clone(),
        );
        let lua_records_failed = Family::<Labels, Gauge>::default();
        registry.register(
            "lua_records_failed",
            "LUA records that failed to load and answer SERVFAIL, by zone",
            lua_records_failed.clone(),
        );
        registry.register(
            "lua_exec_limit_exceeded",
            "Interpreter-tier LUA runs stopped by the instruction budget (lua.exec_limit)",
            crate::lua::interp::exec_limit_counter(),
        );
        let health = HealthMetrics::register(registry);
        let http = HttpRefusals::register(registry);
        Arc::new(Self {
            queries,
            cache_hits,
            cache_misses,
            lua_evaluations,
            malformed,
            reloads,
            lua_records,
            static_records,
            lua_records_failed,
            health,
            http,
        })
    }

    /// Count one answered query.
    pub fn query(&self, rcode: ResponseCode, qtype: RecordType) {
        self.queries[rcode_index(rcode)][qtype_index(qtype)].inc();
    }

    /// Record the counts of a freshly loaded zone set.
    pub fn zones_loaded(&self, set: &crate::zone::ZoneSet) {
        let lua: usize = set.zones().iter().map(|z| z.lua_records).sum();
        let stat: usize = set.zones().iter().map(|z| z.static_records).sum();
        self.lua_records.set(i64::try_from(lua).unwrap_or(i64::MAX));
        self.static_records
            .set(i64::try_from(stat).unwrap_or(i64::MAX));
        self.lua_records_failed.clear();
        for z in set.zones() {
            self.lua_records_failed
                .get_or_create(&vec![("zone".into(), z.origin_str.clone())])
                .set(i64::try_from(z.lua_failures.len()).unwrap_or(i64::MAX));
        }
    }

    /// Count a reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&vec![(
                "result".into(),
                if ok { "success" } else { "failure" }.into(),
            )])
            .inc();
    }
}

/// One UDP worker's query counts, added to the shared counters once per batch of datagrams
/// ([`QueryTally::flush`]). The counters are atomics every worker writes: one add per query
/// from each worker moves their cache lines between cores on every query. Counts are exact;
/// a scrape sees them at most one batch late.
#[derive(Debug, Default)]
pub struct QueryTally {
    queries: [[u32; QTYPES.len()]; RCODES.len()],
    cache_hits: u32,
    cache_misses: u32,
    malformed: u32,
    pending: bool,
}

impl QueryTally {
    /// Count one answered query.
    pub fn query(&mut self, rcode: ResponseCode, qtype: RecordType) {
        self.queries[rcode_index(rcode)][qtype_index(qtype)] += 1;
        self.pending = true;
    }

    /// Count an answer from the answer cache.
    pub fn cache_hit(&mut self) {
        self.cache_hits += 1;
        self.pending = true;
    }

    /// Count a query answered by the full path.
    pub fn cache_miss(&mut self) {
        self.cache_misses += 1;
        self.pending = true;
    }

    /// Count a malformed query.
    pub fn malformed(&mut self) {
        self.malformed += 1;
        self.pending = true;
    }

    /// Add the counts to `m` and start again from zero.
    pub fn flush(&mut self, m: &DnsMetrics) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        for (row, counters) in self.queries.iter_mut().zip(&m.queries) {
            for (n, c) in row.iter_mut().zip(counters) {
                if *n > 0 {
                    c.inc_by(u64::from(std::mem::take(n)));
                }
            }
        }
        for (n, c) in [
            (&mut self.cache_hits, &m.cache_hits),
            (&mut self.cache_misses, &m.cache_misses),
            (&mut self.malformed, &m.malformed),
        ] {
            if *n > 0 {
                c.inc_by(u64::from(std::mem::take(n)));
            }
        }
    }
}

/// The routes: `GET /metrics` (OpenMetrics text) and `GET /health`.
fn router(registry: Arc<Registry>, limits: HttpLimits) -> axum::Router {
    use axum::{extract::DefaultBodyLimit, http::header, routing::get};
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    if prometheus_client::encoding::text::encode(&mut body, &registry).is_err() {
                        body.clear();
                    }
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(limits.max_request_bytes))
}

/// Serves the metrics endpoint on `listener` through the suite's HTTP serve loop
/// ([`catalyst_policy::http::serve`]): one request per connection, its head at most
/// `limits.max_request_bytes`, the whole exchange within `limits.request_timeout`, at most
/// `limits.max_connections` at once; refusals counted in `refusals`
/// (`catalyst_dns_http_refused_total`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    limits: HttpLimits,
    refusals: HttpRefusals,
) -> std::io::Result<()> {
    catalyst_policy::http::serve(
        listener,
        router(registry, limits),
        limits,
        refusals,
        std::future::pending(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use catalyst_policy::http::Refusal;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn endpoint(limits: HttpLimits) -> (std::net::SocketAddr, Arc<DnsMetrics>) {
        let mut registry = Registry::with_prefix("catalyst_dns");
        let m = DnsMetrics::register(&mut registry);
        m.query(ResponseCode::NoError, RecordType::A);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(registry), limits, m.http.clone()));
        (addr, m)
    }

    /// Sends `request` and reads until the server closes (bounded by 10 s).
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before reading all of an oversized request.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    const LIMITS: HttpLimits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        max_request_bytes: 8192,
        max_connections: 2,
    };

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let (addr, _) = endpoint(LIMITS).await;
        let m = exchange(addr, GET_METRICS).await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("application/openmetrics-text"), "{m}");
        assert!(
            m.contains("catalyst_dns_queries_total{rcode=\"NOERROR\",qtype=\"A\"} 1"),
            "{m}"
        );
        for reason in ["timeout", "too_large", "too_many_connections"] {
            assert!(
                m.contains(&format!(
                    "catalyst_dns_http_refused_total{{reason=\"{reason}\"}} 0"
                )),
                "{m}"
            );
        }
        let h = exchange(addr, b"GET /health HTTP/1.0\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.0 200") && h.ends_with("ok\n"), "{h}");
        let n = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(n.starts_with("HTTP/1.1 404"), "{n}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused_and_counted() {
        // Issue 16 items 3/8: the hand-written server read 2 KiB, ignored the rest and answered.
        let (addr, m) = endpoint(LIMITS).await;
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let r = exchange(addr, big.as_bytes()).await;
        assert!(
            !r.contains(" 200 "),
            "answered an oversized request: {r:.80}"
        );
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r:.80}");
        assert_eq!(m.http.get(Refusal::TooLarge), 1);
        let e = exchange(addr, GET_METRICS).await;
        assert!(
            e.contains("catalyst_dns_http_refused_total{reason=\"too_large\"} 1"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_silent_or_slow_client_is_disconnected_and_counted() {
        let (addr, m) = endpoint(LIMITS).await;
        for (n, partial) in [(1, &b""[..]), (2, &b"GET /metrics HTTP/1.1\r\nHost"[..])] {
            let r = exchange(addr, partial).await;
            assert!(!r.contains(" 200 "), "answered an incomplete request: {r}");
            assert_eq!(m.http.get(Refusal::Timeout), n);
        }
        let e = exchange(addr, GET_METRICS).await;
        assert!(
            e.contains("catalyst_dns_http_refused_total{reason=\"timeout\"} 2"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_get_503_and_are_counted() {
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
        let mut e = String::new();
        for _ in 0..100 {
            e = exchange(addr, GET_METRICS).await;
            if e.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            e.contains("catalyst_dns_http_refused_total{reason=\"too_many_connections\"}"),
            "{e}"
        );
    }
}
