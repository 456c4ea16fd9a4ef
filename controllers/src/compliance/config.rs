//! The `compliance:` section of the controllers' configuration (docs/compliance.md).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::checks::{CheckSetting, Mode};

/// How an application weighs in its Environment's roll-up.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppWeighting {
    /// By its number of workloads (default).
    #[default]
    Workloads,
    /// Every application counts once.
    Equal,
}

/// Settings of the compliance aggregator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// Whether the aggregator runs. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Sovereign of Organizations without an Organization resource. Default `default`.
    #[serde(default = "default_sovereign")]
    pub default_sovereign: String,
    /// Fix-list target (0–100) of Environments without an `EnvironmentPolicy`. Default 90.
    #[serde(default = "ninety")]
    pub target: f64,
    /// Roll-up weight of an application: `workloads` (default) or `equal`.
    #[serde(default)]
    pub application_weight: AppWeighting,
    /// Per-application weight overrides, keyed `<organization>/<environment>/<application>`.
    /// Default none.
    #[serde(default)]
    pub application_weights: BTreeMap<String, f64>,
    /// Overrides of Catalyst's default check weights and modes (before `EnvironmentPolicy`).
    /// Default none.
    #[serde(default)]
    pub checks: BTreeMap<String, CheckSetting>,
    /// Weight and mode of checks not in the catalogue (e.g. Kyverno policies). Default weight 1,
    /// permissive.
    #[serde(default = "unknown_check")]
    pub unknown_check: CheckSetting,
    /// Failing workloads kept as evidence per check and application. Default 10.
    #[serde(default = "ten")]
    pub max_evidence: usize,
    /// Debounce: changes are published at most this often, milliseconds. Default 100.
    #[serde(default = "publish_interval")]
    pub publish_interval_ms: u64,
    /// Listener of the dashboard (`/`), the score API (`/api/scores`) and the SSE stream
    /// (`/api/events`). Default `127.0.0.1:9968`; `null` disables it.
    #[serde(default = "listen")]
    pub listen_address: Option<SocketAddr>,
    /// Longest a request to that listener may take from accept to the last byte of the answer,
    /// milliseconds (a slow or silent client is disconnected); the SSE stream is exempt once it
    /// has started. Default 5000.
    #[serde(default = "crate::config::http_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted, bytes; larger ones are answered
    /// `431`. At least 8192. Default 16384.
    #[serde(default = "crate::config::http_request_bytes")]
    pub max_request_bytes: usize,
    /// Connections served at once, SSE streams included; one more is answered `503` and closed.
    /// Default 64.
    #[serde(default = "crate::config::http_connections")]
    pub max_connections: usize,
    /// Concurrent SSE clients of `/api/events`; one more is answered `503`. Default 32 (so
    /// page and API requests keep connections when every stream slot is taken).
    #[serde(default = "event_streams")]
    pub max_event_streams: usize,
    /// NATS inputs and outputs; `null` (default): no NATS.
    #[serde(default)]
    pub nats: Option<NatsSettings>,
    /// Directory of `PolicyReport` / `ClusterPolicyReport` / Report / `ClusterReport` manifests
    /// (standalone mode). Relative to the config file. Default none.
    #[serde(default)]
    pub reports: Option<PathBuf>,
    /// Directory of workload manifests (Deployment, `StatefulSet`, `DaemonSet`, PDB, HPA, Service,
    /// `ServiceMonitor`, `NetworkPolicy`) for the own evaluators (standalone mode). Relative to the
    /// config file. Default none.
    #[serde(default)]
    pub workloads: Option<PathBuf>,
    /// Health-event targets → the application they serve. Default none.
    #[serde(default)]
    pub health_targets: Vec<HealthTarget>,
    /// The own evaluators' knobs.
    #[serde(default)]
    pub evaluators: EvaluatorSettings,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        serde_norway::from_str("{}").expect("defaults deserialise")
    }
}

impl ComplianceConfig {
    /// The dashboard listener's limits, checked (the error names the field).
    pub fn limits(
        &self,
    ) -> Result<catalyst_policy::http::HttpLimits, catalyst_policy::http::LimitError> {
        catalyst_policy::http::HttpLimits::from_config(
            self.request_timeout_ms,
            self.max_request_bytes,
            self.max_connections,
        )
    }
}

