//! Payloads the Continuum controller publishes for other programs (DESIGN.md §4.5); each has a
//! JSON Schema under `docs/schemas/`, checked by `tests/tests/schemas.rs`.

use serde::{Deserialize, Serialize};

/// The `dns-failover` value of a failover group, read by catalyst-dns's `failover()`
/// (docs/schemas/dns-failover.v1.json).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FailoverValue {
    /// Region whose endpoints DNS answers with.
    pub active_region: String,
    /// The lease epoch of the writer; catalyst-dns never goes back to an older one.
    pub epoch: u64,
    /// Controller instance that wrote it.
    pub lease_holder: Option<String>,
}

/// Schema id of [`Audit`].
pub const AUDIT_SCHEMA: &str = "catalyst.audit/v1";

/// An audit event on `catalyst.audit.continuum` (docs/schemas/catalyst.audit.v1.json): one per
/// completed switchover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Audit {
    /// `catalyst.audit/v1`.
    pub schema: String,
    /// Subject suffix: `continuum`.
    pub kind: String,
    /// `namespace/name` of the Continuum.
    pub continuum: String,
    /// Controller instance that acted.
    pub who: String,
    /// Lease epoch the action ran under.
    pub epoch: u64,
    /// What was done: `switchover`.
    pub action: String,
    /// Why: `manual`, `primary-lost`, `failback`.
    pub reason: String,
    /// State before (`{"active_region": …}`).
    pub before: serde_json::Value,
    /// State after.
    pub after: serde_json::Value,
    /// Start of the switchover to the audit, milliseconds.
    pub duration_ms: u64,
    /// Old primary stopped taking writes → new primary promoted, milliseconds (0 when unknown).
    pub write_gap_ms: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
}
