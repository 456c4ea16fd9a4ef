//! Prometheus metrics (`catalyst_dns_*`). Query counters are created up front for every
//! (rcode, type) pair so the hot path is one atomic add.

use std::sync::Arc;

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
        Self { checks, up }
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

/// Serve `GET /metrics` (and `/health`) on `listener` until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = listener.accept().await?;
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                    .await
            else {
                return;
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    let mut body = String::new();
                    if prometheus_client::encoding::text::encode(&mut body, &registry).is_err() {
                        body.clear();
                    }
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    )
                }
                "/health" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}
