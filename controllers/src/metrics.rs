//! Prometheus metrics of the controllers (`catalyst_controller_*`), served on `/metrics` with
//! `/healthz` and `/readyz`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

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

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
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
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}
