//! The compliance part of the Environment and Organization status, written by the compliance
//! aggregator (docs/compliance.md) next to the tenancy controller's fields.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The re-score gate of an Environment as the aggregator last computed it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceGate {
    /// `pass`, `fail`, `disabled` or `pending`.
    pub state: String,
    /// The minimum score of the gate (percent).
    pub minimum_score: f64,
    /// The `EnvironmentPolicy` in force (absent: Catalyst's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}
