//! Compliance: rows (check, workload, pass/fail/n-a, evidence) from the agent's signals,
//! catalyst-dns health events, `PolicyReports` and the own evaluators → weighted scores per
//! Application, rolled up Environment → Organization → Sovereign, published to NATS KV
//! `policy-rollup`, the `CATALYST_SCORES` stream, Prometheus, an SSE stream and a dashboard.
//!
//! The core ([`score`], [`aggregate`], the input parsers) is pure; [`run`] is the shell.

mod aggregate;
mod checks;
mod config;
pub mod http;
pub mod inputs;
pub mod kube;
mod metrics;
pub mod nats;
mod row;
mod run;
pub mod score;
mod status;

pub use self::{
    aggregate::{Aggregator, Entry, EnvPolicy, Publication, Published, SCHEMA, ScoreDoc, Tenants},
    checks::{CATALYST_DEFAULTS, Catalog, CheckSetting, Mode},
    config::{AppWeighting, ComplianceConfig, EvaluatorSettings, HealthTarget, NatsSettings},
    metrics::ComplianceMetrics,
    row::{AppKey, Evidence, Outcome, Row, RowRef, RowStore, Source, Workload, token},
    run::{Files, run, run_kubernetes},
};

#[cfg(test)]
mod tests;
