//! The `catalyst-dns serve --config FILE` file (YAML). Unknown fields are errors; every field
//! has a documented default. Relative paths are relative to the config file's directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use catalyst_policy::http::{HttpLimits, LimitError};
use serde::{Deserialize, Serialize};

use crate::{health::HealthConfig, zone::ChunkJoin};

/// Failure reading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable.
    #[error("failed to read config `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not valid.
    #[error("invalid config `{path}`")]
    Parse {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    /// Semantically wrong.
    #[error("invalid config `{path}`: {reason}")]
    Invalid { path: String, reason: String },
}

/// [`Config::udp_socket`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpSocketMode {
    /// One socket per listen address, read by every worker.
    #[default]
    Shared,
    /// One `SO_REUSEPORT` socket per worker.
    PerWorker,
}

/// Top-level configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to serve DNS on (UDP and TCP), e.g. `127.0.0.1:53`, `[::]:53`. Default
    /// `["127.0.0.1:5353"]`.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// UDP worker threads per listen address (sharing its socket, see `udp_socket`). Default 0 =
    /// one per CPU.
    #[serde(default)]
    pub udp_workers: usize,
    /// Datagrams a UDP worker receives and answers per system call (`recvmmsg`/`sendmmsg`);
    /// 1 uses plain `recv_from`/`send_to`. Default 32.
    #[serde(default = "default_batch")]
    pub udp_batch: usize,
    /// Send the replies of one batch that go to the same client and have the same size as one
    /// segmented send (UDP GSO, `UDP_SEGMENT`; the client still receives one datagram per reply).
    /// Switches itself off if the kernel or route refuses it. Default true.
    #[serde(default = "default_true")]
    pub udp_gso: bool,
    /// How the UDP workers of a listen address receive: `shared` (one socket all workers read:
    /// a datagram goes to whichever worker is free) or `per_worker` (each worker its own
    /// `SO_REUSEPORT` socket: the kernel spreads clients over them by address hash, so a few busy
    /// clients can leave a worker idle while another queues). Default `shared`.
    #[serde(default)]
    pub udp_socket: UdpSocketMode,
    /// Serve TCP (through hickory-server). Default true.
    #[serde(default = "default_true")]
    pub tcp: bool,
    /// Idle timeout of TCP connections, in seconds. Default 10.
    #[serde(default = "default_tcp_timeout")]
    pub tcp_timeout_secs: u64,
    /// Zones to serve.
    pub zones: Vec<ZoneConfig>,
    /// LUA record behaviour.
    #[serde(default)]
    pub lua: LuaConfig,
    /// Health checker.
    #[serde(default)]
    pub health: HealthConfig,
    /// Geo databases.
    #[serde(default)]
    pub geo: GeoConfig,
    /// Answer cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Zone reloading.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Failover state for the `failover()` extension.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// NATS connection (health events, `dns-failover` KV). Default: none (standalone).
    #[serde(default)]
    pub nats: Option<NatsConfig>,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// One zone.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone apex, e.g. `example.org`.
    pub origin: String,
    /// Master file (RFC 1035 with `PowerDNS` `LUA` records).
    pub file: PathBuf,
    /// Refuse to load this zone when one of its LUA records fails to load; default: `lua.strict`.
    #[serde(default)]
    pub strict: Option<bool>,
}

impl ZoneConfig {
    /// Whether this zone is strict (its own setting, else the global one).
    pub fn strict(&self, lua: &LuaConfig) -> bool {
        self.strict.unwrap_or(lua.strict)
    }
}

/// LUA record settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LuaConfig {
    /// How quoted chunks are joined: `concat` (`PowerDNS` `lua-records-insert-whitespace=no`, the
    /// default) or `space` (`yes`).
    #[serde(default)]
    pub chunk_join: ChunkJoin,
    /// Use EDNS Client Subnet: `bestwho` is the subnet's network and answers echo ECS with a
    /// scope prefix. Default true.
    #[serde(default = "default_true")]
    pub ecs: bool,
    /// Refuse to load a zone when one of its LUA records fails to load (CI pipelines). Default
    /// false: that record answers SERVFAIL and every other name serves, as in `PowerDNS`.
    #[serde(default)]
    pub strict: bool,
    /// Instructions one run of an interpreter-tier record may execute before it is stopped and
    /// answers SERVFAIL (`PowerDNS` `lua-records-exec-limit`); 0 = unlimited. Default 1000.
    #[serde(default = "default_exec_limit")]
    pub exec_limit: u32,
}

impl Default for LuaConfig {
    fn default() -> Self {
        Self {
            chunk_join: ChunkJoin::default(),
            ecs: true,
            strict: false,
            exec_limit: default_exec_limit(),
        }
    }
}

fn default_exec_limit() -> u32 {
    1000
}

/// MaxMind-format databases.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// City (or Country) database: country, continent, region, location. Default none.
    #[serde(default)]
    pub city: Option<PathBuf>,
    /// ASN database. Default none.
    #[serde(default)]
    pub asn: Option<PathBuf>,
}

/// Answer cache (the UDP fast path serves from it).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache answers. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Entries per UDP worker before the cache is cleared. Default 100000.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: default_cache_entries(),
        }
    }
}

