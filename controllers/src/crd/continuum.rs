//! `Continuum` (dr.openova.io/v1): an active-hot-standby application across regions, switched
//! by a lease-fenced state machine that drives DNS.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// A multi-region application with one active region: the lease, the witnesses, the
/// switchover policy and the DNS failover group it drives.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dr.openova.io",
    version = "v1",
    kind = "Continuum",
    plural = "continuums",
    shortname = "ctm",
    category = "catalyst",
    namespaced,
    status = "ContinuumStatus",
    doc = "An active-hot-standby application across regions, with a lease-fenced switchover that drives DNS.",
    printcolumn(name = "Application", type_ = "string", json_path = ".spec.application"),
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeRegion"),
    printcolumn(name = "Holder", type_ = "string", json_path = ".status.leaseHolder"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.inProgress.step"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.regions.exists(r, r.name == self.spec.primary)").message("spec.primary must name one of spec.regions").field_path(".spec.primary"),
)]
#[serde(rename_all = "camelCase")]
pub struct ContinuumSpec {
    /// The application (its `openova.io/application` label value).
    #[schemars(length(min = 1, max = 63))]
    pub application: String,
    /// The regions (at least two), each with its DNS endpoints and database.
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.name == x.name))").message("spec.regions lists a region name twice"))]
    pub regions: Vec<Region>,
    /// The region that should be primary. Changing it requests a switchover.
    #[schemars(length(min = 1, max = 63))]
    pub primary: String,
    /// Lease timing.
    #[serde(default)]
    pub lease: LeaseSettings,
    /// Witnesses consulted when the lease store is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessSettings>,
    /// Switchover and failover behaviour.
    #[serde(default)]
    pub switchover: SwitchoverPolicy,
    /// The DNS failover group the switchover flips.
    pub dns: ContinuumDns,
}

/// One region of a Continuum.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    /// Region name (e.g. `eu-west`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Addresses DNS answers with while this region is active (IPv4 or IPv6).
    #[schemars(length(min = 1, max = 16))]
    pub endpoints: Vec<String>,
    /// The region's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseEndpoint>,
    /// Health sources for this region: catalyst-dns health targets (`<zone>/<target>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_sources: Vec<String>,
    /// `HTTPRoutes` (`namespace/name`) whose backend weights are drained and restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<String>,
}

/// A region's database.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'CloudNativePG' || has(self.cluster)").message("a CloudNativePG database names its Cluster (cluster)"))]
#[x_kube(validation = Rule::new("self.kind != 'PostgreSQL' || has(self.host)").message("a PostgreSQL database names its host"))]
pub struct DatabaseEndpoint {
    /// `CloudNativePG` (a Cluster resource, Kubernetes) or `PostgreSQL` (a server reached
    /// directly: standalone and lab).
    pub kind: DatabaseKind,
    /// `CloudNativePG` Cluster, `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `PostgreSQL` host (address or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `PostgreSQL` port. Default 5432.
    #[serde(default = "pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// Database driver.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DatabaseKind {
    /// `CloudNativePG` `Cluster` resources (replica mode / promotion).
    CloudNativePG,
    /// `PostgreSQL` reached directly (`pg_ctl` promote / standby.signal).
    PostgreSQL,
}

/// Lease timing (NATS KV `continuum-leases`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.ttlSeconds >= 2 * self.renewSeconds").message("lease.ttlSeconds must be at least twice lease.renewSeconds"))]
pub struct LeaseSettings {
    /// Renewal interval, seconds. Default 10.
    #[serde(default = "renew")]
    #[schemars(range(min = 1, max = 300))]
    pub renew_seconds: u32,
    /// Lease lifetime, seconds. Default 30.
    #[serde(default = "ttl")]
    #[schemars(range(min = 2, max = 900))]
    pub ttl_seconds: u32,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            renew_seconds: renew(),
            ttl_seconds: ttl(),
        }
    }
}

/// Witnesses: catalyst-dns instances serving `_continuum.<group>` TXT.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.quorum <= size(self.instances)").message("witness.quorum cannot exceed the number of witness instances"))]
pub struct WitnessSettings {
    /// DNS servers (`address:port`), one per region.
    #[schemars(length(min = 1, max = 9))]
    pub instances: Vec<String>,
    /// Witnesses that must agree. Default 2.
    #[serde(default = "quorum")]
    #[schemars(range(min = 1, max = 9))]
    pub quorum: u32,
}

/// Switchover and failover behaviour.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverPolicy {
    /// Fail over automatically when the primary is lost. Default true.
    #[serde(default = "yes")]
    pub automatic: bool,
    /// Seconds over which `HTTPRoute` weights go to 0 before the flip. Default 5.
    #[serde(default = "drain")]
    #[schemars(range(min = 0, max = 600))]
    pub drain_seconds: u32,
    /// Largest replication lag (bytes) a standby may have to be promoted. Default 0 (in sync).
    #[serde(default)]
    pub max_replication_lag_bytes: u64,
    /// Fail back to `spec.primary` when it returns. Default false.
    #[serde(default)]
    pub failback: bool,
}

impl Default for SwitchoverPolicy {
    fn default() -> Self {
        Self {
            automatic: true,
            drain_seconds: drain(),
            max_replication_lag_bytes: 0,
            failback: false,
        }
    }
}

/// DNS binding.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContinuumDns {
    /// Zone (e.g. `example.org`).
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    /// Failover group: the key in NATS KV `dns-failover` and the `_continuum.<group>` TXT.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub group: String,
    /// Record name served from the group (e.g. `app.example.org`).
    #[schemars(length(min = 1, max = 253))]
    pub record: String,
    /// TTL of the answers, seconds. Default 30.
    #[serde(default = "dns_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: u32,
}

/// Observed state of a Continuum.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuumStatus {
    /// The metadata.generation last reconciled.
    #[serde(default)]
    pub observed_generation: i64,
    /// The region serving now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_region: Option<String>,
    /// The controller instance holding the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    /// The lease epoch (KV revision), the fencing token of every side effect.
    #[serde(default)]
    pub epoch: u64,
    /// Replication lag of the standby, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_bytes: Option<u64>,
    /// The switchover in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<SwitchoverProgress>,
    /// The last switchovers, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<SwitchoverRecord>,
    /// `Ready`, `LeaseHeld`, `Replicating`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A switchover in progress.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverProgress {
    /// Current step (e.g. `Demote`, `Drain`, `FlipDns`, `Promote`).
    pub step: String,
    /// From region.
    pub from: String,
    /// To region.
    pub to: String,
    /// Why (manual, primary-lost, failback).
    pub reason: String,
    /// Start time (RFC 3339).
    pub started: String,
    /// Epoch the switchover runs under.
    pub epoch: u64,
}

/// A finished switchover.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverRecord {
    /// From region.
    pub from: String,
    /// To region.
    pub to: String,
    /// Why.
    pub reason: String,
    /// End time (RFC 3339).
    pub finished: String,
    /// Duration, milliseconds.
    pub duration_ms: u64,
    /// Time writes were refused, milliseconds.
    pub write_gap_ms: u64,
}

fn pg_port() -> u16 {
    5432
}
fn renew() -> u32 {
    10
}
fn ttl() -> u32 {
    30
}
fn quorum() -> u32 {
    2
}
fn yes() -> bool {
    true
}
fn drain() -> u32 {
    5
}
fn dns_ttl() -> u32 {
    30
}
