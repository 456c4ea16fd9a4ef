//! Prometheus metrics of the controllers (`catalyst_controller_*`), served on `/metrics` with
//! `/healthz` and `/readyz`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use catalyst_policy::http::{HttpLimits, HttpRefusals};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::object::Plan;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    controller: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    controller: String,
    error: String,
}

/// The controllers' metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    duration: Family<ControllerLabel, Histogram>,
    writes: Family<ActionLabel, Counter>,
    drift: Family<ControllerLabel, Counter>,
    in_flight: Family<ControllerLabel, Gauge>,
    invalid: Family<ControllerLabel, Gauge>,
    leader: Gauge,
    ready: AtomicBool,
    compliance: crate::compliance::ComplianceMetrics,
    /// Refusals of the `/metrics` listener (`catalyst_controller_http_refused_total`).
    pub http: HttpRefusals,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under `catalyst_controller_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("catalyst_controller");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles run, per controller",
            reconciles.clone(),
        );
        let errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error kind",
            errors.clone(),
        );
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile, per controller",
            duration.clone(),
        );
        let writes = Family::<ActionLabel, Counter>::default();
        registry.register(
            "object_writes",
            "Objects created, updated (drift or new version) or pruned, per controller and action",
            writes.clone(),
        );
        let drift = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "drift_corrected",
            "Generated objects changed by someone else and put back",
            drift.clone(),
        );
        let in_flight = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, per controller (kube-runtime's scheduler does not expose its queue length)",
            in_flight.clone(),
        );
        let invalid = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "invalid_resources",
            "Custom resources refused by validation (standalone mode)",
            invalid.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance holds the leader-election lease",
            leader.clone(),
        );
        let compliance = crate::compliance::ComplianceMetrics::register(
            registry.sub_registry_with_prefix("compliance"),
        );
        let http = HttpRefusals::register(&mut registry);
        Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            drift,
            in_flight,
            invalid,
            leader,
            ready: AtomicBool::new(false),
            compliance,
            http,
        }
    }

    fn label(controller: &str) -> ControllerLabel {
        ControllerLabel {
            controller: controller.to_owned(),
        }
    }

    /// Records one reconcile and the writes of its plan.
    pub fn reconciled(&self, controller: &str, took: Duration, plan: &Plan) {
        self.reconciles
            .get_or_create(&Self::label(controller))
            .inc();
        self.duration
            .get_or_create(&Self::label(controller))
            .observe(took.as_secs_f64());
        for (action, n) in [
            ("create", plan.create.len()),
            ("update", plan.update.len()),
            ("prune", plan.prune.len()),
        ] {
            if n > 0 {
                self.writes
                    .get_or_create(&ActionLabel {
                        controller: controller.to_owned(),
                        action: action.to_owned(),
                    })
                    .inc_by(n as u64);
            }
        }
    }

    /// Records a failed reconcile.
    pub fn failed(&self, controller: &str, error: &str) {
        self.errors
            .get_or_create(&ErrorLabel {
                controller: controller.to_owned(),
                error: error.to_owned(),
            })
            .inc();
    }

    /// Counts a drift correction.
    pub fn drift_corrected(&self, controller: &str) {
        self.drift.get_or_create(&Self::label(controller)).inc();
    }

    /// Counts a reconcile as running.
    pub fn reconcile_started(&self, controller: &str) {
        self.in_flight.get_or_create(&Self::label(controller)).inc();
    }

    /// Counts a reconcile as finished.
    pub fn reconcile_finished(&self, controller: &str) {
        self.in_flight.get_or_create(&Self::label(controller)).dec();
    }

    /// Sets the number of refused resources.
    pub fn set_invalid(&self, source: &str, n: usize) {
        self.invalid
            .get_or_create(&Self::label(source))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the controllers ready (caches synced, first pass done).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The compliance aggregator's metrics.
    pub fn compliance(&self) -> &crate::compliance::ComplianceMetrics {
        &self.compliance
    }

    /// The text exposition.
    ///
    /// # Panics
    ///
    /// Never: encoding into a `String` cannot fail.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encoding into a String cannot fail");
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` changes, through
/// the suite's HTTP serve loop ([`catalyst_policy::http::serve`]) within `limits`; refusals are
/// counted in `catalyst_controller_http_refused_total`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::{Router, http::StatusCode, routing::get};
    let m = metrics.clone();
    let r = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    let refusals = metrics.http.clone();
    catalyst_policy::http::serve(listener, app, limits, refusals, async move {
        let _ = shutdown.changed().await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use catalyst_policy::http::Refusal;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        max_request_bytes: 8192,
        max_connections: 2,
    };

    const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    async fn endpoint(
        limits: HttpLimits,
    ) -> (SocketAddr, Arc<Metrics>, tokio::sync::watch::Sender<bool>) {
        let metrics = Arc::new(Metrics::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(listener, metrics.clone(), limits, stopped));
        (addr, metrics, stop)
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
    async fn metrics_listener_refuses_slow_and_oversized_requests_and_counts_them() {
        let (addr, m, _stop) = endpoint(LIMITS).await;
        let ok = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

        for (n, partial) in [(1, &b""[..]), (2, &b"GET /metrics HTTP/1.1\r\nHo"[..])] {
            let r = exchange(addr, partial).await;
            assert!(!r.contains(" 200 "), "answered an incomplete request: {r}");
            assert_eq!(m.http.get(Refusal::Timeout), n);
        }

        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(32 * 1024)
        );
        let r = exchange(addr, big.as_bytes()).await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r:.80}");
        assert_eq!(m.http.get(Refusal::TooLarge), 1);

        let e = exchange(addr, GET_METRICS).await;
        assert!(
            e.contains("catalyst_controller_http_refused_total{reason=\"timeout\"} 2"),
            "{e}"
        );
        assert!(
            e.contains("catalyst_controller_http_refused_total{reason=\"too_large\"} 1"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn metrics_listener_answers_503_over_max_connections_and_stops_on_shutdown() {
        let (addr, m, stop) = endpoint(HttpLimits {
            // The held connections must outlive the refused one.
            request_timeout: Duration::from_secs(30),
            ..LIMITS
        })
        .await;
        let mut held = [
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        ];
        let r = exchange(addr, GET_METRICS).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert_eq!(m.http.get(Refusal::TooManyConnections), 1);
        // Shutdown closes the held connections too (they read end of stream).
        stop.send(true).unwrap();
        for s in &mut held {
            let mut buf = [0_u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("closed on shutdown")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
    }
}
