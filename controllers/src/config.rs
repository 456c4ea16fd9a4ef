//! The controllers' configuration file (YAML). Relative paths are resolved against the file's
//! directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use catalyst_policy::http::{HttpLimits, LimitError};
use serde::Deserialize;

use crate::{standalone::StandaloneConfig, tenancy::TenancyConfig};

/// Where the custom resources come from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Files in, files out (`standalone:`).
    #[default]
    Standalone,
    /// The Kubernetes API server (`kubernetes:`).
    Kubernetes,
}

/// Top-level configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `standalone` (default) or `kubernetes`.
    #[serde(default)]
    pub mode: Mode,
    /// `/metrics`, `/healthz`, `/readyz` listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The tenancy controller.
    #[serde(default)]
    pub tenancy: TenancyConfig,
    /// Standalone mode (required when `mode: standalone`).
    #[serde(default)]
    pub standalone: Option<StandaloneConfig>,
    /// Kubernetes mode.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// The compliance aggregator (docs/compliance.md). Default: off.
    #[serde(default)]
    pub compliance: crate::compliance::ComplianceConfig,
}

/// The HTTP listener for metrics and probes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port. Default `127.0.0.1:9967` (the Helm chart sets the pod address).
    #[serde(default = "metrics_address")]
    pub listen_address: SocketAddr,
    /// Longest a request may take from accept to the last byte of the answer, milliseconds
    /// (a client that sends its request slowly or not at all is disconnected). Default 5000.
    #[serde(default = "http_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted, bytes; larger ones are answered
    /// `431`. At least 8192. Default 16384.
    #[serde(default = "http_request_bytes")]
    pub max_request_bytes: usize,
    /// Connections served at once; one more is answered `503` and closed. Default 64.
    #[serde(default = "http_connections")]
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen_address: metrics_address(),
            request_timeout_ms: http_timeout_ms(),
            max_request_bytes: http_request_bytes(),
            max_connections: http_connections(),
        }
    }
}

impl MetricsConfig {
    /// The listener's limits, checked (the error names the field).
    pub fn limits(&self) -> Result<HttpLimits, LimitError> {
        HttpLimits::from_config(
            self.request_timeout_ms,
            self.max_request_bytes,
            self.max_connections,
        )
    }
}

/// Default `request_timeout_ms` of the controllers' HTTP listeners.
pub(crate) fn http_timeout_ms() -> u64 {
    catalyst_policy::http::DEFAULT_REQUEST_TIMEOUT_MS
}
/// Default `max_request_bytes` of the controllers' HTTP listeners.
pub(crate) fn http_request_bytes() -> usize {
    catalyst_policy::http::DEFAULT_MAX_REQUEST_BYTES
}
/// Default `max_connections` of the controllers' HTTP listeners.
pub(crate) fn http_connections() -> usize {
    catalyst_policy::http::DEFAULT_MAX_CONNECTIONS
}

fn metrics_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9967))
}

/// Kubernetes mode settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// kubeconfig file; default: in-cluster configuration, then `KUBECONFIG` / `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Field manager of every server-side apply. Default `catalyst-controllers`.
    #[serde(default = "field_manager")]
    pub field_manager: String,
    /// Leader election on a `coordination.k8s.io/v1` Lease.
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// Periodic re-reconcile of every object (drift of objects not watched), seconds. Default 300.
    #[serde(default = "resync")]
    pub resync_seconds: u64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            field_manager: field_manager(),
            leader_election: LeaderElectionConfig::default(),
            resync_seconds: resync(),
        }
    }
}

fn field_manager() -> String {
    "catalyst-controllers".into()
}
fn resync() -> u64 {
    300
}

/// Leader election (one active replica; the others wait).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Whether to elect a leader. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Lease name. Default `catalyst-controllers`.
    #[serde(default = "field_manager")]
    pub lease_name: String,
    /// Lease namespace. Default: the `POD_NAMESPACE` environment variable, else `catalyst-system`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Lease duration, seconds: how long a leader that stopped renewing is waited for. Default 15.
    #[serde(default = "lease_duration")]
    pub lease_duration_seconds: u32,
    /// The leader gives up (and exits) when it could not renew for this long, seconds. Default 10.
    #[serde(default = "renew_deadline")]
    pub renew_deadline_seconds: u32,
    /// How often candidates try and the leader renews, seconds. Default 2.
    #[serde(default = "retry_period")]
    pub retry_period_seconds: u32,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: field_manager(),
            namespace: None,
            lease_duration_seconds: lease_duration(),
            renew_deadline_seconds: renew_deadline(),
            retry_period_seconds: retry_period(),
        }
    }
}

fn yes() -> bool {
    true
}
fn lease_duration() -> u32 {
    15
}
fn renew_deadline() -> u32 {
    10
}
fn retry_period() -> u32 {
    2
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config `{path}`")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid configuration.
    #[error("invalid config `{path}`: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Field path, line and reason.
        message: String,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let de = serde_norway::Deserializer::from_str(&text);
        let mut cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let loc = e
                .inner()
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            invalid(format!("{}: {}{loc}", e.path(), e.inner()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(s) = &mut cfg.standalone {
            s.input = base.join(&s.input);
            s.output = base.join(&s.output);
        }
        for d in [&mut cfg.compliance.reports, &mut cfg.compliance.workloads]
            .into_iter()
            .flatten()
        {
            *d = base.join(&*d);
        }
        if let Some(k) = &mut cfg.kubernetes.kubeconfig {
            *k = base.join(&*k);
        }
        if let Some(n) = &mut cfg.compliance.nats {
            let mut auth = n.auth();
            auth.rebase(base);
            auth.validate()
                .map_err(|e| invalid(format!("compliance.{e}")))?;
            n.credentials = auth.credentials;
            n.nkey_seed_file = auth.nkey_seed_file;
            n.tls = auth.tls;
        }
        cfg.metrics
            .limits()
            .map_err(|e| invalid(format!("metrics.{e}")))?;
        cfg.compliance
            .limits()
            .map_err(|e| invalid(format!("compliance.{e}")))?;
        if cfg.compliance.max_event_streams == 0 {
            return Err(invalid(
                "compliance.max_event_streams: must be at least 1".into(),
            ));
        }
        if cfg.mode == Mode::Standalone && cfg.standalone.is_none() {
            return Err(invalid(
                "standalone: required when mode is standalone (input and output directories)"
                    .into(),
            ));
        }
        let le = &cfg.kubernetes.leader_election;
        if le.enabled
            && (le.renew_deadline_seconds >= le.lease_duration_seconds
                || le.retry_period_seconds >= le.renew_deadline_seconds)
        {
            return Err(invalid(
                "kubernetes.leader_election: need retry_period_seconds < renew_deadline_seconds < lease_duration_seconds".into(),
            ));
        }
        Ok(cfg)
    }
}
