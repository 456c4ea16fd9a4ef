//! The aggregator's metrics (`catalyst_controller_compliance_*`, docs/compliance.md).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScoreLabel {
    level: String,
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabel {
    output: String,
}

/// Metrics of the compliance aggregator.
#[derive(Debug, Clone)]
pub struct ComplianceMetrics {
    score: Family<ScoreLabel, Gauge<f64, AtomicU64>>,
    gate: Family<ScoreLabel, Gauge>,
    rows: Family<SourceLabel, Counter>,
    invalid: Family<SourceLabel, Counter>,
    held: Gauge,
    writes: Family<OutputLabel, Counter>,
    write_errors: Family<OutputLabel, Counter>,
    scoring: Histogram,
    /// Refusals of the dashboard/API/SSE listener
    /// (`catalyst_controller_compliance_http_refused_total`).
    pub http: catalyst_policy::http::HttpRefusals,
}

impl ComplianceMetrics {
    /// Registers the families in `registry` (the parent hands a `compliance` sub-registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            score: Family::default(),
            gate: Family::default(),
            rows: Family::default(),
            invalid: Family::default(),
            held: Gauge::default(),
            writes: Family::default(),
            write_errors: Family::default(),
            scoring: Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            http: catalyst_policy::http::HttpRefusals::register(registry),
        };
        registry.register(
            "score",
            "Compliance score 0-100 per level (application, environment, organization, sovereign) and KV key",
            m.score.clone(),
        );
        registry.register(
            "gate_passing",
            "Re-score gate per Environment: 1 pass, 0 fail, -1 disabled or pending",
            m.gate.clone(),
        );
        registry.register("rows", "Rows ingested, per source", m.rows.clone());
        registry.register(
            "invalid_inputs",
            "Inputs refused (bad payload or document), per source",
            m.invalid.clone(),
        );
        registry.register("rows_held", "Rows currently held", m.held.clone());
        registry.register(
            "writes",
            "Score changes written, per output (kv, stream, status)",
            m.writes.clone(),
        );
        registry.register(
            "write_errors",
            "Score writes that failed, per output",
            m.write_errors.clone(),
        );
        registry.register(
            "scoring_duration_seconds",
            "Time to re-score and diff after a change",
            m.scoring.clone(),
        );
        m
    }

    /// Sets (or removes with `None`) the score gauge of a key.
    pub fn set_score(&self, level: &str, key: &str, score: Option<f64>) {
        let l = ScoreLabel {
            level: level.to_owned(),
            key: key.to_owned(),
        };
        if let Some(s) = score {
            self.score.get_or_create(&l).set(s);
        } else {
            self.score.remove(&l);
            self.gate.remove(&l);
        }
    }

    /// Sets an Environment's gate gauge.
    pub fn set_gate(&self, key: &str, value: i64) {
        self.gate
            .get_or_create(&ScoreLabel {
                level: "environment".into(),
                key: key.to_owned(),
            })
            .set(value);
    }

    /// Counts rows of a source.
    pub fn rows(&self, source: &str, n: u64) {
        self.rows
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts a refused input.
    pub fn invalid(&self, source: &str) {
        self.invalid
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }

    /// Sets the number of rows held.
    pub fn set_held(&self, n: usize) {
        self.held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts writes (or failed writes) of an output.
    pub fn wrote(&self, output: &str, ok: bool) {
        let l = OutputLabel {
            output: output.to_owned(),
        };
        if ok {
            self.writes.get_or_create(&l).inc();
        } else {
            self.write_errors.get_or_create(&l).inc();
        }
    }

    /// Records a scoring pass.
    pub fn scored(&self, seconds: f64) {
        self.scoring.observe(seconds);
    }
}