/// NATS settings of the aggregator.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Stream of the agent's signals. Default `CATALYST_SIGNALS` (created when missing, subjects
    /// `catalyst.signals.>`, max age 1 day, as the agent does).
    #[serde(default = "signals_stream")]
    pub signals_stream: String,
    /// Durable consumer on the signals stream. Default `catalyst-compliance`.
    #[serde(default = "consumer")]
    pub consumer: String,
    /// How far back the consumer is re-positioned at start, seconds: the rows are rebuilt from
    /// this window. Must exceed the agents' `signals.heartbeat_ms`. Default 300.
    #[serde(default = "replay")]
    pub replay_s: u64,
    /// Signal rows not refreshed for this long are dropped (vanished workloads), seconds;
    /// 0 keeps them. Default 300.
    #[serde(default = "replay")]
    pub row_ttl_s: u64,
    /// Stream capturing catalyst-dns health events (subjects `catalyst.health.>`; created when
    /// missing with one message per subject kept). Default `CATALYST_HEALTH`.
    #[serde(default = "health_stream")]
    pub health_stream: String,
    /// KV bucket of the scores. Default `policy-rollup`.
    #[serde(default = "bucket")]
    pub bucket: String,
    /// Stream of score changes (subjects `catalyst.scores.>`). Default `CATALYST_SCORES`.
    #[serde(default = "scores_stream")]
    pub scores_stream: String,
    /// Max age of the scores stream when created, seconds (0: none). Default 2592000 (30 days).
    #[serde(default = "scores_age")]
    pub scores_max_age_s: u64,
    /// Credentials file (`.creds`: user JWT and `NKey` seed). Default none.
    #[serde(default)]
    pub credentials: Option<std::path::PathBuf>,
    /// File holding a bare `NKey` user seed (`SU…`); not with `credentials`. Default none.
    #[serde(default)]
    pub nkey_seed_file: Option<std::path::PathBuf>,
    /// TLS to the server: `ca_file`, and `cert_file` + `key_file` for mutual TLS. Default none.
    #[serde(default)]
    pub tls: Option<catalyst_policy::nats::NatsTls>,
}

impl NatsSettings {
    /// How to authenticate, for the suite's one connection module.
    pub fn auth(&self) -> catalyst_policy::nats::NatsAuth {
        catalyst_policy::nats::NatsAuth {
            credentials: self.credentials.clone(),
            nkey_seed_file: self.nkey_seed_file.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// A catalyst-dns health target serving an application.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthTarget {
    /// Zone of the event (e.g. `example.com`).
    pub zone: String,
    /// Target as catalyst-dns prints it (e.g. `192.0.2.1:443`).
    pub target: String,
    /// Organization of the application.
    pub organization: String,
    /// Environment of the application.
    pub environment: String,
    /// Application.
    pub application: String,
}

/// Knobs of the own evaluators.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSettings {
    /// Registry prefixes of the Harbor proxy (`harbor-proxy` passes when every image starts
    /// with one). Default `harbor.` (any registry host starting `harbor.`).
    #[serde(default = "harbor")]
    pub harbor_prefixes: Vec<String>,
    /// Tags treated as mutable (`image-tag-pinned` fails). Default `latest`, `main`, `master`,
    /// `dev`, `stable`.
    #[serde(default = "mutable_tags")]
    pub mutable_tags: Vec<String>,
}

impl Default for EvaluatorSettings {
    fn default() -> Self {
        Self {
            harbor_prefixes: harbor(),
            mutable_tags: mutable_tags(),
        }
    }
}

fn default_sovereign() -> String {
    "default".into()
}
fn ninety() -> f64 {
    90.0
}
fn ten() -> usize {
    10
}
fn publish_interval() -> u64 {
    100
}
fn event_streams() -> usize {
    32
}
#[expect(clippy::unnecessary_wraps, reason = "serde default of an Option field")]
fn listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9968)))
}
fn unknown_check() -> CheckSetting {
    CheckSetting {
        weight: 1.0,
        mode: Mode::Permissive,
    }
}
fn signals_stream() -> String {
    "CATALYST_SIGNALS".into()
}
fn consumer() -> String {
    "catalyst-compliance".into()
}
fn replay() -> u64 {
    300
}
fn health_stream() -> String {
    "CATALYST_HEALTH".into()
}
fn bucket() -> String {
    "policy-rollup".into()
}
fn scores_stream() -> String {
    "CATALYST_SCORES".into()
}
fn scores_age() -> u64 {
    30 * 86_400
}
fn harbor() -> Vec<String> {
    vec!["harbor.".into()]
}
fn mutable_tags() -> Vec<String> {
    ["latest", "main", "master", "dev", "stable"]
        .map(String::from)
        .to_vec()
}