/// Reload settings (SIGHUP always reloads).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Poll zone files for changes every this many seconds; 0 disables. Default 2.
    #[serde(default = "default_watch")]
    pub watch_interval_secs: u64,
    /// A changed zone file is reloaded by the poller only once it has stayed unchanged for this
    /// many milliseconds, so a file still being written is not loaded half-written. Default 500.
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch_interval_secs: default_watch(),
            settle_ms: default_settle(),
        }
    }
}

fn default_settle() -> u64 {
    500
}

/// Failover state sources.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// YAML/JSON file of `group: region` (or `group: {active_region: …}`) for standalone mode.
    /// Default none.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// NATS KV bucket watched when NATS is configured. Default `dns-failover`.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Poll interval of the file source, in seconds. Default 1.
    #[serde(default = "default_one")]
    pub poll_interval_secs: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            file: None,
            bucket: default_bucket(),
            poll_interval_secs: 1,
        }
    }
}

/// NATS connection.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Credentials file (`.creds`: user JWT and `NKey` seed). Default none.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// File holding a bare `NKey` user seed (`SU…`); not with `credentials`. Default none.
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS to the server: `ca_file`, and `cert_file` + `key_file` for mutual TLS. Default none.
    #[serde(default)]
    pub tls: Option<catalyst_policy::nats::NatsTls>,
    /// Subject prefix of health events. Default `catalyst.health`.
    #[serde(default = "default_health_subject")]
    pub health_subject: String,
}

/// Metrics endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP endpoint; none disables. Default `127.0.0.1:9153`.
    #[serde(default = "default_metrics")]
    pub listen: Option<SocketAddr>,
    /// Longest a request may take from accept to the last byte of the answer, milliseconds
    /// (a client that sends its request slowly or not at all is disconnected). Default 5000.
    #[serde(default = "default_metrics_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted, bytes; larger ones are refused
    /// with `431`. At least 8192 (the HTTP library's smallest buffer). Default 16384.
    #[serde(default = "default_metrics_request_bytes")]
    pub max_request_bytes: usize,
    /// Connections served at once; one more is answered `503` and closed. Default 64.
    #[serde(default = "default_metrics_connections")]
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics(),
            request_timeout_ms: default_metrics_timeout_ms(),
            max_request_bytes: default_metrics_request_bytes(),
            max_connections: default_metrics_connections(),
        }
    }
}

impl MetricsConfig {
    /// The endpoint's limits, checked (the error names the field).
    pub fn limits(&self) -> Result<HttpLimits, LimitError> {
        HttpLimits::from_config(
            self.request_timeout_ms,
            self.max_request_bytes,
            self.max_connections,
        )
    }
}

fn default_metrics_timeout_ms() -> u64 {
    catalyst_policy::http::DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_metrics_request_bytes() -> usize {
    catalyst_policy::http::DEFAULT_MAX_REQUEST_BYTES
}
fn default_metrics_connections() -> usize {
    catalyst_policy::http::DEFAULT_MAX_CONNECTIONS
}

fn default_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:5353".parse().expect("literal")]
}
fn default_batch() -> usize {
    32
}
fn default_true() -> bool {
    true
}
fn default_tcp_timeout() -> u64 {
    10
}
fn default_cache_entries() -> usize {
    100_000
}
fn default_watch() -> u64 {
    2
}
fn default_bucket() -> String {
    "dns-failover".into()
}
fn default_one() -> u64 {
    1
}
impl NatsConfig {
    /// How to authenticate, for the suite's one connection module
    /// ([`catalyst_policy::nats::connect`]).
    pub fn auth(&self) -> catalyst_policy::nats::NatsAuth {
        catalyst_policy::nats::NatsAuth {
            credentials: self.credentials.clone(),
            nkey_seed_file: self.nkey_seed_file.clone(),
            tls: self.tls.clone(),
        }
    }
}

fn default_health_subject() -> String {
    "catalyst.health".into()
}
#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default of an optional field"
)]
fn default_metrics() -> Option<SocketAddr> {
    Some("127.0.0.1:9153".parse().expect("literal"))
}

impl Config {
    /// Read and validate; relative paths become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg: Config =
            serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        if cfg.zones.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                reason: "no zones".into(),
            });
        }
        if cfg.listen.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                reason: "no listen addresses".into(),
            });
        }
        if cfg.health.events_buffer == 0 {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                reason: "health.events_buffer: must be at least 1".into(),
            });
        }
        if let Err(e) = cfg.metrics.limits() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                reason: format!("metrics.{e}"),
            });
        }
        if let Some(n) = &cfg.nats
            && let Err(e) = n.auth().validate()
        {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for z in &mut self.zones {
            fix(&mut z.file);
        }
        if let Some(p) = &mut self.geo.city {
            fix(p);
        }
        if let Some(p) = &mut self.geo.asn {
            fix(p);
        }
        if let Some(p) = &mut self.failover.file {
            fix(p);
        }
        if let Some(n) = &mut self.nats {
            let mut auth = n.auth();
            auth.rebase(base);
            n.credentials = auth.credentials;
            n.nkey_seed_file = auth.nkey_seed_file;
            n.tls = auth.tls;
        }
    }
}
